"""Glue between an ``LLMDeployment`` and the pure scaling algorithm (:mod:`tidal.scaling`), pure as well.

The shell observes (pods, nodes, Prometheus) and calls these functions; they turn the spec into a
:class:`~tidal.scaling.ScalingConfig`, the observed pods and nodes into a :class:`~tidal.scaling.CapacityView`
(ready and starting replicas, cold start measured from the pods' conditions, free GPUs), the status into an
:class:`~tidal.scaling.AutoscalerState` (so an operator restart does not reset the windows), and a
:class:`~tidal.scaling.ScalingDecision` into what the operator writes: the status fields the autoscaler owns
(``autoscaler``, ``signal``, ``advice``, ``engineTuning``, ``gpuHours``, ``lastScale``, ``scalingHistory``),
the conditions ``MetricsAvailable``, ``ScalingActive`` and ``PerformanceDegraded``, and Events that quote the
numbers. Engine advice goes through :func:`tidal.scaling.tuning.plan_engine_tuning`: in ``Apply`` mode an
applied change is recorded in ``status.engineTuning.overrides``, which the pod builders read
(:func:`tidal.builders.engine.tuned_overrides`), so the change rolls out like any spec change. The reconcile
planner carries these through in the same status write (:class:`AutoscalerPatch`), so the two never
overwrite each other.

No clock, no I/O: ``now`` (Unix seconds) and the RFC 3339 ``stamp`` are passed in.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from tidal.api import AUTO, MAX_HISTORY, LLMDeployment
from tidal.builders.engine import EffectiveEngine, RecommendationResult, model_profile, resolve_engine
from tidal.builders.gpus import GPU_RESOURCE
from tidal.builders.pods import compute_spec_hash
from tidal.plan.conditions import Cond
from tidal.plan.replicas import group_replicas, is_pod_ready, parse_time
from tidal.plan.types import EventSpec, NodeInfo
from tidal.recommender.gpus import UnknownGPUError, get_gpu
from tidal.recommender.perf import performance_model
from tidal.scaling import (
    AutoscalerState,
    CapacityView,
    FleetObservation,
    Reason,
    ScalingConfig,
    ScalingDecision,
)
from tidal.scaling.rollback import plan_rollback
from tidal.scaling.tuning import COOL_DOWN_S, TUNABLE, TuningDecision, plan_engine_tuning
from tidal.sim.capacity import modelled_capacity
from tidal.sim.stepmodel import EngineLimits

if TYPE_CHECKING:
    from tidal.plan.reconcile import Target

METRICS_AVAILABLE: Final = "MetricsAvailable"
SCALING_ACTIVE: Final = "ScalingActive"
METRICS_FRESH: Final = "MetricsFresh"
SIGNALS_EVALUATED: Final = "SignalsEvaluated"
SCALING_HELD: Final = "ScalingHeld"
AUTOSCALING_DISABLED: Final = "AutoscalingDisabled"
REPLICA_DEGRADED: Final = "ReplicaDegraded"
SCALE_BLOCKED: Final = "ScaleBlocked"
PERFORMANCE_DEGRADED: Final = "PerformanceDegraded"
"""Condition: True while a replica is flagged degraded (its own type: ``Degraded`` is the planner's, for crash
loops and refused writes, and the two must not overwrite each other)."""
REPLICAS_COMPARABLE: Final = "ReplicasComparable"
"""``PerformanceDegraded=False`` reason: no replica is far slower than its peers."""
ENGINE_TUNED: Final = "EngineTuned"
ENGINE_TUNING_SKIPPED: Final = "EngineTuningSkipped"
ENGINE_TUNING_ROLLED_BACK: Final = "EngineTuningRolledBack"
RENOTIFY_SECONDS: Final = 3600.0
"""An ``EngineTuningSkipped`` Event for the same setting and reason is not posted again sooner than this."""
AUTOSCALER_TYPES: Final = (METRICS_AVAILABLE, SCALING_ACTIVE, PERFORMANCE_DEGRADED)

GPU_HOURS_AT: Final = "gpuHoursAt"
"""Key in ``status.autoscaler``: Unix time up to which ``status.gpuHours`` is accounted."""
DEGRADED_KEY: Final = "degraded"
"""Key in ``status.autoscaler``: replicas flagged degraded at the last pass (an Event only for new ones)."""
LOAD_CAPACITY_KEY: Final = "loadCapacity"
"""Key in ``status.autoscaler``: the modelled replica capacity behind the ``load`` signal, or why it is
off."""
BLOCKED_KEY: Final = "blocked"
"""Key in ``status.autoscaler``: the last blocked decision (an Event only when it changes)."""
MAX_GPU_HOURS_GAP_S: Final = 6 * 3600.0
"""A longer gap between two accountings (autoscaling was off, the operator was down for long) is counted
as this long: the replica count during the gap is unknown."""

_SIGNAL_NAMES: Final = {
    "ttft": "ttft_p95",
    "tpot": "tpot_p95",
    "queue": "queue",
    "kv": "kv_cache",
    "load": "load",
}


def without_nulls(value: Any) -> Any:
    """``value`` with null map entries removed (recursively): a merge patch's ``null`` deletes the key, so
    the stored object lacks it; compare like with like."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------- spec -> config


