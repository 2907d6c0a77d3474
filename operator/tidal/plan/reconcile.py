"""``plan_reconcile``: from an ``LLMDeployment`` and what exists, the next step towards what should exist.

Level-based and idempotent: the plan depends only on its inputs (time is passed in), object names are
deterministic, and the status it writes describes the state *after* the plan, so applying the plan and
planning again from the result gives an empty plan.

Replicas. A replica is one pod (TP x PP fits a node) or one Ray group (a head and workers on distinct nodes),
identified by a small index; new replicas take the smallest free index. The spec hash of the effective pod
template labels every pod; replicas with another hash are *old*.

* Rollout (old replicas exist): surge one replica at a time (alive replicas never exceed desired + 1) and
  delete an old replica only when the ready count stays at or above the desired count afterwards, so ready
  replicas never drop below ``spec.replicas`` (and so never below ``minReplicas``). Old replicas that are not
  ready go at once: they serve nothing.
* Scale up: create the missing replicas. Scale down: delete the least useful ones (not ready first, then the
  newest); the pods drain through their preStop hook and grace period.
* A Ray group that misses a member (after it had time to form) or has a failed pod is deleted whole and
  created again on the next pass: a broken member restarts its group, nothing else.
* Pods Pending with "Insufficient nvidia.com/gpu", or GPU arithmetic over the matching nodes, give
  ``InsufficientGPU`` and a requeue that backs off the longer it lasts (no hot loop).
* Crash loops, OOM kills and image problems give ``Degraded`` with the container's termination reason.
* GPU-hours (``status.gpuHours``) without autoscaling (the autoscaler's passes account their own): the GPUs
  the worker pods hold x the time since the last accounting, folded into status writes that happen anyway,
  plus one write at most every :data:`GPU_HOURS_WRITE_SECONDS` while pods hold GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace as dc_replace
from datetime import datetime
from typing import Any

from tidal.api import LLMDeployment, ScaleEvent, Signal
from tidal.builders.names import SPEC_HASH_LABEL, selector_string, serving_selector
from tidal.builders.pods import BuilderConfig, build_replica_pods
from tidal.plan import conditions as C
from tidal.plan.autoscale.status import AutoscalerPatch
from tidal.plan.conditions import Cond, merge_conditions, replica_conditions
from tidal.plan.dependents import plan_dependents
from tidal.plan.documents import rfc3339, scale_record, without_nulls
from tidal.plan.gpuhours import account_gpu_hours, worker_gpus
from tidal.plan.model import model_condition
from tidal.plan.replicas import ReplicaView, parse_time
from tidal.plan.restarts import ENGINE_RESTARTED, container_restarts, restart_message
from tidal.plan.target import DEFAULT_CONFIG, Resolved, Target, gpu_shortage, resolve
from tidal.plan.types import EventSpec, ObjectRef, Observed, Plan

SURGE = 1
"""Extra replicas a rollout may run above the desired count."""
PROGRESS_REQUEUE_SECONDS = 15.0
DEGRADED_REQUEUE_SECONDS = 60.0
GPU_BACKOFF_MIN_SECONDS = 10.0
GPU_BACKOFF_MAX_SECONDS = 300.0


def _pod_ref(pod: Mapping[str, Any], reason: str) -> ObjectRef:
    meta = pod.get("metadata", {})
    return ObjectRef(
        "v1", "Pod", str(meta.get("namespace", "")), str(meta.get("name", "")), meta.get("uid"), reason
    )


def _usefulness(view: ReplicaView) -> tuple[bool, str, int]:
    """Sort key: least useful first (not ready, then newest, then highest index)."""
    newest_first = "".join(chr(0x10FFFF - ord(ch)) for ch in view.created)
    return (view.ready, newest_first, -view.index)


def plan_reconcile(
    deployment: LLMDeployment,
    observed: Observed,
    now: datetime,
    *,
    replicas: int | None = None,
    signal: Signal | None = None,
    config: BuilderConfig = DEFAULT_CONFIG,
    autoscaler: AutoscalerPatch | None = None,
    extra_conditions: Sequence[Cond] = (),
    resolved: Resolved | None = None,
) -> Plan:
    """The next step for ``deployment``. ``replicas`` is the count to converge to (default
    ``spec.replicas``; the autoscaler passes its own), ``signal`` the autoscaler's key signal.
    ``autoscaler`` (one autoscaler pass) is carried into the same status write: its fields, conditions and
    Events, and its count when ``replicas`` is not given. ``extra_conditions`` are merged like the
    planner's own (e.g. ``ScalingActive=False`` once autoscaling is disabled). ``resolved``: the pass's
    target and replica views of ``observed.pods`` when the caller resolved them already (the autoscaler's
    pass reads the same); its count is replaced by the one to converge to.

    Longer than 80 lines on purpose: its numbered steps are one pass over the replicas in the order the plan
    is carried out, sharing the running counts (reserved indices, ready and terminating replicas, and the
    replicas after the plan that the status describes). The steps that stand alone are elsewhere: the
    objects around the replicas (:func:`~tidal.plan.dependents.plan_dependents`) and when to look again
    (:func:`_requeue_after`)."""
    if replicas is None and autoscaler is not None:
        replicas = autoscaler.desired
    desired = deployment.spec.replicas if replicas is None else replicas
    if resolved is None:
        resolved = resolve(deployment, observed.pods, now, config, desired)
    target = dc_replace(resolved.target, replicas=desired)
    name = deployment.metadata.name or ""
    ns = deployment.metadata.namespace or "default"
    plan = Plan()
    events: list[EventSpec] = []

    views, strays = resolved.views, resolved.strays
    plan.delete.extend(_pod_ref(p, "stray pod without a replica index") for p in strays)
    reserved = set(views)  # indices in use, terminating ones included (their pod names are taken)

    # 1. Broken replicas restart as a unit.
    restarted: list[ReplicaView] = []
    kept: list[ReplicaView] = []
    for view in sorted(views.values(), key=lambda v: v.index):
        why = view.broken()
        if why is not None and view.pods:
            plan.delete.extend(_pod_ref(p, f"restart replica {view.index}: {why}") for p in view.pods)
            restarted.append(view)
            events.append(
                EventSpec("Warning", C.REPLICA_RESTARTED, f"replica {view.index} restarts as a unit: {why}")
            )
        elif view.alive:
            kept.append(view)
    terminating = sum(1 for v in views.values() if v.terminating) + len(restarted)

    cur = [v for v in kept if v.spec_hash == target.spec_hash]
    old = [v for v in kept if v.spec_hash != target.spec_hash]

    # 2. Incomplete replicas of the target hash still forming: re-apply their missing members.
    for view in cur:
        if not view.complete:
            for pod in build_replica_pods(target.inputs, view.index, target.spec_hash):
                member = int(pod["metadata"]["labels"]["tidal.dev/member"])
                if member not in view.members:
                    plan.apply.append(pod)

    # 3. Scale down the excess of current replicas, least useful first.
    deleted: list[ReplicaView] = []
    if len(cur) > desired:
        for view in sorted(cur, key=_usefulness)[: len(cur) - desired]:
            deleted.append(view)
            events.append(
                EventSpec(
                    "Normal", "ReplicaDeleted", f"replica {view.index} deleted: scale down to {desired}"
                )
            )
        cur = [v for v in cur if v not in deleted]

    # 4. Roll old replicas away without dropping ready replicas below the desired count.
    ready_total = sum(1 for v in cur + old if v.ready)
    remaining_old: list[ReplicaView] = []
    for view in sorted(old, key=_usefulness):
        if not view.ready:
            deleted.append(view)
            events.append(
                EventSpec("Normal", "ReplicaDeleted", f"replica {view.index} (old spec) deleted: not ready")
            )
        elif ready_total - 1 >= desired:
            deleted.append(view)
            ready_total -= 1
            events.append(
                EventSpec(
                    "Normal",
                    "ReplicaDeleted",
                    f"replica {view.index} (old spec) deleted: {ready_total} ready remain",
                )
            )
        else:
            remaining_old.append(view)
    for view in deleted:
        plan.delete.extend(_pod_ref(p, f"replica {view.index} deleted") for p in view.pods)
    terminating += len(deleted)

    # 5. Create replicas: all missing ones, or one surge replica at a time during a rollout.
    missing = max(0, desired - len(cur))
    if remaining_old:
        missing = min(missing, max(0, desired + SURGE - len(cur) - len(remaining_old)))
    created: list[int] = []
    index = 0
    while len(created) < missing:
        if index not in reserved:
            created.append(index)
            reserved.add(index)
        index += 1
    for idx in created:
        plan.apply.extend(build_replica_pods(target.inputs, idx, target.spec_hash))
        shape = target.inputs.shape
        events.append(
            EventSpec(
                "Normal",
                "ReplicaCreated",
                f"replica {idx} created: {shape.group_size} pod(s) x {shape.gpus_per_pod} GPU(s), spec hash "
                f"{target.spec_hash}" + (" (rolling update)" if remaining_old else ""),
            )
        )

    # 6. Services, the disruption budget and the worker's code.
    plan_dependents(plan, deployment, observed, target, views, created, desired)
    alive_after = cur + remaining_old

    # 7. Status of the state after this plan.
    replicas_after = len(alive_after) + len(created)
    ready_after = sum(1 for v in alive_after if v.ready)
    updated_after = len(cur) + len(created)
    nodes = list(observed.nodes) if observed.nodes is not None else None
    shortage = gpu_shortage(target, nodes)
    gpu_pending = [v for v in alive_after if v.gpu_pending]
    problems = [p for v in alive_after for p in v.problems]
    conds = replica_conditions(
        deployment,
        target,
        ready_after,
        replicas_after,
        updated_after,
        len(remaining_old),
        terminating,
        shortage,
        gpu_pending,
        [v for v in alive_after if v.unschedulable],
        problems,
        restarted,
    )
    old_status = _status_dict(deployment)
    stamp = rfc3339(now)
    extra = [
        model_condition(deployment),
        *extra_conditions,
        *(autoscaler.conditions if autoscaler is not None else ()),
    ]
    merged, transitions = merge_conditions(
        old_status.get("conditions") or [], [*conds, *extra], stamp, deployment.metadata.generation
    )
    events.extend(transitions)
    owned = _owned_status(deployment, target, replicas_after, ready_after, merged, signal, old_status, stamp)
    restarts = container_restarts([p for v in alive_after for p in v.pods])
    owned["restarts"] = sum(r.count for r in restarts)
    restarted_message = restart_message(restarts, int(old_status.get("restarts") or 0))
    if restarted_message is not None and "restarts" in old_status:
        events.append(EventSpec("Warning", ENGINE_RESTARTED, restarted_message[:1024]))
    own_scale = autoscaler is None or "lastScale" not in autoscaler.fields
    if autoscaler is not None:
        # The autoscaler's pass records its own scaling decision (with the numbers), not "spec changed".
        owned.update(autoscaler.fields)
        events.extend(autoscaler.events)
    scale = owned.get("lastScale")
    if (
        own_scale
        and scale is not None
        and scale != old_status.get("lastScale")
        and old_status.get("lastScale")
    ):
        # (The first count of a new deployment is in status.lastScale; its ReplicaCreated Events announce it.)
        events.append(EventSpec("Normal", scale["reason"], scale["message"]))
    writing = any(without_nulls(old_status.get(k)) != without_nulls(v) for k, v in owned.items())
    if autoscaler is None and not deployment.spec.autoscaling.enabled:
        gpu_fields = account_gpu_hours(old_status, worker_gpus(observed.pods), now.timestamp(), writing)
        if gpu_fields is not None:
            owned.update(gpu_fields)
            writing = True
    if writing:
        plan.status = owned
    plan.events = events

    # 8. When to look again.
    plan.requeue_after = _requeue_after(conds, merged, stamp, now)
    plan.summary = (
        f"{ns}/{name}: desired {desired}, ready {ready_after}/{replicas_after}, hash {target.spec_hash}, "
        f"+{len(created)} -{len(deleted) + len(restarted)} replicas"
    )
    return plan


def _requeue_after(
    conds: Sequence[Cond], merged: Sequence[Mapping[str, Any]], stamp: str, now: datetime
) -> float | None:
    """When to look again: backing off while GPUs are short (the longer it lasts, up to
    :data:`GPU_BACKOFF_MAX_SECONDS`), soon while progressing or degraded, else only on a change."""
    progressing = next(c for c in conds if c.type == C.PROGRESSING)
    degraded = next(c for c in conds if c.type == C.DEGRADED)
    if progressing.reason == C.INSUFFICIENT_GPU:
        since = next((c.get("lastTransitionTime") for c in merged if c["type"] == C.PROGRESSING), stamp)
        started = parse_time(str(since)) or now
        held = (now - started).total_seconds()
        return min(GPU_BACKOFF_MAX_SECONDS, max(GPU_BACKOFF_MIN_SECONDS, held))
    elif progressing.status:
        return PROGRESS_REQUEUE_SECONDS
    elif degraded.status:
        return DEGRADED_REQUEUE_SECONDS
    return None


def _status_dict(deployment: LLMDeployment) -> dict[str, Any]:
    return deployment.status.to_dict()


def _owned_status(
    deployment: LLMDeployment,
    target: Target,
    replicas: int,
    ready: int,
    conditions: list[dict[str, Any]],
    signal: Signal | None,
    old: Mapping[str, Any],
    stamp: str,
) -> dict[str, Any]:
    name = deployment.metadata.name or ""
    n = target.replicas
    out: dict[str, Any] = {
        "observedGeneration": deployment.metadata.generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "desiredReplicas": n,
        "selector": selector_string(serving_selector(name)),
        "gpusPerReplica": target.inputs.engine.world_size,
        "servedModelName": deployment.spec.model.effective_served_model_name,
        "specHash": target.spec_hash,
        "conditions": conditions,
    }
    if target.recommendation is not None:
        out["recommendation"] = target.recommendation.status.to_dict()
    old_signal = old.get("signal")
    if signal is not None:
        out["signal"] = signal.to_dict()
    elif old_signal is None or old_signal.get("name") == "readyReplicas":
        out["signal"] = Signal(
            name="readyReplicas", value=float(ready), target=float(n), summary=f"ready {ready}/{n}"
        ).to_dict()
    prev = old.get("desiredReplicas")
    if prev != n:
        before = int(prev) if prev is not None else 0
        if before != n:
            reason = "ScaledUp" if n > before else "ScaledDown"
            cause = " (initial)" if prev is None else " (spec.replicas changed)"
            event = ScaleEvent.model_validate(
                {
                    "time": stamp,
                    "from": before,
                    "to": n,
                    "reason": reason,
                    "message": f"replicas {before} -> {n}{cause}",
                }
            )
            out.update(scale_record(old, event))
    return out


__all__ = ["SPEC_HASH_LABEL", "Target", "plan_reconcile"]
