"""Pods and nodes -> :class:`~tidal.scaling.CapacityView`: ready and starting replicas, cold start measured
from the pods' conditions, free GPUs on the matching nodes, each ready replica's age; and the autoscaler's
windows read back from the status (:func:`load_state`).

Its own module because everything here reads what the cluster shows (pods, nodes, the stored status) and
nothing here decides: the replica views come from the pass's one :class:`~tidal.plan.target.Resolved`, so the
pods are grouped into replicas once per pass.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace as dc_replace
from datetime import datetime
from typing import Any

from tidal.plan.replicas import ReplicaView, is_pod_ready, parse_time, pod_gpus
from tidal.plan.types import NodeInfo
from tidal.scaling import AutoscalerState, CapacityView, FleetObservation


def measured_cold_start(pods: Sequence[Mapping[str, Any]]) -> float | None:
    """Median seconds from a pod's ``creationTimestamp`` to its ``Ready`` condition turning True, over the
    ready pods; ``None`` when no pod is ready."""
    samples: list[float] = []
    for pod in pods:
        if not is_pod_ready(pod):
            continue
        created = parse_time(str(pod.get("metadata", {}).get("creationTimestamp") or ""))
        ready_at = next(
            (
                parse_time(str(c.get("lastTransitionTime") or ""))
                for c in pod.get("status", {}).get("conditions") or []
                if c.get("type") == "Ready"
            ),
            None,
        )
        if created is not None and ready_at is not None:
            samples.append(max(0.0, (ready_at - created).total_seconds()))
    return statistics.median(samples) if samples else None


def _terminated(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def free_gpus(matching_nodes: Sequence[NodeInfo] | None, pods: Sequence[Mapping[str, Any]]) -> int | None:
    """GPUs of the matching schedulable nodes not requested by any pod: ``pods`` are all the cluster's pods
    that request GPUs (Tidal's and others'; terminated ones hold nothing), counted when bound to a matching
    node or, still unbound, when their ``nodeSelector`` fits a matching node (they are about to take GPUs
    there). ``None`` when nodes are not observed."""
    if matching_nodes is None:
        return None
    eligible = [n for n in matching_nodes if n.schedulable]
    names = {n.name for n in eligible}
    total = sum(n.allocatable_gpus for n in eligible)

    def holds(p: Mapping[str, Any]) -> bool:
        spec = p.get("spec") or {}
        node = spec.get("nodeName")
        if node:
            return node in names
        selector = spec.get("nodeSelector") or {}
        return any(all(n.labels.get(k) == v for k, v in selector.items()) for n in eligible)

    used = sum(pod_gpus(p) for p in pods if not _terminated(p) and holds(p))
    return max(0, total - used)


def merge_pods(*groups: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods of several sources, each (namespace, name) once (the first source's copy wins)."""
    seen: set[tuple[str, str]] = set()
    out: list[Mapping[str, Any]] = []
    for group in groups:
        for p in group:
            meta = p.get("metadata") or {}
            key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def replica_ages(pods: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, float]:
    """Seconds since each ready pod's ``Ready`` condition turned True, by pod name."""
    out: dict[str, float] = {}
    for pod in pods:
        if not is_pod_ready(pod):
            continue
        since = next(
            (
                parse_time(str(c.get("lastTransitionTime") or ""))
                for c in pod.get("status", {}).get("conditions") or []
                if c.get("type") == "Ready"
            ),
            None,
        )
        if since is not None:
            out[str(pod.get("metadata", {}).get("name", ""))] = max(0.0, (now - since).total_seconds())
    return out


def with_replica_ages(obs: FleetObservation | None, ages: Mapping[str, float]) -> FleetObservation | None:
    """``obs`` with each replica's ``age_s`` (by pod name) filled in from ``ages``."""
    if obs is None or not obs.replicas:
        return obs
    reps = tuple(
        r if r.age_s is not None or r.replica not in ages else dc_replace(r, age_s=ages[r.replica])
        for r in obs.replicas
    )
    return dc_replace(obs, replicas=reps)


def capacity_view(
    current: int,
    views: Mapping[int, ReplicaView],
    pods: Sequence[Mapping[str, Any]],
    gpus_per_replica: int,
    free: int | None,
) -> CapacityView:
    """Ready and starting replicas of the deployment (``views``: its replicas, ``pods``: its worker pods),
    with the measured cold start."""
    alive = [v for v in views.values() if v.alive]
    ready = sum(1 for v in alive if v.ready)
    return CapacityView(
        current=current,
        ready=ready,
        starting=len(alive) - ready,
        free_gpus=free,
        gpus_per_replica=max(1, gpus_per_replica),
        cold_start_s=measured_cold_start(pods),
    )


def alive_replicas(views: Mapping[int, ReplicaView]) -> int:
    """Replicas that exist (not terminating): what GPU-hours are accounted for."""
    return sum(1 for v in views.values() if v.alive)


def load_state(status: Mapping[str, Any] | None) -> AutoscalerState:
    """The autoscaler's windows from ``status.autoscaler`` (empty state when absent or unreadable)."""
    data = (status or {}).get("autoscaler")
    try:
        return AutoscalerState.from_dict(data if isinstance(data, Mapping) else None)
    except (TypeError, ValueError):
        return AutoscalerState()


__all__ = [
    "alive_replicas",
    "capacity_view",
    "free_gpus",
    "load_state",
    "measured_cold_start",
    "merge_pods",
    "replica_ages",
    "with_replica_ages",
]
