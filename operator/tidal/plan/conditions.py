"""Status conditions: merge newly computed conditions into the old ones (a condition's
``lastTransitionTime`` moves only when its status flips) and turn every transition into an Event.

Condition types are adjectives (``Ready``, ``Progressing``, ``Degraded``); reasons are CamelCase constants.
Conditions of other types (``ScalingActive``, ``MetricsAvailable`` from the autoscaler) are kept as they are,
unless the caller passes new values for them (the autoscaler's pass does, through the planner).
:func:`replica_conditions` computes the planner's own three from the state after a plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tidal.api import LLMDeployment
from tidal.plan.replicas import ReplicaView
from tidal.plan.target import Target
from tidal.plan.types import EventSpec

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
OWNED: Final = (READY, PROGRESSING, DEGRADED)

# Reasons.
ALL_REPLICAS_READY: Final = "AllReplicasReady"
MINIMUM_REPLICAS_READY: Final = "MinimumReplicasReady"
SCALED_TO_ZERO: Final = "ScaledToZero"
WORKERS_CREATED: Final = "WorkersCreated"
WORKERS_STARTING: Final = "WorkersStarting"
ROLLING_UPDATE: Final = "RollingUpdate"
SCALING_DOWN: Final = "ScalingDown"
REPLICAS_UP_TO_DATE: Final = "ReplicasUpToDate"
INSUFFICIENT_GPU: Final = "InsufficientGPU"
UNSCHEDULABLE: Final = "Unschedulable"
CRASH_LOOP: Final = "CrashLoopBackOff"
OOM_KILLED: Final = "OOMKilled"
REPLICA_RESTARTED: Final = "ReplicaRestarted"
WORKERS_HEALTHY: Final = "WorkersHealthy"
APPLY_FAILED: Final = "ApplyFailed"
"""The API server refused one of the reconcile's writes for good (``tidal.plan.failures``)."""

_WARNING_REASONS = frozenset(
    {
        INSUFFICIENT_GPU,
        UNSCHEDULABLE,
        CRASH_LOOP,
        OOM_KILLED,
        REPLICA_RESTARTED,
        APPLY_FAILED,
        "MetricsStale",
        "ReplicaDegraded",
        "TargetUnreachable",
        "AutoscalerFailed",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        "InvalidImageName",
        "ModelConfigUnavailable",
        "UnsupportedArchitecture",
    }
)


@dataclass(frozen=True)
class Cond:
    """A freshly computed condition (without a transition time)."""

    type: str
    status: bool
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Cond], now: str, generation: int | None
) -> tuple[list[dict[str, Any]], list[EventSpec]]:
    """The status.conditions list (owned types first, others kept) and one Event per transition (status or
    reason changed)."""
    by_type = {str(c.get("type")): c for c in old}
    out: list[dict[str, Any]] = []
    events: list[EventSpec] = []
    for cond in new:
        prev = by_type.get(cond.type)
        flipped = prev is None or prev.get("status") != cond.status_text
        item: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status_text,
            "reason": cond.reason,
            "message": cond.message[:32768],
            "lastTransitionTime": now if flipped or prev is None else prev.get("lastTransitionTime", now),
        }
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
        if flipped or prev is None or prev.get("reason") != cond.reason:
            if prev is None and not _notable(cond):
                continue  # the first Progressing=False/Degraded=False of a new object is not news
            warn = cond.reason in _WARNING_REASONS and (cond.status or cond.type != DEGRADED)
            events.append(
                EventSpec(
                    "Warning" if warn else "Normal",
                    cond.reason,
                    f"{cond.type}={cond.status_text}: {cond.message}"[:1024],
                )
            )
    new_types = {c.type for c in new}
    out.extend(dict(c) for t, c in by_type.items() if t not in OWNED and t not in new_types)
    return out, _fold_creation_done(events, by_type)


def _fold_creation_done(events: list[EventSpec], old: Mapping[str, Mapping[str, Any]]) -> list[EventSpec]:
    """A new deployment's creation finishing (``Progressing`` leaving ``WorkersCreated`` for
    ``ReplicasUpToDate`` in the pass where ``Ready`` becomes ``AllReplicasReady``) is one Event, not two: the
    Ready Event carries the Progressing message. One write fewer per new deployment (issue 17's
    1,000-deployment benchmark); a rollout or scale-down finishing keeps its own ``ReplicasUpToDate``
    Event."""
    ready = next((e for e in events if e.reason == ALL_REPLICAS_READY), None)
    done = next((e for e in events if e.reason == REPLICAS_UP_TO_DATE), None)
    if ready is None or done is None or (old.get(PROGRESSING) or {}).get("reason") != WORKERS_CREATED:
        return events
    merged = EventSpec(ready.type, ready.reason, f"{ready.message}; {done.message}"[:1024])
    return [merged if e is ready else e for e in events if e is not done]


