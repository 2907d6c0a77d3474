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

from tidal.scaling.detection import detect_sick_replicas, engine_advice, exclude_sick
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


def load_work(
    config: ScalingConfig, obs: FleetObservation, waiting_growth: float | None = None
) -> tuple[float, float]:
    """Replicas' worth of work: served token rates over the modelled per-replica capacity, plus the
    demand the fleet does not serve. Returns (total, unserved part).

    Served rates saturate under overload; the excess shows in the waiting queue. With ``waiting_growth``
    (requests/s by which the queue grows, fitted over ``queue_growth_window_s``) the unserved demand is
    that growth times the work per request: a flow, which stops growing once the fleet (with the
    replicas it already asked for) matches the demand. Without it (a lone observation) the backlog
    drained over ``backlog_drain_s`` stands in. The stock of waiting requests is not sized for when the
    growth is known: requests already queued on a replica stay there (vLLM does not migrate them), so
    new replicas only take new arrivals, and a stock counted again at every decision while replicas
    start would ask for more and more of them."""
    pc, dc = config.prefill_tokens_per_replica_s or 1.0, config.decode_tokens_per_replica_s or 1.0
    served = (obs.prompt_token_rate or 0.0) / pc + (obs.generation_token_rate or 0.0) / dc
    unserved = 0.0
    per_request = served / obs.request_rate if obs.request_rate else 0.0
    if waiting_growth is not None:
        unserved = max(0.0, waiting_growth) * per_request
    elif obs.waiting:
        unserved = obs.waiting * per_request / config.backlog_drain_s
    return served + unserved, unserved


def waiting_growth(history: tuple[tuple[float, float], ...]) -> float:
    """Least-squares slope of the waiting requests over the samples (requests/s; 0 with fewer than 2)."""
    if len(history) < 2:
        return 0.0
    n = len(history)
    mt = sum(t for t, _ in history) / n
    mq = sum(q for _, q in history) / n
    var = sum((t - mt) ** 2 for t, _ in history)
    if var <= 0:
        return 0.0
    return sum((t - mt) * (q - mq) for t, q in history) / var


TREND_MIN_T = 3.0
"""The demand slope must be this many standard errors above zero to be extrapolated: a fitted slope
over a window of noisy rate samples is almost never exactly zero, and extrapolating noise over a cold
start adds replicas for nothing."""
SATURATED_QUEUE = 5.0
"""Waiting requests per ready replica above which the fleet counts as saturated for the demand trend
(when ``queue_per_replica`` is not set)."""
TREND_MAX_GROWTH = 0.5
"""At most this fraction of the current work is added for the expected growth."""


def demand_growth(config: ScalingConfig, history: tuple[tuple[float, float], ...]) -> float:
    """Relative growth of the demand expected over one cold start (0 when there is no clear rise).

    Fitted to the prompt-token rate, not to the work: prompt tokens are counted when requests are
    prefilled, close to their arrival, while the generated-token rate lags the demand by the length
    of a generation (it climbs for a while after any start or step while batches fill), so a slope of
    the work extrapolates the pipeline filling up rather than the traffic."""
    cold = config.cold_start_s
    if len(history) < 4 or not cold:
        return 0.0
    if history[-1][0] - history[0][0] < 0.75 * config.trend_window_s:
        return 0.0  # not enough history yet (fresh start): no extrapolation
    if history[0][1] < 0.25 * history[-1][1]:
        return 0.0  # the window starts from (near) no traffic: a start-up, not a trend to extrapolate
    n = len(history)
    ts = [t for t, _ in history]
    ds = [d for _, d in history]
    mt, md = sum(ts) / n, sum(ds) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0 or md <= 0:
        return 0.0
    slope = sum((t - mt) * (d - md) for t, d in zip(ts, ds, strict=True)) / var
    resid = sum((d - md - slope * (t - mt)) ** 2 for t, d in zip(ts, ds, strict=True))
    se = math.sqrt(resid / (n - 2) / var)
    if slope <= 0 or slope < TREND_MIN_T * se:
        return 0.0
    level = md + slope * (ts[-1] - mt)  # the fitted demand now
    return min(TREND_MAX_GROWTH, slope * cold / max(level, _EPS))


