"""The reconcile plan's inputs and output as typed values.

``Observed`` is what the shell saw in the cluster (the deployment's child objects, the GPU nodes);
``Plan`` is what it must do next (objects to server-side apply, objects to delete, the status to write,
Events to post, when to look again). Keeping these plain data lets the planner be tested without a cluster
and lets the shell stay a loop of "observe, plan, apply".
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class NodeInfo:
    """The facts about a node the planner uses for GPU arithmetic."""

    name: str
    labels: Mapping[str, str]
    allocatable_gpus: int
    schedulable: bool = True


@dataclass(frozen=True)
class Observed:
    """Child objects of one deployment as the operator last saw them, and the cluster's GPU nodes."""

    pods: Sequence[Mapping[str, Any]] = ()
    services: Sequence[Mapping[str, Any]] = ()
    pdbs: Sequence[Mapping[str, Any]] = ()
    config_maps: Sequence[Mapping[str, Any]] = ()
    """The worker-code ConfigMaps (metadata only): the namespace's shared ones and any of the deployment's own
    from before they were shared."""
    code_hashes_in_use: Callable[[], Collection[str]] = frozenset
    """The worker-code hashes the namespace's pods carry, computed only when asked (an older shared
    worker-code ConfigMap exists): it reads every pod of the namespace."""
    nodes: Sequence[NodeInfo] | None = None
    """``None`` when the operator does not watch nodes: the GPU arithmetic is skipped (Pending pods still
    reveal a shortage)."""


@dataclass(frozen=True)
class ObjectRef:
    """An object to delete. ``uid`` is a precondition, so a stale view never deletes a newer object of the
    same name."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event about the deployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    """What one reconcile must do. Applying it and planning again from the new state gives an empty plan."""

    apply: list[dict[str, Any]] = field(default_factory=list)
    """Objects to server-side apply (create or update), in order."""
    delete: list[ObjectRef] = field(default_factory=list)
    """Objects to delete (pods drain through their preStop hook and grace period)."""
    status: dict[str, Any] | None = None
    """Status fields to merge-patch, or ``None`` when the status is already right."""
    events: list[EventSpec] = field(default_factory=list)
    requeue_after: float | None = None
    """Seconds until the deployment should be looked at again even if nothing changes; ``None``: the
    periodic timer is enough."""
    summary: str = ""
    """One line for logs."""

    @property
    def empty(self) -> bool:
        """Nothing to apply, delete, write or announce."""
        return not (self.apply or self.delete or self.status is not None or self.events)
