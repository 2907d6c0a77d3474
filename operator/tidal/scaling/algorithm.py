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

from collections.abc import Sequence
from dataclasses import dataclass

from tidal.scaling import calibration
from tidal.scaling.detection import detect_sick_replicas, engine_advice, exclude_sick
from tidal.scaling.headroom import material_change
from tidal.scaling.signals import (
    Reserve,
    demand_growth,
    load_work,
    plan_reserve,
    queue_building,
    settled,
    signal_ratios,
    waiting_growth,
)
from tidal.scaling.stages import EPS, Step, apply_limits, ask, bound, explain, scale_down, scale_up
from tidal.scaling.types import (
    AutoscalerState,
    CapacityView,
    EngineAdvice,
    FleetObservation,
    Reason,
    ScalingConfig,
    ScalingDecision,
    SickReplica,
)


def _prune(recs: tuple[tuple[float, int], ...], now: float, horizon: float) -> tuple[tuple[float, int], ...]:
    return tuple((t, n) for t, n in recs if now - t <= horizon + EPS)


def _hold(
    config: ScalingConfig,
    capacity: CapacityView,
    state: AutoscalerState,
    why: str,
    sick: tuple[SickReplica, ...] = (),
    advice: tuple[EngineAdvice, ...] = (),
) -> ScalingDecision:
    """Hold the current count (bounded) without metrics to act on: ``MetricsStale``, never a scale-down."""
    current = capacity.current
    held, _ = bound(config, current)
    return ScalingDecision(
        desired=held,
        proposed=current,
        current=current,
        reason=Reason.METRICS_STALE,
        message=f"holding at {held}: {why}",
        limiting_factor="metrics",
        metrics_available=False,
        state=state.evolve(consecutive_below=0, below_target_since=None),
        sick_replicas=sick,
        advice=advice,
    )


def _freshness(config: ScalingConfig, obs: FleetObservation | None, now: float) -> str | None:
    """1. Why ``obs`` cannot be acted on (none, stale or empty), None when it is fresh."""
    if obs is None or now - obs.time > config.metrics_stale_after_s or not obs.has_any_signal():
        if obs is None or not obs.has_any_signal():
            why = "no metrics"
        else:
            age, limit = now - obs.time, config.metrics_stale_after_s
            why = f"newest sample is {age:.0f}s old (stale after {limit:.0f}s)"
        return f"{why}; replicas are never scaled down on missing metrics"
    return None


@dataclass(frozen=True)
class _Signals:
    """3. What the signals stage measured besides the ratios: the histories to keep and the reserve."""

    history: tuple[tuple[float, float], ...]
    demand: tuple[tuple[float, float], ...]
    queue: tuple[tuple[float, float], ...]
    growth: float | None = None
    reserve: Reserve | None = None
    work_now: float | None = None
    trend_extra: float = 0.0


def _measure(
    config: ScalingConfig,
    obs: FleetObservation,
    capacity: CapacityView,
    state: AutoscalerState,
    now: float,
    past_demand: Sequence[tuple[float, float]],
) -> _Signals:
    """3. The load signal's inputs from the healthy replicas' ``obs``: the queue's growth, the work now, the
    headroom reserve and the demand trend (only with a capacity model and token rates)."""
    history, demand, queue = state.load_history, state.demand_history, state.queue_history
    if not (config.prefill_tokens_per_replica_s and config.decode_tokens_per_replica_s):
        return _Signals(history, demand, queue)
    if obs.prompt_token_rate is None:
        return _Signals(history, demand, queue)
    if obs.waiting is not None:
        qw = config.queue_growth_window_s
        queue = (*((t, q) for t, q in queue if now - t <= qw + EPS), (now, obs.waiting))
    growth = waiting_growth(queue)
    work_now, unserved = load_work(config, obs, growth)
    past = [(t, d) for t, d in past_demand if t < now - EPS]
    reserve = plan_reserve(config, obs, capacity, state, [*past, (now, work_now)], work_now, unserved, now)
    keep = config.trend_window_s
    history = (*((t, w) for t, w in history if now - t <= keep), (now, work_now))
    if queue_building(config, obs, capacity):
        # A queue is building: the served prompt rate follows the capacity, not the demand (it jumps
        # when new replicas arrive). Start the demand history afresh once the fleet keeps up.
        demand = ()
    else:
        demand = (*((t, d) for t, d in demand if now - t <= keep), (now, obs.prompt_token_rate))
    trend_extra = 0.0
    if config.headroom_prior <= 1.0 and not past_demand:
        trend_extra = work_now * demand_growth(config, demand)
    return _Signals(history, demand, queue, growth, reserve, work_now, trend_extra)


def _propose(config: ScalingConfig, obs: FleetObservation, capacity: CapacityView, worst: float) -> int:
    """4. The count the worst signal asks for; within tolerance the current one."""
    current, ready = capacity.current, capacity.ready
    if ready == 0:
        wants = (obs.waiting or 0) > 0 or (obs.request_rate or 0) > 0
        return max(current, 1) if wants else current
    if abs(worst - 1.0) <= config.tolerance:
        return current
    proposed = ask(ready, worst)
    if worst > 1.0:
        proposed = max(proposed, ready + 1)  # a breach always asks for at least one more
    return proposed