def signal_ratios(
    config: ScalingConfig,
    obs: FleetObservation,
    ready: int,
    trend_extra: float = 0.0,
    waiting_growth: float | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Ratio of each available signal to its target, and a human description of each."""
    n = max(ready, 1)
    ratios: dict[str, float] = {}
    text: dict[str, str] = {}
    if config.ttft_p95_s and obs.ttft_p95 is not None:
        ratios["ttft"] = obs.ttft_p95 / config.ttft_p95_s
        text["ttft"] = f"ttft_p95 {obs.ttft_p95:.2f}s vs target {config.ttft_p95_s:.2f}s"
    if config.tpot_p95_s and obs.tpot_p95 is not None:
        ratios["tpot"] = obs.tpot_p95 / config.tpot_p95_s
        text["tpot"] = f"tpot_p95 {obs.tpot_p95 * 1000:.0f}ms vs target {config.tpot_p95_s * 1000:.0f}ms"
    if config.queue_per_replica and obs.waiting is not None:
        per = obs.waiting / n
        ratios["queue"] = per / config.queue_per_replica
        text["queue"] = f"{per:.1f} waiting requests per replica vs target {config.queue_per_replica:g}"
    if config.kv_cache_usage and obs.kv_cache_usage is not None:
        ratios["kv"] = obs.kv_cache_usage / config.kv_cache_usage
        text["kv"] = f"kv_cache_usage {obs.kv_cache_usage:.0%} vs target {config.kv_cache_usage:.0%}"
    if (
        config.prefill_tokens_per_replica_s
        and config.decode_tokens_per_replica_s
        and obs.prompt_token_rate is not None
        and obs.generation_token_rate is not None
    ):
        work, unserved = load_work(config, obs, waiting_growth)
        trend = f", trend +{trend_extra:.2f}" if trend_extra > 0 else ""
        ratios["load"] = (work + trend_extra) / (n * config.target_utilization)
        queue = f"queue +{waiting_growth:.1f}/s" if waiting_growth and waiting_growth > 0 else "backlog"
        text["load"] = (
            f"load {work:.2f} replicas of work ({obs.prompt_token_rate:.0f} prompt + "
            f"{obs.generation_token_rate:.0f} generated tok/s, {queue} {unserved:.2f}{trend}) "
            f"on {ready} ready at target utilisation {config.target_utilization:.0%}"
        )
    return ratios, text


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
) -> ScalingDecision:
    """Desired replicas for one deployment, with the reason and the numbers behind it."""
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
    if (
        config.prefill_tokens_per_replica_s
        and config.decode_tokens_per_replica_s
        and healthy_obs.prompt_token_rate is not None
    ):
        if healthy_obs.waiting is not None:
            qw = config.queue_growth_window_s
            queue = (*((t, q) for t, q in queue if now - t <= qw + _EPS), (now, healthy_obs.waiting))
        growth = waiting_growth(queue)
        work_now, _ = load_work(config, healthy_obs, growth)
        keep = config.trend_window_s
        history = (*((t, w) for t, w in history if now - t <= keep), (now, work_now))
        if (healthy_obs.waiting or 0.0) > max(ready, 1) * (config.queue_per_replica or SATURATED_QUEUE):
            # A queue is building: the served prompt rate follows the capacity, not the demand (it jumps
            # when new replicas arrive). Start the demand history afresh once the fleet keeps up.
            demand = ()
        else:
            demand = (*((t, d) for t, d in demand if now - t <= keep), (now, healthy_obs.prompt_token_rate))
        trend_extra = work_now * demand_growth(config, demand)
    ratios, text = signal_ratios(config, healthy_obs, ready, trend_extra, growth)
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
        jump = panic and (signal in PROPORTIONAL or "load" not in ratios)
        if not jump and target > current + config.max_scale_up_step:
            target = current + config.max_scale_up_step
            limiting = "maxScaleUpStep"
            note = f"{why} asks for {proposed}; step limited to +{config.max_scale_up_step}"
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
    )
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
    )
