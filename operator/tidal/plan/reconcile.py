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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tidal.api import MAX_HISTORY, LLMDeployment, Signal
from tidal.builders.engine import RecommendationResult, recommend_for_spec, resolve_engine, tuned_overrides
from tidal.builders.gpus import GPU_PRODUCT_LABEL, GPU_RESOURCE, product_labels
from tidal.builders.names import SPEC_HASH_LABEL, selector_string, serving_selector
from tidal.builders.pods import BuilderConfig, ReplicaInputs, build_replica_pods, compute_spec_hash
from tidal.builders.services import build_api_service, build_group_service, build_pdb, pdb_min_available
from tidal.plan import conditions as C
from tidal.plan.autoscale import GPU_HOURS_AT, AutoscalerPatch, accumulate_gpu_hours, without_nulls
from tidal.plan.conditions import Cond, merge_conditions
from tidal.plan.model import model_condition
from tidal.plan.replicas import ReplicaView, group_replicas, parse_time
from tidal.plan.types import EventSpec, NodeInfo, ObjectRef, Observed, Plan

DEFAULT_CONFIG = BuilderConfig()
"""Pod defaults when the operator configures none."""
SURGE = 1
"""Extra replicas a rollout may run above the desired count."""
PROGRESS_REQUEUE_SECONDS = 15.0
DEGRADED_REQUEUE_SECONDS = 60.0
GPU_BACKOFF_MIN_SECONDS = 10.0
GPU_BACKOFF_MAX_SECONDS = 300.0
GPU_HOURS_WRITE_SECONDS = 300.0
"""At most this long between GPU-hour accountings while worker pods hold GPUs and nothing else is written."""


def rfc3339(now: datetime) -> str:
    """``2025-01-01T00:00:00Z``."""
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Target:
    """What the replicas should look like."""

    inputs: ReplicaInputs
    spec_hash: str
    replicas: int
    recommendation: RecommendationResult | None

    @property
    def group_size(self) -> int:
        return self.inputs.shape.group_size


def make_target(deployment: LLMDeployment, replicas: int, config: BuilderConfig = DEFAULT_CONFIG) -> Target:
    """Resolve the effective engine (recommendation and tuned overrides in Apply mode), the pod template
    hash and the count."""
    rec = recommend_for_spec(deployment.spec, deployment.metadata.generation)
    engine = resolve_engine(deployment.spec, rec, tuned_overrides(deployment.status))
    inputs = ReplicaInputs(deployment, engine, config)
    return Target(inputs, compute_spec_hash(inputs), replicas, rec)


def _pod_ref(pod: Mapping[str, Any], reason: str) -> ObjectRef:
    meta = pod.get("metadata", {})
    return ObjectRef(
        "v1", "Pod", str(meta.get("namespace", "")), str(meta.get("name", "")), meta.get("uid"), reason
    )


def _usefulness(view: ReplicaView) -> tuple[bool, str, int]:
    """Sort key: least useful first (not ready, then newest, then highest index)."""
    newest_first = "".join(chr(0x10FFFF - ord(ch)) for ch in view.created)
    return (view.ready, newest_first, -view.index)


def _contains(observed: Any, desired: Any) -> bool:
    """``desired`` is a sub-document of ``observed`` (server defaults on top are fine)."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            _contains(observed.get(k), v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(_contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    return bool(observed == desired)


def _needs_apply(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    if observed is None:
        return True
    d_meta, o_meta = desired["metadata"], observed.get("metadata", {})
    if not _contains(o_meta.get("labels") or {}, d_meta.get("labels") or {}):
        return True
    uids = {r.get("uid") for r in o_meta.get("ownerReferences") or []}
    if not {r["uid"] for r in d_meta.get("ownerReferences", [])} <= uids:
        return True
    return not _contains(observed.get("spec") or {}, desired.get("spec") or {})


def node_matches(node: NodeInfo, deployment: LLMDeployment) -> bool:
    """The node can run the deployment's workers (schedulable, GPU product and node selector match)."""
    return matching_nodes([node], deployment) != []


def matching_nodes(nodes: Sequence[NodeInfo], deployment: LLMDeployment) -> list[NodeInfo]:
    """The nodes that can run the deployment's workers (see :func:`node_matches`)."""
    res = deployment.spec.resources
    products = product_labels(res.gpu_type)
    selector = list(res.node_selector.items())
    return [
        n
        for n in nodes
        if n.schedulable
        and n.labels.get(GPU_PRODUCT_LABEL) in products
        and all(n.labels.get(k) == v for k, v in selector)
    ]