def _next_state(
    state: AutoscalerState,
    sig: _Signals,
    recs: tuple[tuple[float, int], ...],
    below: tuple[float | None, int],
    current: int,
    desired: int,
    panic_until: float | None,
    now: float,
) -> AutoscalerState:
    """The state the next decision starts from; ``below``: (below target since, consecutive below)."""
    reserve = sig.reserve
    new_state = AutoscalerState(
        recommendations=recs,
        below_target_since=below[0],
        consecutive_below=below[1],
        last_scale_time=now if desired != current else state.last_scale_time,
        last_scale_up_time=now if desired > current else state.last_scale_up_time,
        panic_until=panic_until,
        load_history=sig.history,
        demand_history=sig.demand,
        queue_history=sig.queue,
        miss_average=reserve.miss_average if reserve else state.miss_average,
        headroom_feedback=reserve.feedback if reserve else state.headroom_feedback,
        headroom_factor=state.headroom_factor,
        last_decision_time=now,
    )
    if reserve is not None and material_change(state.headroom_factor, reserve.headroom.factor):
        new_state = new_state.evolve(headroom_factor=reserve.headroom.factor)
    return new_state


def _calibrate(
    config: ScalingConfig, obs: FleetObservation, capacity: CapacityView, state: AutoscalerState, now: float
) -> tuple[float, tuple[tuple[float, float], ...]]:
    """The capacity scale and its samples after this observation (:mod:`tidal.scaling.calibration`):
    sampled only on a settled fleet (nothing starting, no queue building)."""
    new = calibration.sample(config, obs, capacity, settled(config, obs, capacity))
    return calibration.update(state.capacity_samples, state.capacity_scale, new, now)


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
    headroom. The stages of the module docstring are the helpers above and those of
    :mod:`tidal.scaling.stages`, in order. (Over 80 lines on purpose: the sequence of stages, each a call,
    reads top to bottom in one place; the work is in the helpers.)"""
    current, ready = capacity.current, capacity.ready
    horizon = max(config.scale_down_stabilization_s, config.scale_up_stabilization_s)
    stale = _freshness(config, obs, now)  # 1.
    if stale is not None or obs is None:
        return _hold(config, capacity, state, stale or "no metrics")
    sick = detect_sick_replicas(config, obs)  # 2.
    healthy_obs = exclude_sick(obs, sick)
    scale, scale_samples = _calibrate(config, healthy_obs, capacity, state, now)
    # Demand history is kept in the model's units (replicas of work at scale 1: the operator's Prometheus
    # query divides by the modelled capacity); the decision works in calibrated units.
    unit = min(1.0, max(calibration.SCALE_MIN, state.capacity_scale))  # bounded again: restored state
    config = calibration.calibrated(config, unit)
    past_demand = [(t, d / unit) for t, d in past_demand] if unit < 1.0 else past_demand
    advice = engine_advice(config, healthy_obs, ready)
    sig = _measure(config, healthy_obs, capacity, state, now, past_demand)  # 3.
    reserve = sig.reserve
    ratios, text = signal_ratios(
        config,
        healthy_obs,
        ready,
        sig.trend_extra,
        sig.growth,
        reserve.reserve if reserve else 0.0,
        reserve.backlog if reserve else 0.0,
    )
    recs = state.recommendations or ((now, bound(config, current)[0]),)  # a fresh start holds a full window
    if not ratios:
        return _hold(config, capacity, state, "none of the target signals is reported", sick, advice)
    signal = max(ratios, key=lambda k: (ratios[k], k))
    worst = ratios[signal]
    proposed = _propose(config, obs, capacity, worst)  # 4.
    panic = worst >= config.panic_threshold and ready > 0
    panic_until = now + config.panic_window_s if panic else state.panic_until
    in_panic = panic_until is not None and now < panic_until
    recs = _prune((*recs, (now, bound(config, proposed)[0])), now, horizon)
    step = Step(target=current, limiting=signal, why=f"{text[signal]} (ratio {worst:.2f})")
    consecutive, below_since = state.consecutive_below, state.below_target_since
    if proposed > current:  # 5.
        consecutive, below_since = 0, None
        scale_up(config, capacity, state, now, step, ratios, text, proposed, recs, panic)
    elif proposed < current:  # 6.
        consecutive += 1
        below_since = below_since if below_since is not None else now
        scale_down(config, current, now, step, proposed, recs, consecutive, panic_until)
    else:
        consecutive, below_since = 0, None
    desired = apply_limits(config, capacity, step, proposed)  # 7.
    below_for = now - (below_since if below_since is not None else now)
    final, message = explain(
        config, current, desired, step, worst, panic, (below_for, consecutive, max(n for _, n in recs))
    )
    if sick:
        message += "; degraded: " + ", ".join(s.replica for s in sick)
    if signal == "load":
        message += calibration.describe(state.capacity_scale)
    below = (below_since, 0 if desired < current else consecutive)
    new_state = _next_state(state, sig, recs, below, current, desired, panic_until if in_panic else None, now)
    new_state = new_state.evolve(capacity_scale=scale, capacity_samples=scale_samples)
    return ScalingDecision(
        desired=desired,
        proposed=proposed,
        current=current,
        reason=final,
        message=message,
        limiting_factor=step.limiting,
        ratios=ratios,
        metrics_available=True,
        state=new_state,
        sick_replicas=sick,
        advice=advice,
        panic=panic,
        headroom=reserve.headroom if reserve else None,
        demand=None if sig.work_now is None else sig.work_now * unit,
    )