def scaling_config(
    deployment: LLMDeployment,
    max_num_seqs: int | None = None,
    gpu_memory_utilization: float | None = None,
    capacity: ReplicaCapacity | None = None,
) -> ScalingConfig:
    """The algorithm's configuration from ``spec.autoscaling`` and the replica bounds. ``max_num_seqs`` and
    ``gpu_memory_utilization`` are the engine's effective values (explicit, tuned or recommended), for
    engine advice; ``capacity`` (:func:`replica_capacity`) turns the ``load`` signal on."""
    spec = deployment.spec
    a = spec.autoscaling
    t = a.targets
    engine_seqs = spec.engine.max_num_seqs
    return ScalingConfig(
        ttft_p95_s=t.ttft_p95_seconds,
        tpot_p95_s=t.tpot_p95_seconds,
        queue_per_replica=t.queue_length_per_replica,
        kv_cache_usage=t.kv_cache_usage,
        tolerance=a.tolerance,
        panic_threshold=a.panic_threshold,
        panic_window_s=a.panic_window_seconds,
        scale_up_stabilization_s=a.scale_up_stabilization_seconds,
        scale_down_stabilization_s=a.scale_down_stabilization_seconds,
        scale_down_consecutive=a.scale_down_consecutive,
        max_scale_up_step=a.max_scale_up_step,
        max_scale_down_step=a.max_scale_down_step,
        metrics_stale_after_s=a.metrics_stale_after_seconds,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        cold_start_s=a.cold_start_seconds,
        prefill_tokens_per_replica_s=None if capacity is None else capacity.prefill_tokens_per_s,
        decode_tokens_per_replica_s=None if capacity is None else capacity.decode_tokens_per_s,
        max_num_seqs=engine_seqs if isinstance(engine_seqs, int) else max_num_seqs,
        gpu_memory_utilization=spec.engine.gpu_memory_fraction or gpu_memory_utilization,
        replica_warmup_s=a.replica_warmup_seconds,
    )