def _notable(cond: Cond) -> bool:
    """Whether a new object's first value of ``cond`` is news (transitions always are). A new deployment's
    ``Ready=False``/``WorkersStarting`` and ``Progressing=True``/``WorkersCreated`` are not: its
    ``ReplicaCreated`` Events say so (three fewer Events per new deployment)."""
    if cond.type in (DEGRADED, "PerformanceDegraded"):
        return cond.status
    if cond.type in ("MetricsAvailable", "ScalingActive", "ModelResolved"):
        return not cond.status  # the autoscaler's first pass is news only when it cannot work
    if cond.type in (READY, PROGRESSING):
        return cond.reason in _WARNING_REASONS
    return True


def replica_conditions(
    deployment: LLMDeployment,
    target: Target,
    ready: int,
    replicas: int,
    updated: int,
    old: int,
    terminating: int,
    shortage: str | None,
    gpu_pending: list[ReplicaView],
    unschedulable: list[ReplicaView],
    problems: list[Any],
    restarted: list[ReplicaView],
) -> list[Cond]:
    """``Ready``, ``Progressing`` and ``Degraded`` of the state after a plan: counts of replicas, the GPU
    shortage (capacity or Pending pods), the crash loops and failed pods, the replicas restarting."""
    n = target.replicas
    insufficient = shortage or (
        f"{len(gpu_pending)} replica(s) Pending: the scheduler finds Insufficient nvidia.com/gpu"
        if gpu_pending
        else None
    )
    floor = max(1, min(n, deployment.spec.min_replicas))
    # Ready.
    if n == 0:
        ready_c = Cond(READY, False, SCALED_TO_ZERO, "spec.replicas is 0")
    elif ready >= n:
        ready_c = Cond(READY, True, ALL_REPLICAS_READY, f"{ready}/{n} replicas ready")
    elif ready >= floor:
        ready_c = Cond(READY, True, MINIMUM_REPLICAS_READY, f"{ready}/{n} replicas ready (minimum {floor})")
    elif insufficient:
        ready_c = Cond(READY, False, INSUFFICIENT_GPU, f"{ready}/{n} replicas ready; {insufficient}")
    elif problems:
        worst = worst_problem(problems)
        ready_c = Cond(READY, False, worst.reason, f"{ready}/{n} replicas ready; {worst.message}")
    elif unschedulable:
        ready_c = Cond(
            READY, False, UNSCHEDULABLE, f"{ready}/{n} replicas ready; {unschedulable[0].unschedulable}"
        )
    else:
        ready_c = Cond(READY, False, WORKERS_STARTING, f"{ready}/{n} replicas ready; workers starting")
    # Progressing.
    if insufficient and ready < n + old:
        prog = Cond(PROGRESSING, False, INSUFFICIENT_GPU, insufficient)
    elif old:
        prog = Cond(
            PROGRESSING,
            True,
            ROLLING_UPDATE,
            f"{updated}/{n} replicas at spec hash {target.spec_hash}, {old} old replica(s) left, "
            f"{ready} ready",
        )
    elif replicas < n or ready < n:
        prog = Cond(PROGRESSING, True, WORKERS_CREATED, f"{replicas}/{n} replicas created, {ready} ready")
    elif terminating:
        prog = Cond(PROGRESSING, True, SCALING_DOWN, f"{terminating} replica(s) draining")
    else:
        prog = Cond(
            PROGRESSING, False, REPLICAS_UP_TO_DATE, f"{n} replica(s) at spec hash {target.spec_hash}"
        )
    # Degraded.
    if problems:
        worst = worst_problem(problems)
        msgs = "; ".join(p.message for p in problems[:5])
        deg = Cond(DEGRADED, True, worst.reason, msgs)
    elif restarted:
        deg = Cond(
            DEGRADED,
            True,
            REPLICA_RESTARTED,
            f"replica(s) {[v.index for v in restarted]} restarting as a unit",
        )
    else:
        deg = Cond(DEGRADED, False, WORKERS_HEALTHY, "no crash loops, OOM kills or failed pods")
    return [ready_c, prog, deg]


def worst_problem(problems: list[Any]) -> Any:
    """The problem the conditions name first: an OOM kill, then a crash loop, then the rest."""
    order = {OOM_KILLED: 0, CRASH_LOOP: 1}
    return sorted(problems, key=lambda p: order.get(p.reason, 2))[0]
