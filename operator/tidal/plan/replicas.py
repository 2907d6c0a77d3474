"""Group observed worker pods into replicas and judge each one: complete, ready, terminating, broken
(a Ray group missing a member or with a failed pod restarts as a unit), Pending for want of GPUs, or
crash-looping / OOM-killed (with the container's termination reason); and the GPUs a pod requests (the one
parser of ``nvidia.com/gpu`` requests: the index slimming, free GPUs and GPU-hours all read it).

Pure functions of pod dicts (the Kubernetes JSON shape), with time passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tidal.builders.gpus import GPU_RESOURCE
from tidal.builders.names import GROUP_SIZE_LABEL, MEMBER_LABEL, REPLICA_LABEL, SPEC_HASH_LABEL

GROUP_FORMATION_SECONDS = 120.0
"""A Ray group younger than this that misses a member is still being created (or the watch has not shown
the member yet): the member is re-applied. Older, the group is broken and restarts as a unit."""

_BAD_WAITING = ("ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName")


@dataclass(frozen=True)
class Problem:
    """Why a replica is unhealthy: a CamelCase reason and a message naming pod and container."""

    reason: str
    message: str


@dataclass
class ReplicaView:
    """One replica (index) as observed."""

    index: int
    pods: list[Mapping[str, Any]] = field(default_factory=list)
    """Pods of this replica that are not terminating."""
    terminating: list[Mapping[str, Any]] = field(default_factory=list)
    group_size: int = 1
    spec_hash: str = ""
    complete: bool = False
    ready: bool = False
    failed: bool = False
    mixed: bool = False
    """Members disagree on spec hash or group size."""
    created: str = ""
    """Earliest creationTimestamp of its pods (RFC 3339 sorts as text)."""
    age_seconds: float = 0.0
    gpu_pending: str | None = None
    """Scheduler message when a pod is Pending for lack of GPUs."""
    unschedulable: str | None = None
    """Scheduler message when a pod is Pending for another reason."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        """Has pods and none is terminating."""
        return bool(self.pods) and not self.terminating

    @property
    def members(self) -> set[int]:
        """Member indices present."""
        return {_int(p, MEMBER_LABEL, 0) for p in self.pods}

    def broken(self) -> str | None:
        """Why this replica must be restarted as a whole, or ``None``."""
        if self.failed:
            return "a pod failed"
        if self.mixed:
            return "members disagree on spec hash or group size"
        if self.terminating and self.pods:
            return "a member is terminating"
        if not self.complete and self.age_seconds > GROUP_FORMATION_SECONDS:
            missing = sorted(set(range(self.group_size)) - self.members)
            return f"member(s) {missing} missing"
        return None


def _labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = pod.get("metadata", {}).get("labels") or {}
    return labels


def _int(pod: Mapping[str, Any], label: str, default: int) -> int:
    try:
        return int(_labels(pod).get(label, default))
    except ValueError:
        return default


def replica_index(pod: Mapping[str, Any]) -> int | None:
    """The pod's replica index, ``None`` when the label is missing or malformed."""
    raw = _labels(pod).get(REPLICA_LABEL)
    if raw is None or not raw.isdigit():
        return None
    return int(raw)


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp, or ``None``."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def pod_problems(pod: Mapping[str, Any]) -> list[Problem]:
    """Crash loops, OOM kills and image problems of the pod's containers, with the termination reason."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status", {})
    out: list[Problem] = []
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        container = cs.get("name", "?")
        restarts = cs.get("restartCount", 0)
        last_desc = (
            f"last terminated: {last.get('reason', 'Unknown')}, exit code {last.get('exitCode', '?')}"
            if last
            else "no previous termination recorded"
        )
        if waiting.get("reason") == "CrashLoopBackOff":
            reason = "OOMKilled" if last.get("reason") == "OOMKilled" else "CrashLoopBackOff"
            out.append(
                Problem(
                    reason,
                    f"pod {name} container {container}: CrashLoopBackOff ({last_desc}; {restarts} restarts)",
                )
            )
        elif waiting.get("reason") in _BAD_WAITING:
            out.append(
                Problem(
                    str(waiting["reason"]),
                    f"pod {name} container {container}: {waiting['reason']} "
                    f"{waiting.get('message', '')}".strip(),
                )
            )
        elif terminated.get("reason") == "OOMKilled" or (
            last.get("reason") == "OOMKilled" and not cs.get("ready")
        ):
            out.append(
                Problem("OOMKilled", f"pod {name} container {container}: OOMKilled ({restarts} restarts)")
            )
    return out


def _unschedulable(pod: Mapping[str, Any]) -> str | None:
    status = pod.get("status", {})
    if status.get("phase") not in (None, "Pending"):
        return None
    for c in status.get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ):
            return str(c.get("message", "Unschedulable"))
    return None


def container_gpus(container: Mapping[str, Any]) -> int:
    """GPUs one container requests (its limit when no request is given; 0 when unreadable)."""
    res = container.get("resources") or {}
    raw = (res.get("requests") or {}).get(GPU_RESOURCE, (res.get("limits") or {}).get(GPU_RESOURCE, 0))
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs the pod requests (sum over its containers)."""
    return sum(container_gpus(c) for c in (pod.get("spec") or {}).get("containers") or [])


def group_replicas(
    pods: Sequence[Mapping[str, Any]], now: datetime
) -> tuple[dict[int, ReplicaView], list[Mapping[str, Any]]]:
    """Replicas by index, and the pods that belong to no replica (malformed labels: to delete)."""
    views: dict[int, ReplicaView] = {}
    strays: list[Mapping[str, Any]] = []
    for pod in pods:
        idx = replica_index(pod)
        if idx is None:
            strays.append(pod)
            continue
        view = views.setdefault(idx, ReplicaView(index=idx))
        if pod.get("metadata", {}).get("deletionTimestamp"):
            view.terminating.append(pod)
        else:
            view.pods.append(pod)
    for view in views.values():
        _judge(view, now)
    return views, strays


def _judge(view: ReplicaView, now: datetime) -> None:
    pods = view.pods or view.terminating
    sizes = {_int(p, GROUP_SIZE_LABEL, 1) for p in pods}
    hashes = {_labels(p).get(SPEC_HASH_LABEL, "") for p in pods}
    view.mixed = len(sizes) > 1 or len(hashes) > 1
    view.group_size = max(sizes) if sizes else 1
    view.spec_hash = sorted(hashes)[0] if hashes else ""
    view.complete = view.members >= set(range(view.group_size))
    view.failed = any(p.get("status", {}).get("phase") in ("Failed", "Succeeded") for p in view.pods)
    view.ready = view.alive and view.complete and not view.mixed and all(is_pod_ready(p) for p in view.pods)
    stamps = sorted(str(p.get("metadata", {}).get("creationTimestamp") or "") for p in pods)
    view.created = stamps[0] if stamps else ""
    started = parse_time(view.created) if view.created else None
    view.age_seconds = (now - started).total_seconds() if started else 0.0
    for pod in view.pods:
        message = _unschedulable(pod)
        if message is not None:
            if GPU_RESOURCE in message:
                view.gpu_pending = view.gpu_pending or message
            else:
                view.unschedulable = view.unschedulable or message
        view.problems.extend(pod_problems(pod))