@dataclass(frozen=True)
class ReplicaCapacity:
    """Prompt and generated tokens per second one replica sustains within the TPOT target (modelled)."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    source: str


def replica_capacity(
    deployment: LLMDeployment, engine: EffectiveEngine, recommendation: RecommendationResult | None
) -> tuple[ReplicaCapacity | None, str]:
    """One replica's modelled capacity for the ``load`` signal, from the recommender's performance model
    (:func:`tidal.recommender.perf.performance_model`) of the deployment's model, GPU and TP x PP, at the
    expected prompt and output lengths and the TPOT target (:func:`tidal.sim.capacity.modelled_capacity`,
    the same arithmetic the simulator's Tidal policy uses), with the engine's effective limits. ``None``
    (the ``load`` signal stays off) with the reason when the model or GPU is unknown, or when the engine
    does not run with the recommendation's parallelism (its KV capacity would not apply)."""
    spec = deployment.spec
    rec = recommendation.status if recommendation is not None else None
    if rec is None or not rec.feasible or rec.values.tensor_parallel_size is None:
        why = "; ".join(rec.reasons[:1]) if rec is not None and rec.reasons else "no recommendation"
        return None, f"load signal off: {why}"
    if (engine.tensor_parallel_size, engine.pipeline_parallel_size) != (
        rec.values.tensor_parallel_size,
        rec.values.pipeline_parallel_size,
    ):
        return None, (
            f"load signal off: the engine runs TP={engine.tensor_parallel_size} "
            f"PP={engine.pipeline_parallel_size}, "
            f"the recommendation is sized for TP={rec.values.tensor_parallel_size} "
            f"PP={rec.values.pipeline_parallel_size}"
        )
    profile, _ = model_profile(spec.model)
    try:
        gpu = get_gpu(spec.resources.gpu_type)
    except UnknownGPUError as exc:
        return None, f"load signal off: {exc}"
    if profile is None:
        return None, "load signal off: the model is not known"
    return _capacity(
        profile,
        gpu,
        engine.tensor_parallel_size,
        engine.pipeline_parallel_size,
        spec.engine.dtype,
        spec.engine.kv_cache_dtype,
        engine.quantization,
        EngineLimits(
            kv_cache_tokens=int(rec.arithmetic.get("kvCacheTokens", 0)),
            max_num_seqs=engine.max_num_seqs or rec.values.max_num_seqs or 256,
            max_num_batched_tokens=engine.max_num_batched_tokens or rec.values.max_num_batched_tokens or 2048,
        ),
        spec.recommendation.expected_input_tokens,
        spec.recommendation.expected_output_tokens,
        spec.autoscaling.targets.tpot_p95_seconds,
    )


@lru_cache(maxsize=256)
def _capacity(
    profile: Any,
    gpu: Any,
    tp: int,
    pp: int,
    dtype: str,
    kv_dtype: str,
    quantization: str | None,
    limits: EngineLimits,
    prompt: int,
    output: int,
    tpot_s: float,
) -> tuple[ReplicaCapacity | None, str]:
    if limits.kv_cache_tokens < prompt + output:
        return (
            None,
            f"load signal off: a KV cache of {limits.kv_cache_tokens} tokens holds no expected request",
        )
    pm = performance_model(profile, gpu, tp, pp, dtype, kv_dtype, quantization)
    cap = modelled_capacity(pm, limits, float(prompt), float(output), tpot_s)
    source = (
        f"modelled replica capacity {cap.prefill_tokens_per_s:.0f} prompt + {cap.decode_tokens_per_s:.0f} "
        f"generated tokens/s ({cap.requests_per_s:.2f} requests/s of {prompt}+{output} tokens at TPOT "
        f"{tpot_s:g}s, batch {cap.batch}; {pm.source})"
    )
    return ReplicaCapacity(cap.prefill_tokens_per_s, cap.decode_tokens_per_s, source), source


# ------------------------------------------------------------------------------------ pods -> capacity


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs the pod requests (sum over its containers; limits when no request is given)."""
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        raw = (res.get("requests") or {}).get(GPU_RESOURCE, (res.get("limits") or {}).get(GPU_RESOURCE, 0))
        try:
            total += int(raw)
        except (TypeError, ValueError):
            continue
    return total


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
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
    gpus_per_replica: int,
    free: int | None,
) -> CapacityView:
    """Ready and starting replicas of the deployment (``pods``: its worker pods), with the measured cold
    start."""
    views, _ = group_replicas(pods, now)
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


def alive_replicas(pods: Sequence[Mapping[str, Any]], now: datetime) -> int:
    """Replicas that exist (not terminating): what GPU-hours are accounted for."""
    views, _ = group_replicas(pods, now)
    return sum(1 for v in views.values() if v.alive)


# ------------------------------------------------------------------------------------ status <-> state


def load_state(status: Mapping[str, Any] | None) -> AutoscalerState:
    """The autoscaler's windows from ``status.autoscaler`` (empty state when absent or unreadable)."""
    data = (status or {}).get("autoscaler")
    try:
        return AutoscalerState.from_dict(data if isinstance(data, Mapping) else None)
    except (TypeError, ValueError):
        return AutoscalerState()


def accumulate_gpu_hours(
    status: Mapping[str, Any] | None, gpus_in_use: int, now: float
) -> tuple[float, float]:
    """(new ``gpuHours``, the increment): ``gpus_in_use`` x the time since the last accounting (none the
    first time; a gap is capped at :data:`MAX_GPU_HOURS_GAP_S`)."""
    status = status or {}
    total = float(status.get("gpuHours") or 0.0)
    since = (status.get("autoscaler") or {}).get(GPU_HOURS_AT)
    if since is None:
        return total, 0.0
    elapsed = min(max(0.0, now - float(since)), MAX_GPU_HOURS_GAP_S)
    delta = gpus_in_use * elapsed / 3600.0
    return total + delta, delta


# ------------------------------------------------------------------------------------------ engine tuning

_ENGINE_FIELDS: Final = {"maxNumSeqs": "max_num_seqs", "gpuMemoryUtilization": "gpu_memory_utilization"}


def engine_tuning(
    deployment: LLMDeployment,
    decision: ScalingDecision,
    status: Mapping[str, Any] | None,
    now: float,
    pods: Sequence[Mapping[str, Any]] | None = None,
    target: Target | None = None,
) -> TuningDecision:
    """What to do with the decision's engine advice (:func:`tidal.scaling.tuning.plan_engine_tuning`), from
    the spec (mode, explicit values) and ``status.engineTuning`` (overrides, time of the last change, blocked
    values). With the deployment's worker ``pods`` and the reconcile ``target`` (Apply mode): first whether
    the last change crash-loops at the hash it produced (:func:`tidal.scaling.rollback.plan_rollback`); a
    rollback replaces that override, blocks the failed value and restarts the cool-down (so no other change
    is made in the same pass), whatever the cool-down said. An applied change records the hash it rolls the
    replicas to (``lastChange.specHash``)."""
    spec = deployment.spec
    apply_mode = spec.recommendation.mode == "Apply"
    explicit: dict[str, float] = {}
    for setting in TUNABLE:
        raw = getattr(spec.engine, _ENGINE_FIELDS[setting])
        if raw != AUTO:
            explicit[setting] = float(raw)
    old = (status or {}).get("engineTuning") or {}
    overrides = {k: float(v) for k, v in (old.get("overrides") or {}).items() if v is not None}
    blocked = {k: float(v) for k, v in (old.get("blocked") or {}).items() if v is not None}
    # The cool-down runs from the last change or rollback, whichever is later (both roll the replicas).
    times = [parse_time(str((old.get(k) or {}).get("time") or "")) for k in ("lastChange", "rolledBack")]
    last_change = max((t.timestamp() for t in times if t is not None), default=None)
    rollback = None
    if apply_mode and pods is not None and target is not None:
        rollback = plan_rollback(old, pods, target.spec_hash, now)
    if rollback is not None:
        overrides, blocked, last_change = rollback.overrides, rollback.blocked, now
    tuning = plan_engine_tuning(
        decision.advice,
        apply_mode=apply_mode,
        explicit=explicit,
        overrides=overrides,
        last_change=last_change,
        now=now,
        blocked=blocked,
    )
    if rollback is not None:
        message = f"{rollback.message}; {tuning.message}"
        tuning = dc_replace(tuning, rollback=rollback, message=message)
    if tuning.change is not None and target is not None:
        change = dc_replace(tuning.change, spec_hash=tuned_hash(deployment, target, tuning.overrides))
        tuning = dc_replace(tuning, change=change)
    return tuning


def tuned_hash(deployment: LLMDeployment, target: Target, overrides: Mapping[str, float]) -> str:
    """The pod template hash the replicas run with once ``overrides`` (by spec field name) are in force:
    the target's inputs with the engine resolved again (as :func:`tidal.plan.reconcile.make_target` does
    from the status that records them)."""
    by_field = {_ENGINE_FIELDS[k]: _value(k, v) for k, v in overrides.items()}
    engine = resolve_engine(deployment.spec, target.recommendation, by_field)
    return compute_spec_hash(dc_replace(target.inputs, engine=engine))


def _stamp_of(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tuning_status(
    tuning: TuningDecision, old_status: Mapping[str, Any] | None, stamp: str, now: float, cool_down_s: float
) -> tuple[dict[str, Any] | None, list[EventSpec]]:
    """``status.engineTuning`` and the Events of one tuning decision: ``EngineTuningRolledBack`` (Warning)
    for a rollback (recorded in ``rolledBack``, the failed value in ``blocked``, the cool-down restarted),
    ``EngineTuned`` for an applied change, ``EngineTuningSkipped`` when advice is held back for a reason
    other than the cool-down or ``Advise`` mode (an explicit spec value, a bound, an unknown current value,
    a blocked value) and no Event said so for that setting and reason within :data:`RENOTIFY_SECONDS`
    (``notified``, kept when the advice goes away). ``None`` (nothing to record) when there is no override,
    no advice, no earlier change, no block and no earlier Event."""
    old = (old_status or {}).get("engineTuning") or {}
    events: list[EventSpec] = []
    last = old.get("lastChange")
    until = old.get("coolDownUntil")
    rolled = old.get("rolledBack")
    if tuning.rollback is not None:
        r = tuning.rollback
        until = _stamp_of(now + cool_down_s)
        frm, to = _value(r.setting, r.bad), _value(r.setting, r.restored)
        rolled = _tuning_entry(stamp, r.setting, frm, to, r.message, reason=r.reason)
        events.append(EventSpec("Warning", ENGINE_TUNING_ROLLED_BACK, r.message))
    if tuning.change is not None:
        c = tuning.change
        until = _stamp_of(now + cool_down_s)
        last = _tuning_entry(stamp, c.setting, c.previous, c.value, c.message, specHash=c.spec_hash)
        events.append(
            EventSpec(
                "Normal",
                ENGINE_TUNED,
                f"{c.message} (Apply mode; rolls out replica by replica; next change not before {until})",
            )
        )
    quiet = ("coolDown", "advise")
    notified: dict[str, Any] = dict(old.get("notified") or {})
    fresh = {
        k: v
        for k, v in tuning.skipped.items()
        if v not in quiet and not _notified_recently(notified.get(k), v, now)
    }
    if tuning.rollback is not None and fresh.get(tuning.rollback.setting) == "blocked":
        # The EngineTuningRolledBack Event already says the value is blocked: noted, not said twice.
        del fresh[tuning.rollback.setting]
        notified[tuning.rollback.setting] = {"reason": "blocked", "time": stamp}
    if fresh:
        events.append(EventSpec("Normal", ENGINE_TUNING_SKIPPED, tuning.message[:1024]))
        notified.update({k: {"reason": v, "time": stamp} for k, v in fresh.items()})
    if not tuning.overrides and not tuning.skipped and last is None and not notified and not tuning.blocked:
        return None, events
    # A merge patch keeps keys it does not name: removed ones are written as null.
    overrides: dict[str, Any] = {k: None for k in old.get("overrides") or {}}
    overrides.update({k: _value(k, v) for k, v in tuning.overrides.items()})
    skipped: dict[str, Any] = {k: None for k in old.get("skipped") or {}}
    skipped.update(tuning.skipped)
    return {
        "overrides": overrides,
        "lastChange": last,
        "coolDownUntil": until,
        "skipped": skipped,
        "message": tuning.message[:1024],
        "notified": notified,
        "rolledBack": rolled,
        "blocked": {
            **{k: None for k in old.get("blocked") or {}},
            **{k: _value(k, v) for k, v in tuning.blocked.items()},
        },
    }, events


def _tuning_entry(
    stamp: str, setting: str, frm: float, to: float, message: str, **extra: Any
) -> dict[str, Any]:
    """A ``lastChange`` or ``rolledBack`` record."""
    return {"time": stamp, "setting": setting, "from": frm, "to": to, "message": message[:1024], **extra}


def _value(setting: str, value: float) -> int | float:
    """A setting's value as the status stores it (``maxNumSeqs`` is an integer)."""
    return int(value) if setting == "maxNumSeqs" else value


def _notified_recently(notice: Mapping[str, Any] | None, reason: str, now: float) -> bool:
    """An ``EngineTuningSkipped`` Event for this reason was posted less than :data:`RENOTIFY_SECONDS` ago."""
    if not notice or notice.get("reason") != reason:
        return False
    posted = parse_time(str(notice.get("time", "")))
    return posted is not None and now - posted.timestamp() < RENOTIFY_SECONDS


# ------------------------------------------------------------------------------------ decision -> status


@dataclass
class AutoscalerPatch:
    """What one autoscaler pass adds to the reconcile's status write: fields, conditions and Events."""

    desired: int
    fields: dict[str, Any] = field(default_factory=dict)
    conditions: list[Cond] = field(default_factory=list)
    events: list[EventSpec] = field(default_factory=list)
    gpu_hours_delta: float = 0.0


def signal_status(
    decision: ScalingDecision, config: ScalingConfig, obs: FleetObservation | None
) -> dict[str, Any]:
    """``status.signal``: the worst signal against its target (the ``Signal`` printer column)."""
    if not decision.metrics_available or not decision.ratios:
        return {"name": "metrics", "summary": "metrics unavailable (MetricsStale)"}
    worst = max(decision.ratios, key=lambda k: (decision.ratios[k], k))
    ratio = decision.ratios[worst]
    name = _SIGNAL_NAMES.get(worst, worst)
    value: float | None = None
    target: float | None = None
    if obs is not None:
        if worst == "ttft":
            value, target = obs.ttft_p95, config.ttft_p95_s
        elif worst == "tpot":
            value, target = obs.tpot_p95, config.tpot_p95_s
        elif worst == "queue":
            value = None if obs.waiting is None else obs.waiting / max(decision.current, 1)
            target = config.queue_per_replica
        elif worst == "kv":
            value, target = obs.kv_cache_usage, config.kv_cache_usage
    if value is None or target is None:
        value, target = ratio, 1.0
    unit = "s" if worst in ("ttft", "tpot") else ""
    summary = f"{name} {value:.3g}{unit}/{target:.3g}{unit}"
    return {"name": name, "value": round(value, 6), "target": target, "summary": summary[:128]}


def _scale_entry(stamp: str, frm: int, to: int, reason: str, message: str) -> dict[str, Any]:
    return {"time": stamp, "from": frm, "to": to, "reason": reason, "message": message[:1024]}


def _blocked(decision: ScalingDecision) -> tuple[str, str] | None:
    """(Event reason, key) when a wanted scale-up was cut short by free GPUs or maxReplicas."""
    # The key names the situation (what blocks, at which count), not the proposal, which moves with the
    # signal: one Event per blocked situation, not one per pass.
    if decision.reason is Reason.INSUFFICIENT_GPU:
        return "InsufficientGPU", f"InsufficientGPU:{decision.current}:{decision.desired}"
    if decision.reason is Reason.MAX_REPLICAS_REACHED and decision.proposed > decision.current:
        return SCALE_BLOCKED, f"MaxReplicasReached:{decision.current}"
    return None


def autoscaler_patch(
    decision: ScalingDecision,
    config: ScalingConfig,
    obs: FleetObservation | None,
    old_status: Mapping[str, Any] | None,
    now: float,
    stamp: str,
    gpus_in_use: int,
    metrics_error: str | None = None,
    tuning: TuningDecision | None = None,
    load_capacity: str | None = None,
) -> AutoscalerPatch:
    """Turn a decision (and what tuning did with its advice) into status fields, conditions and Events (all
    quoting the numbers)."""
    old = old_status or {}
    old_as = old.get("autoscaler") or {}
    events: list[EventSpec] = []
    gpu_hours, delta = accumulate_gpu_hours(old, gpus_in_use, now)
    sick = [s.replica for s in decision.sick_replicas]
    blocked = _blocked(decision)
    state = {
        **decision.state.to_dict(),
        GPU_HOURS_AT: now,
        DEGRADED_KEY: sick,
        BLOCKED_KEY: blocked[1] if blocked else None,
        LOAD_CAPACITY_KEY: load_capacity,
    }
    fields: dict[str, Any] = {
        "autoscaler": state,
        "signal": signal_status(decision, config, obs),
        "advice": [
            *(s.message[:1024] for s in decision.sick_replicas),
            *(a.message[:1024] for a in decision.advice),
        ][:20],
        "gpuHours": round(gpu_hours, 6),
    }
    history = list(old.get("scalingHistory") or [])
    entry: dict[str, Any] | None = None
    if decision.changed:
        reason = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
        message = (
            f"{decision.message} (proposed {decision.proposed}, applied {decision.desired}, "
            f"limited by {decision.limiting_factor})"
        )
        entry = _scale_entry(stamp, decision.current, decision.desired, reason, message)
        events.append(EventSpec("Normal", reason, message))
    if blocked is not None and blocked[1] != old_as.get(BLOCKED_KEY):
        message = (
            f"{decision.message} (proposed {decision.proposed}, applied {decision.desired}, "
            f"limited by {decision.limiting_factor})"
        )
        events.append(EventSpec("Warning", blocked[0], message))
        if entry is None:
            entry = _scale_entry(stamp, decision.current, decision.desired, blocked[0], message)
    if entry is not None:
        fields["lastScale"] = entry
        fields["scalingHistory"] = [*history, entry][-MAX_HISTORY:]
    if tuning is not None:
        fields["engineTuning"], tuning_events = tuning_status(tuning, old, stamp, now, COOL_DOWN_S)
        events.extend(tuning_events)
    conditions = autoscaler_conditions(decision, metrics_error)
    was_degraded = any(
        c.get("type") == PERFORMANCE_DEGRADED and c.get("status") == "True"
        for c in old.get("conditions") or []
    )
    if was_degraded or not decision.metrics_available:
        # The condition's flip to True posts the first ReplicaDegraded Event (merge_conditions); a replica
        # flagged while it is already True gets its own.
        previous = set(old_as.get(DEGRADED_KEY) or [])
        for s in decision.sick_replicas:
            if s.replica not in previous:
                events.append(EventSpec("Warning", REPLICA_DEGRADED, s.message))
    if not events and not _differs(old, fields, conditions):
        # Nothing else to write: GPU-hours are accounted at the next write (no status write just for them,
        # so a held deployment costs no API calls).
        fields["gpuHours"] = old.get("gpuHours", fields["gpuHours"])
        state[GPU_HOURS_AT] = old_as.get(GPU_HOURS_AT, now)
        delta = 0.0
    return AutoscalerPatch(decision.desired, fields, conditions, events, delta)


def _differs(old: Mapping[str, Any], fields: Mapping[str, Any], conditions: Sequence[Cond]) -> bool:
    """Whether the autoscaler's fields or conditions differ from ``old``, GPU-hours aside."""
    for key, value in fields.items():
        if key == "gpuHours":
            continue
        before, value = without_nulls(old.get(key)), without_nulls(value)
        if key == "autoscaler":
            value = {k: v for k, v in value.items() if k != GPU_HOURS_AT}
            before = {k: v for k, v in (before or {}).items() if k != GPU_HOURS_AT}
        if before != value and not (key == "advice" and not value and not before):
            return True
    by_type = {c.get("type"): c for c in old.get("conditions") or []}
    return any(
        (by_type.get(c.type) or {}).get("status") != c.status_text
        or (by_type.get(c.type) or {}).get("reason") != c.reason
        or (by_type.get(c.type) or {}).get("message") != c.message
        for c in conditions
    )


def autoscaler_conditions(decision: ScalingDecision, metrics_error: str | None = None) -> list[Cond]:
    """``MetricsAvailable`` and ``ScalingActive`` for a decision, and ``PerformanceDegraded`` when the metrics
    could be judged (without metrics the last verdict stands)."""
    if decision.metrics_available:
        ma = Cond(METRICS_AVAILABLE, True, METRICS_FRESH, "the scaling signals are reported")
        sa = Cond(SCALING_ACTIVE, True, SIGNALS_EVALUATED, f"{decision.reason.value}: {decision.message}")
    else:
        why = f"{metrics_error}; " if metrics_error else ""
        ma = Cond(METRICS_AVAILABLE, False, Reason.METRICS_STALE.value, f"{why}{decision.message}")
        sa = Cond(SCALING_ACTIVE, False, SCALING_HELD, f"replicas held: {decision.message}")
        return [ma, sa]
    return [ma, sa, performance_condition(decision)]


def performance_condition(decision: ScalingDecision) -> Cond:
    """``PerformanceDegraded``: True (reason ``ReplicaDegraded``) naming each flagged pod with its numbers,
    False once every replica is back in line with its peers."""
    if decision.sick_replicas:
        text = "; ".join(s.message for s in decision.sick_replicas)
        return Cond(PERFORMANCE_DEGRADED, True, REPLICA_DEGRADED, text)
    return Cond(
        PERFORMANCE_DEGRADED,
        False,
        REPLICAS_COMPARABLE,
        "no replica is far slower than its peers at similar load",
    )


def disabled_conditions(old_status: Mapping[str, Any] | None) -> list[Cond]:
    """When autoscaling is off: ``ScalingActive=False`` if an earlier pass had set the condition (else
    nothing, so a deployment that never autoscaled carries no autoscaler conditions)."""
    conds = (old_status or {}).get("conditions") or []
    out: list[Cond] = []
    if any(c.get("type") == SCALING_ACTIVE for c in conds):
        out.append(Cond(SCALING_ACTIVE, False, AUTOSCALING_DISABLED, "spec.autoscaling.enabled is false"))
    if any(c.get("type") == PERFORMANCE_DEGRADED and c.get("status") == "True" for c in conds):
        out.append(
            Cond(
                PERFORMANCE_DEGRADED,
                False,
                AUTOSCALING_DISABLED,
                "replicas are not compared while autoscaling is off",
            )
        )
    return out


__all__ = [
    "AUTOSCALER_TYPES",
    "AutoscalerPatch",
    "ReplicaCapacity",
    "accumulate_gpu_hours",
    "alive_replicas",
    "autoscaler_conditions",
    "autoscaler_patch",
    "capacity_view",
    "disabled_conditions",
    "engine_tuning",
    "free_gpus",
    "load_state",
    "measured_cold_start",
    "merge_pods",
    "performance_condition",
    "pod_gpus",
    "replica_ages",
    "replica_capacity",
    "scaling_config",
    "signal_status",
    "tuned_hash",
    "tuning_status",
    "with_replica_ages",
    "without_nulls",
]