def gpu_shortage(target: Target, nodes: list[NodeInfo] | None) -> str | None:
    """Why the matching nodes cannot hold the desired replicas at all (capacity, not current use)."""
    if nodes is None or target.replicas == 0:
        return None
    deployment = target.inputs.deployment
    shape = target.inputs.shape
    matching = matching_nodes(nodes, deployment)
    slots = sum(n.allocatable_gpus // shape.gpus_per_pod for n in matching)
    needed = target.replicas * shape.group_size
    if slots >= needed and (
        shape.group_size == 1
        or sum(1 for n in matching if n.allocatable_gpus >= shape.gpus_per_pod) >= shape.group_size
    ):
        return None
    return (
        f"{target.replicas} replica(s) need {needed} pod(s) of {shape.gpus_per_pod} nvidia.com/gpu on "
        f"{deployment.spec.resources.gpu_type} nodes; {len(matching)} matching node(s) hold {slots}"
    )


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
) -> Plan:
    """The next step for ``deployment``. ``replicas`` is the count to converge to (default
    ``spec.replicas``; the autoscaler passes its own), ``signal`` the autoscaler's key signal.
    ``autoscaler`` (one autoscaler pass) is carried into the same status write: its fields, conditions and
    Events, and its count when ``replicas`` is not given. ``extra_conditions`` are merged like the
    planner's own (e.g. ``ScalingActive=False`` once autoscaling is disabled)."""
    if replicas is None and autoscaler is not None:
        replicas = autoscaler.desired
    desired = deployment.spec.replicas if replicas is None else replicas
    target = make_target(deployment, desired, config)
    name = deployment.metadata.name or ""
    ns = deployment.metadata.namespace or "default"
    plan = Plan()
    events: list[EventSpec] = []

    views, strays = group_replicas(observed.pods, now)
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

    # 6. Services and the disruption budget.
    by_name = {s.get("metadata", {}).get("name"): s for s in observed.services}
    wanted = [build_api_service(deployment)]
    alive_after = cur + remaining_old
    # A group's headless Service lives as long as any of its pods (terminating ones included).
    group_indices = sorted(
        {v.index for v in views.values() if v.group_size > 1}
        | (set(created) if target.group_size > 1 else set())
    )
    wanted.extend(build_group_service(deployment, i) for i in group_indices)
    wanted_names = {s["metadata"]["name"] for s in wanted}
    plan.apply.extend(s for s in wanted if _needs_apply(s, by_name.get(s["metadata"]["name"])))
    for svc_name, svc in by_name.items():
        if svc_name not in wanted_names:
            meta = svc.get("metadata", {})
            plan.delete.append(ObjectRef("v1", "Service", ns, str(svc_name), meta.get("uid"), "group gone"))
    # A budget only while it protects something: with one replica (or none) minAvailable would be 0, a PDB
    # that allows every eviction and still costs an object, its status updates and their watch events.
    pdb = build_pdb(deployment, desired, target.group_size) if pdb_min_available(desired, 1) > 0 else None
    for observed_pdb in observed.pdbs:
        meta = observed_pdb.get("metadata", {})
        if pdb is None or meta.get("name") != pdb["metadata"]["name"]:
            reason = "one replica or none: nothing to protect"
            plan.delete.append(
                ObjectRef(
                    "policy/v1", "PodDisruptionBudget", ns, str(meta.get("name")), meta.get("uid"), reason
                )
            )
    pdbs = {p.get("metadata", {}).get("name"): p for p in observed.pdbs}
    if pdb is not None and _needs_apply(pdb, pdbs.get(pdb["metadata"]["name"])):
        plan.apply.append(pdb)

    # 7. Status of the state after this plan.
    replicas_after = len(alive_after) + len(created)
    ready_after = sum(1 for v in alive_after if v.ready)
    updated_after = len(cur) + len(created)
    nodes = list(observed.nodes) if observed.nodes is not None else None
    shortage = gpu_shortage(target, nodes)
    gpu_pending = [v for v in alive_after if v.gpu_pending]
    problems = [p for v in alive_after for p in v.problems]
    conds = _conditions(
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
    progressing = next(c for c in conds if c.type == C.PROGRESSING)
    degraded = next(c for c in conds if c.type == C.DEGRADED)
    if progressing.reason == C.INSUFFICIENT_GPU:
        since = next((c.get("lastTransitionTime") for c in merged if c["type"] == C.PROGRESSING), stamp)
        started = parse_time(str(since)) or now
        held = (now - started).total_seconds()
        plan.requeue_after = min(GPU_BACKOFF_MAX_SECONDS, max(GPU_BACKOFF_MIN_SECONDS, held))
    elif progressing.status:
        plan.requeue_after = PROGRESS_REQUEUE_SECONDS
    elif degraded.status:
        plan.requeue_after = DEGRADED_REQUEUE_SECONDS
    plan.summary = (
        f"{ns}/{name}: desired {desired}, ready {ready_after}/{replicas_after}, hash {target.spec_hash}, "
        f"+{len(created)} -{len(deleted) + len(restarted)} replicas"
    )
    return plan


def worker_gpus(pods: Sequence[Mapping[str, Any]]) -> int:
    """GPUs the worker pods hold: the requests of pods bound to a node that have not finished."""
    total = 0
    for pod in pods:
        spec = pod.get("spec") or {}
        if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for container in spec.get("containers") or []:
            res = container.get("resources") or {}
            value = (res.get("requests") or {}).get(GPU_RESOURCE, (res.get("limits") or {}).get(GPU_RESOURCE))
            try:
                total += int(value or 0)
            except (TypeError, ValueError):
                continue
    return total


def account_gpu_hours(
    old_status: Mapping[str, Any], gpus: int, now: float, writing: bool
) -> dict[str, Any] | None:
    """``gpuHours`` and ``autoscaler`` (with the accounting time, the key the autoscaler uses too) to add to
    the status write, or ``None`` when the accounting can wait for a later write. ``gpus`` (held now) x the
    time since the last accounting: a count changes when pods are created or deleted, which writes the status
    anyway (pods not yet bound hold none), so the error is the binding or release delay within one interval.
    Due on its own (one write) when pods held GPUs for :data:`GPU_HOURS_WRITE_SECONDS` since the last
    accounting, or when accounting never started; never while no pod holds a GPU."""
    old_as = old_status.get("autoscaler") or {}
    since = old_as.get(GPU_HOURS_AT)
    due = since is None or (gpus > 0 and now - float(since) >= GPU_HOURS_WRITE_SECONDS)
    if not (writing or due):
        return None
    total, _ = accumulate_gpu_hours(old_status, gpus, now)
    return {"gpuHours": round(total, 6), "autoscaler": {**old_as, GPU_HOURS_AT: now}}


def _conditions(
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
    n = target.replicas
    insufficient = shortage or (
        f"{len(gpu_pending)} replica(s) Pending: the scheduler finds Insufficient nvidia.com/gpu"
        if gpu_pending
        else None
    )
    floor = max(1, min(n, deployment.spec.min_replicas))
    # Ready.
    if n == 0:
        ready_c = Cond(C.READY, False, C.SCALED_TO_ZERO, "spec.replicas is 0")
    elif ready >= n:
        ready_c = Cond(C.READY, True, C.ALL_REPLICAS_READY, f"{ready}/{n} replicas ready")
    elif ready >= floor:
        ready_c = Cond(
            C.READY, True, C.MINIMUM_REPLICAS_READY, f"{ready}/{n} replicas ready (minimum {floor})"
        )
    elif insufficient:
        ready_c = Cond(C.READY, False, C.INSUFFICIENT_GPU, f"{ready}/{n} replicas ready; {insufficient}")
    elif problems:
        ready_c = Cond(
            C.READY, False, _worst(problems).reason, f"{ready}/{n} replicas ready; {_worst(problems).message}"
        )
    elif unschedulable:
        ready_c = Cond(
            C.READY, False, C.UNSCHEDULABLE, f"{ready}/{n} replicas ready; {unschedulable[0].unschedulable}"
        )
    else:
        ready_c = Cond(C.READY, False, C.WORKERS_STARTING, f"{ready}/{n} replicas ready; workers starting")
    # Progressing.
    if insufficient and ready < n + old:
        prog = Cond(C.PROGRESSING, False, C.INSUFFICIENT_GPU, insufficient)
    elif old:
        prog = Cond(
            C.PROGRESSING,
            True,
            C.ROLLING_UPDATE,
            f"{updated}/{n} replicas at spec hash {target.spec_hash}, {old} old replica(s) left, "
            f"{ready} ready",
        )
    elif replicas < n or ready < n:
        prog = Cond(C.PROGRESSING, True, C.WORKERS_CREATED, f"{replicas}/{n} replicas created, {ready} ready")
    elif terminating:
        prog = Cond(C.PROGRESSING, True, C.SCALING_DOWN, f"{terminating} replica(s) draining")
    else:
        prog = Cond(
            C.PROGRESSING, False, C.REPLICAS_UP_TO_DATE, f"{n} replica(s) at spec hash {target.spec_hash}"
        )
    # Degraded.
    if problems:
        worst = _worst(problems)
        msgs = "; ".join(p.message for p in problems[:5])
        deg = Cond(C.DEGRADED, True, worst.reason, msgs)
    elif restarted:
        deg = Cond(
            C.DEGRADED,
            True,
            C.REPLICA_RESTARTED,
            f"replica(s) {[v.index for v in restarted]} restarting as a unit",
        )
    else:
        deg = Cond(C.DEGRADED, False, C.WORKERS_HEALTHY, "no crash loops, OOM kills or failed pods")
    return [ready_c, prog, deg]


def _worst(problems: list[Any]) -> Any:
    order = {C.OOM_KILLED: 0, C.CRASH_LOOP: 1}
    return sorted(problems, key=lambda p: order.get(p.reason, 2))[0]


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
            event = {
                "time": stamp,
                "from": before,
                "to": n,
                "reason": reason,
                "message": f"replicas {before} -> {n}"
                + (" (initial)" if prev is None else " (spec.replicas changed)"),
            }
            out["lastScale"] = event
            out["scalingHistory"] = [*(old.get("scalingHistory") or []), event][-MAX_HISTORY:]
    return out


__all__ = [
    "SPEC_HASH_LABEL",
    "Target",
    "account_gpu_hours",
    "gpu_shortage",
    "make_target",
    "matching_nodes",
    "node_matches",
    "plan_reconcile",
    "rfc3339",
    "worker_gpus",
]
