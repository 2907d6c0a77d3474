"""The Tidal scaling algorithm: ``compute_desired_replicas`` (pure; time is passed in).

Pipeline, in order (docs/autoscaling.md has the formulas):

1. **Freshness** — no, stale (older than ``metrics_stale_after_s``) or empty observations hold the
   current count (bounded), ``metrics_available=False``, reason ``MetricsStale``; never a scale-down.
2. **Detection** — sick replicas are flagged and excluded from the fleet latency signal.
3. **Signals** — ratio of each signal to its target; the worst wins. Lagging signals (``ttft``,
   ``tpot``, ``queue``) say *that* the fleet is short; proportional signals (``load`` from token
   rates and the modelled per-replica capacity, ``kv``) also say *by how much*. A signal asks for
   ``ceil(ready x ratio)`` replicas.
4. **Tolerance** — within ``1 ± tolerance`` nothing changes (``WithinTolerance``).
5. **Scale-up** — immediate; at ``ratio ≥ panic_threshold`` the step limit is lifted (panic) and
   scale-down is held for ``panic_window_s``. While replicas are starting within the cold start,
   lagging signals do not add more (``ColdStartPending``): the queue they see is what the starting
   replicas will absorb. Proportional signals still may.
6. **Scale-down** — only after ``scale_down_consecutive`` below-target decisions in a row, to the
   maximum recommendation over ``scale_down_stabilization_s``, at most ``max_scale_down_step`` at a time.
7. **Bounds** — min/max applied here and only here; then the free-GPU limit (``InsufficientGPU``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tidal.scaling.detection import detect_sick_replicas, engine_advice, exclude_sick
from tidal.scaling.headroom import material_change
from tidal.scaling.signals import (
    SATURATED_QUEUE,
    Reserve,
    demand_growth,
    load_work,
    plan_reserve,
    signal_ratios,
    waiting_growth,
)
from tidal.scaling.types import (
    AutoscalerState,
    CapacityView,
    FleetObservation,
    Reason,
    ScalingConfig,
    ScalingDecision,
)

LAGGING = ("ttft", "tpot", "queue")
PROPORTIONAL = ("load", "kv")
_EPS = 1e-9


def _bound(config: ScalingConfig, n: int) -> tuple[int, Reason | None]:
    """The single place where min/max replicas are applied."""
    if n > config.max_replicas:
        return config.max_replicas, Reason.MAX_REPLICAS_REACHED
    if n < config.min_replicas:
        return config.min_replicas, Reason.MIN_REPLICAS_REACHED
    return n, None


def _prune(recs: tuple[tuple[float, int], ...], now: float, horizon: float) -> tuple[tuple[float, int], ...]:
    return tuple((t, n) for t, n in recs if now - t <= horizon + _EPS)


def compute_desired_replicas(
    config: ScalingConfig,
    obs: FleetObservation | None,
    capacity: CapacityView,
    state: AutoscalerState,
    now: float,
    past_demand: Sequence[tuple[float, float]] = (),
) -> ScalingDecision:
    """Desired replicas for one deployment, with the reason and the numbers behind it.

    ``past_demand``: time-ordered (time, replicas of work) demand samples before ``now`` (the simulator
    records them from earlier decisions' ``demand``; the operator reads them from Prometheus), for the
    headroom."""
    current = capacity.current
    ready = capacity.ready
    horizon = max(config.scale_down_stabilization_s, config.scale_up_stabilization_s)

    # 1. Freshness.
    if obs is None or now - obs.time > config.metrics_stale_after_s or not obs.has_any_signal():
        held, _ = _bound(config, current)
        if obs is None or not obs.has_any_signal():
            why = "no metrics"
        else:
            age, limit = now - obs.time, config.metrics_stale_after_s
            why = f"newest sample is {age:.0f}s old (stale after {limit:.0f}s)"
        return ScalingDecision(
            desired=held,
            proposed=current,
            current=current,
            reason=Reason.METRICS_STALE,
            message=f"holding at {held}: {why}; replicas are never scaled down on missing metrics",
            limiting_factor="metrics",
            metrics_available=False,
            state=state.evolve(consecutive_below=0, below_target_since=None),
        )

    # 2. Detection.
    sick = detect_sick_replicas(config, obs)
    healthy_obs = exclude_sick(obs, sick)
    advice = engine_advice(config, healthy_obs, ready)

    # 3. Signals.
    history = state.load_history
    demand = state.demand_history
    queue = state.queue_history
    trend_extra = 0.0
    growth: float | None = None
    reserve: Reserve | None = None
    work_now: float | None = None
    if (
        config.prefill_tokens_per_replica_s
        and config.decode_tokens_per_replica_s
        and healthy_obs.prompt_token_rate is not None
    ):
        if healthy_obs.waiting is not None:
            qw = config.queue_growth_window_s
            queue = (*((t, q) for t, q in queue if now - t <= qw + _EPS), (now, healthy_obs.waiting))
        growth = waiting_growth(queue)
        work_now, unserved = load_work(config, healthy_obs, growth)
        past = [(t, d) for t, d in past_demand if t < now - _EPS]
        reserve = plan_reserve(
            config, healthy_obs, capacity, state, [*past, (now, work_now)], work_now, unserved, now
        )
        keep = config.trend_window_s
        history = (*((t, w) for t, w in history if now - t <= keep), (now, work_now))
        if (healthy_obs.waiting or 0.0) > max(ready, 1) * (config.queue_per_replica or SATURATED_QUEUE):
            # A queue is building: the served prompt rate follows the capacity, not the demand (it jumps
            # when new replicas arrive). Start the demand history afresh once the fleet keeps up.
            demand = ()
        else:
            demand = (*((t, d) for t, d in demand if now - t <= keep), (now, healthy_obs.prompt_token_rate))
        if config.headroom_prior <= 1.0 and not past_demand:
            trend_extra = work_now * demand_growth(config, demand)
    ratios, text = signal_ratios(
        config,
        healthy_obs,
        ready,
        trend_extra,
        growth,
        reserve.reserve if reserve else 0.0,
        reserve.backlog if reserve else 0.0,
    )
    recs = state.recommendations or ((now, _bound(config, current)[0]),)  # a fresh start holds a full window
    if not ratios:
        held, _ = _bound(config, current)
        return ScalingDecision(
            desired=held,
            proposed=current,
            current=current,
            reason=Reason.METRICS_STALE,
            message=f"holding at {held}: none of the target signals is reported",
            limiting_factor="metrics",
            metrics_available=False,
            state=state.evolve(consecutive_below=0, below_target_since=None),
            sick_replicas=sick,
            advice=advice,
        )
    signal = max(ratios, key=lambda k: (ratios[k], k))
    worst = ratios[signal]
    why = f"{text[signal]} (ratio {worst:.2f})"

    def ask(ratio: float) -> int:
        return max(0, math.ceil(ready * ratio - _EPS))

    # 4. Tolerance / proposal.
    if ready == 0:
        wants = (obs.waiting or 0) > 0 or (obs.request_rate or 0) > 0
        proposed = max(current, 1) if wants else current
    elif abs(worst - 1.0) <= config.tolerance:
        proposed = current
    else:
        proposed = ask(worst)
        if worst > 1.0:
            proposed = max(proposed, ready + 1)  # a breach always asks for at least one more
    panic = worst >= config.panic_threshold and ready > 0
    panic_until = state.panic_until
    if panic:
        panic_until = now + config.panic_window_s
    in_panic = panic_until is not None and now < panic_until

    bounded_rec, _ = _bound(config, proposed)
    recs = _prune((*recs, (now, bounded_rec)), now, horizon)
    reason: Reason | None = None
    limiting = signal
    note = ""
    target = current
    consecutive = state.consecutive_below
    below_since = state.below_target_since

    if proposed > current:
        consecutive, below_since = 0, None
        cold = capacity.cold_start_s if capacity.cold_start_s is not None else config.cold_start_s
        last_up = state.last_scale_up_time
        cold_pending = capacity.starting > 0 and (cold is None or last_up is None or now - last_up < cold)
        target = proposed
        if cold_pending and signal in LAGGING:
            prop = [ask(ratios[k]) for k in PROPORTIONAL if k in ratios]
            alt = max(prop) if prop else 0
            if alt > current:
                target = alt
                limiting = max((k for k in PROPORTIONAL if k in ratios), key=lambda k: ratios[k])
                why = f"{text[limiting]} (ratio {ratios[limiting]:.2f})"
            else:
                target = current
                reason = Reason.COLD_START_PENDING
                elapsed = "" if last_up is None else f", {now - last_up:.0f}s since the last scale-up"
                cs = "unknown" if cold is None else f"{cold:.0f}s"
                note = (
                    f"{why} asks for {proposed}, but {capacity.starting} replica(s) are still starting "
                    f"(cold start {cs}{elapsed}) and count as coming"
                )
        if reason is None and signal in LAGGING and "load" in ratios and target > current:
            # The modelled load does not explain the breach: a queued burst or an optimistic capacity
            # model. Add capacity one step at a time (never a jump); ColdStartPending paces the steps.
            prop_ask = max([ask(ratios[k]) for k in PROPORTIONAL if k in ratios] or [0])
            target = max(min(target, current + config.lagging_scale_up_step), min(prop_ask, target))
            step = config.lagging_scale_up_step
            note = f"{why} while the modelled load ratio is {ratios['load']:.2f}: +{step}"
            limiting = f"{signal} (stepwise)"
        if config.scale_up_stabilization_s > 0 and reason is None:
            window = [n for t, n in recs if now - t <= config.scale_up_stabilization_s + _EPS]
            target = max(current, min([*window, target]))
        # One-step sizing: a proportional signal goes where it points; the step limit is a safety bound
        # (max_scale_up_factor x ready), not the pace. Panic lifts the limit only for lagging-only fleets.
        jump = panic and signal not in PROPORTIONAL and "load" not in ratios
        step_limit = config.max_scale_up_step
        if signal in PROPORTIONAL:
            step_limit = max(step_limit, math.ceil(config.max_scale_up_factor * max(ready, 1)))
        if not jump and target > current + step_limit:
            target = current + step_limit
            limiting = "maxScaleUpStep"
            note = f"{why} asks for {proposed}; step limited to +{step_limit}"
    elif proposed < current:
        consecutive += 1
        below_since = below_since if below_since is not None else now
        window_max = max(n for t, n in recs if now - t <= config.scale_down_stabilization_s + _EPS)
        if current <= config.min_replicas:
            reason = Reason.MIN_REPLICAS_REACHED
            limiting = "minReplicas"
            note = f"{why} would allow {proposed}; bounded by minReplicas {config.min_replicas}"
        elif in_panic:
            reason = Reason.PANIC_HOLD
            note = f"{why} would allow {proposed}, but panic mode holds until t={panic_until:.0f}"
        elif consecutive < config.scale_down_consecutive:
            reason = Reason.STABILIZATION_WINDOW
            note = (
                f"{why} would allow {proposed}; {consecutive} of {config.scale_down_consecutive} "
                "consecutive below-target decisions"
            )
        elif window_max >= current:
            reason = Reason.STABILIZATION_WINDOW
            note = (
                f"{why} would allow {proposed}, but the highest recommendation in the last "
                f"{config.scale_down_stabilization_s:.0f}s window is {window_max}"
            )
        else:
            target = max(window_max, proposed, current - config.max_scale_down_step)
            if target > max(window_max, proposed):
                limiting = "maxScaleDownStep"
    else:
        consecutive, below_since = 0, None

    # 7. Bounds, in one place; then free GPUs.
    desired, bound_reason = _bound(config, target)
    if bound_reason is not None and desired == current and reason is None:
        reason = bound_reason
        limiting = "maxReplicas" if bound_reason is Reason.MAX_REPLICAS_REACHED else "minReplicas"
        note = f"{why} asks for {proposed}; bounded by {limiting} {desired}"
    elif bound_reason is not None:
        limiting = "maxReplicas" if bound_reason is Reason.MAX_REPLICAS_REACHED else "minReplicas"
    if desired > current and capacity.free_gpus is not None:
        gpr = max(capacity.gpus_per_replica, 1)
        affordable = current + capacity.free_gpus // gpr
        if desired > affordable:
            wanted = desired
            desired = max(current, affordable)
            reason = Reason.INSUFFICIENT_GPU
            limiting = "freeGPUs"
            note = (
                f"{why} asks for {wanted} replicas ({wanted - current} more x {gpr} GPU), "
                f"but only {capacity.free_gpus} GPU(s) are free"
            )

    # Reason and message.
    final: Reason
    if desired > current:
        final = reason if reason is Reason.INSUFFICIENT_GPU else Reason.SCALED_UP
        extra = " [panic]" if panic else ""
        message = f"scaling up {current} -> {desired}{extra}: {why}"
        if final is Reason.INSUFFICIENT_GPU or limiting in ("maxScaleUpStep", "maxReplicas"):
            message += f" ({note or limiting})"
    elif desired < current:
        final = Reason.SCALED_DOWN
        stab = config.scale_down_stabilization_s
        message = (
            f"scaling down {current} -> {desired}: {why}; below target for "
            f"{now - (below_since if below_since is not None else now):.0f}s, {consecutive} consecutive "
            f"decisions, highest recommendation in the {stab:.0f}s window {max(n for _, n in recs)}"
        )
    else:
        if reason is None:
            if abs(worst - 1.0) <= config.tolerance:
                reason = Reason.WITHIN_TOLERANCE
                note = f"{why} is within tolerance {config.tolerance:.0%}"
            else:
                reason = Reason.NO_CHANGE
                note = f"{why}"
        final = reason
        message = f"holding at {current}: {note}"
    if sick:
        message += "; degraded: " + ", ".join(s.replica for s in sick)

    changed = desired != current
    new_state = AutoscalerState(
        recommendations=recs,
        below_target_since=below_since,
        consecutive_below=0 if desired < current else consecutive,
        last_scale_time=now if changed else state.last_scale_time,
        last_scale_up_time=now if desired > current else state.last_scale_up_time,
        panic_until=panic_until if in_panic else None,
        load_history=history,
        demand_history=demand,
        queue_history=queue,
        miss_average=reserve.miss_average if reserve else state.miss_average,
        headroom_feedback=reserve.feedback if reserve else state.headroom_feedback,
        headroom_factor=state.headroom_factor,
        last_decision_time=now,
    )
    if reserve is not None and material_change(state.headroom_factor, reserve.headroom.factor):
        new_state = new_state.evolve(headroom_factor=reserve.headroom.factor)
    return ScalingDecision(
        desired=desired,
        proposed=proposed,
        current=current,
        reason=final,
        message=message,
        limiting_factor=limiting,
        ratios=ratios,
        metrics_available=True,
        state=new_state,
        sick_replicas=sick,
        advice=advice,
        panic=panic,
        headroom=reserve.headroom if reserve else None,
        demand=work_now,
    )
