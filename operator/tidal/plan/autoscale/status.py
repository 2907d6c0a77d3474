"""Decision -> status: the status fields an autoscaler pass owns (``autoscaler``, ``signal``, ``advice``,
``engineTuning``, ``gpuHours``, ``lastScale``, ``scalingHistory``), the conditions ``MetricsAvailable``,
``ScalingActive`` and ``PerformanceDegraded``, and Events that quote the numbers, as one
:class:`AutoscalerPatch` that the reconcile planner writes in the same status patch as its own (so the two
never overwrite each other).

Its own module because this is the autoscaler's whole contract with the status: the planner
(:mod:`tidal.plan.reconcile`) reads only :class:`AutoscalerPatch`, and the status keys the autoscaler keeps
between passes are named here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tidal.api import ScaleEvent
from tidal.plan.autoscale.tuning import tuning_status
from tidal.plan.conditions import Cond
from tidal.plan.documents import scale_record, without_nulls
from tidal.plan.gpuhours import GPU_HOURS_AT, accumulate_gpu_hours
from tidal.plan.kvcapacity import KVCapacityUpdate
from tidal.plan.types import EventSpec
from tidal.scaling import FleetObservation, Reason, ScalingConfig, ScalingDecision
from tidal.scaling.tuning import COOL_DOWN_S, TuningDecision

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
TARGETS_REACHABLE: Final = "TargetsReachable"
"""Condition: False (reason ``TargetUnreachable``) while the capacity model says a target cannot be met."""
TARGET_UNREACHABLE: Final = "TargetUnreachable"
TARGETS_WITHIN_MODEL: Final = "TargetsWithinModel"
AUTOSCALER_FAILED: Final = "AutoscalerFailed"
"""``ScalingActive=False`` reason: the pass raised; the replicas are held and the pods still reconciled."""
AUTOSCALER_TYPES: Final = (METRICS_AVAILABLE, SCALING_ACTIVE, PERFORMANCE_DEGRADED, TARGETS_REACHABLE)

DEGRADED_KEY: Final = "degraded"
"""Key in ``status.autoscaler``: replicas flagged degraded at the last pass (an Event only for new ones)."""
LOAD_CAPACITY_KEY: Final = "loadCapacity"
"""Key in ``status.autoscaler``: the modelled replica capacity behind the ``load`` signal, or why it is
off."""
BLOCKED_KEY: Final = "blocked"
"""Key in ``status.autoscaler``: the last blocked decision (an Event only when it changes)."""

_SIGNAL_NAMES: Final = {
    "ttft": "ttft_p95",
    "tpot": "tpot_p95",
    "queue": "queue",
    "kv": "kv_cache",
    "load": "load",
}


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


def _scale_entry(stamp: str, frm: int, to: int, reason: str, message: str) -> ScaleEvent:
    return ScaleEvent.model_validate(
        {"time": stamp, "from": frm, "to": to, "reason": reason, "message": message[:1024]}
    )


def _blocked(decision: ScalingDecision) -> tuple[str, str] | None:
    """(Event reason, key) when a wanted scale-up was cut short by free GPUs or maxReplicas."""
    # The key names the situation (what blocks, at which count), not the proposal, which moves with the
    # signal: one Event per blocked situation, not one per pass.
    if decision.reason is Reason.INSUFFICIENT_GPU:
        return "InsufficientGPU", f"InsufficientGPU:{decision.current}:{decision.desired}"
    if decision.reason is Reason.MAX_REPLICAS_REACHED and decision.proposed > decision.current:
        return SCALE_BLOCKED, f"MaxReplicasReached:{decision.current}"
    return None


HEADROOM_KEY = "headroom"
HEADROOM_CHANGED = "HeadroomChanged"
"""Event reason when the standing headroom moves materially (``headroom.MATERIAL_CHANGE``)."""


def headroom_status(decision: ScalingDecision) -> dict[str, Any] | None:
    """``status.autoscaler.headroom``: the factor, and the lead time, quantile and history behind it."""
    room = decision.headroom
    if room is None:
        return None
    return {
        "factor": round(room.factor, 3),
        "estimate": round(room.estimate, 3),
        "historyQuantile": None if room.history_quantile is None else round(room.history_quantile, 3),
        "quantile": room.quantile,
        "leadTimeSeconds": round(room.lead_time_s, 1),
        "historySeconds": round(room.history_s, 1),
        "samples": room.samples,
        "feedback": round(room.feedback, 3),
        "baseDemandReplicas": round(room.base, 3),
    }


def _scale_record(
    decision: ScalingDecision,
    blocked: tuple[str, str] | None,
    old_as: Mapping[str, Any],
    stamp: str,
    events: list[EventSpec],
) -> ScaleEvent | None:
    """The ``scalingHistory`` entry of this decision (a change, or a newly blocked scale), None without one;
    appends its Events to ``events``."""
    entry: ScaleEvent | None = None
    message = (
        f"{decision.message} (proposed {decision.proposed}, applied {decision.desired}, "
        f"limited by {decision.limiting_factor})"
    )
    if decision.changed:
        reason = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
        entry = _scale_entry(stamp, decision.current, decision.desired, reason, message)
        events.append(EventSpec("Normal", reason, message))
    if blocked is not None and blocked[1] != old_as.get(BLOCKED_KEY):
        events.append(EventSpec("Warning", blocked[0], message))
        if entry is None:
            entry = _scale_entry(stamp, decision.current, decision.desired, blocked[0], message)
    return entry


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
    unreachable: str | None = None,
) -> AutoscalerPatch:
    """Turn a decision (and what tuning did with its advice) into status fields, conditions and Events (all
    quoting the numbers). ``unreachable``: why a target cannot be met (``TargetsReachable=False``)."""
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
        HEADROOM_KEY: headroom_status(decision),
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
    entry = _scale_record(decision, blocked, old_as, stamp, events)
    if entry is not None:
        fields.update(scale_record(old, entry))
    room = decision.headroom
    if room is not None and decision.state.headroom_factor != old_as.get("headroomFactor"):
        events.append(EventSpec("Normal", HEADROOM_CHANGED, room.describe()))
    if tuning is not None:
        fields["engineTuning"], tuning_events = tuning_status(tuning, old, stamp, now, COOL_DOWN_S)
        events.extend(tuning_events)
    conditions = [*autoscaler_conditions(decision, metrics_error), *target_conditions(unreachable, old)]
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


def with_kv_capacity(patch: AutoscalerPatch, update: KVCapacityUpdate) -> AutoscalerPatch:
    """``patch`` plus the online KV-capacity check (:mod:`tidal.plan.kvcapacity`): ``status.kvCapacity`` and
    its ``KVCapacityMismatch`` Events, in the same status write (nothing when no engine reported)."""
    if update.status is not None:
        patch.fields["kvCapacity"] = update.status
        patch.events.extend(update.events)
    return patch


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


def target_conditions(unreachable: str | None, old_status: Mapping[str, Any] | None) -> list[Cond]:
    """``TargetsReachable=False`` (reason ``TargetUnreachable``, naming the target) while the capacity model
    says a target cannot be met; ``True`` once it can again, if an earlier pass had said it could not (a
    deployment whose targets were never out of reach carries no such condition)."""
    if unreachable is not None:
        return [Cond(TARGETS_REACHABLE, False, TARGET_UNREACHABLE, unreachable)]
    if any(c.get("type") == TARGETS_REACHABLE for c in (old_status or {}).get("conditions") or []):
        return [Cond(TARGETS_REACHABLE, True, TARGETS_WITHIN_MODEL, "no target is known to be out of reach")]
    return []


def failed_pass_patch(desired: int, error: str) -> AutoscalerPatch:
    """What a pass that raised writes: ``ScalingActive=False`` (reason ``AutoscalerFailed``, the error in the
    message; its transition posts a Warning Event) and the replica count held at ``desired``, so the pods are
    reconciled as if autoscaling were paused."""
    message = f"the autoscaler pass failed ({error[:512]}); replicas held at {desired}"
    return AutoscalerPatch(desired, conditions=[Cond(SCALING_ACTIVE, False, AUTOSCALER_FAILED, message)])


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
    if any(c.get("type") == TARGETS_REACHABLE and c.get("status") == "False" for c in conds):
        out.append(Cond(TARGETS_REACHABLE, True, AUTOSCALING_DISABLED, "the targets are not used"))
    return out


__all__ = [
    "AUTOSCALER_TYPES",
    "AutoscalerPatch",
    "autoscaler_conditions",
    "autoscaler_patch",
    "disabled_conditions",
    "failed_pass_patch",
    "performance_condition",
    "signal_status",
    "target_conditions",
    "with_kv_capacity",
]
