"""The scaling signals: each observation turned into a ratio to its target, and the demand estimates
behind the proportional ``load`` signal (served work, unserved queue growth, the demand trend).

Split from :mod:`tidal.scaling.algorithm` so that the decision pipeline (freshness, tolerance,
stabilisation, bounds) and the signal arithmetic each stay readable and under the module size limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tidal.scaling import headroom as hr
from tidal.scaling.types import AutoscalerState, CapacityView, FleetObservation, ScalingConfig

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
    reserve: float = 0.0,
    backlog: float = 0.0,
) -> tuple[dict[str, float], dict[str, str]]:
    """Ratio of each available signal to its target, and a human description of each.

    ``reserve`` (replicas of work: base demand x headroom, :mod:`tidal.scaling.headroom`) is a floor under
    the ``load`` signal's work; ``backlog`` (replicas of work) is added on top: the queue that arrivals
    during the lead time build up beyond the ready fleet, to be drained once the replicas arrive."""
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
        sized = max(work + trend_extra, reserve) + backlog
        if reserve > work + trend_extra:
            trend += f", headroom reserve {reserve:.2f}"
        if backlog > 0:
            trend += f", lead-time backlog +{backlog:.2f}"
        ratios["load"] = sized / (n * config.target_utilization)
        queue = f"queue +{waiting_growth:.1f}/s" if waiting_growth and waiting_growth > 0 else "backlog"
        text["load"] = (
            f"load {work:.2f} replicas of work ({obs.prompt_token_rate:.0f} prompt + "
            f"{obs.generation_token_rate:.0f} generated tok/s, {queue} {unserved:.2f}{trend}) "
            f"on {ready} ready at target utilisation {config.target_utilization:.0%}"
        )
    return ratios, text


@dataclass(frozen=True)
class Reserve:
    """The attainment-targeted part of the ``load`` signal for one decision."""

    headroom: hr.Headroom
    reserve: float
    """Replicas of work to provision for: base demand x headroom, capped
    (:func:`tidal.scaling.headroom.reserve`)."""
    backlog: float
    """Replicas of work added to drain what arrivals beyond the fleet queue up during one lead time."""
    miss_average: float | None
    feedback: float


def queue_building(config: ScalingConfig, obs: FleetObservation, capacity: CapacityView) -> bool:
    """Whether more requests wait than the ready fleet's saturation limit (``queuePerReplica`` each)."""
    return (obs.waiting or 0.0) > max(capacity.ready, 1) * (config.queue_per_replica or SATURATED_QUEUE)


def settled(config: ScalingConfig, obs: FleetObservation, capacity: CapacityView) -> bool:
    """Whether the fleet is settled: nothing starting, something ready, no queue building beyond the
    saturation limit. Only a settled fleet's misses feed the headroom back and only its steps calibrate the
    capacity model: while replicas are on their way, both are the lead time's."""
    return capacity.starting == 0 and capacity.ready > 0 and not queue_building(config, obs, capacity)


def plan_reserve(
    config: ScalingConfig,
    obs: FleetObservation,
    capacity: CapacityView,
    state: AutoscalerState,
    history: Sequence[tuple[float, float]],
    work_now: float,
    unserved: float,
    now: float,
) -> Reserve:
    """Headroom from the demand ``history`` (which ends with ``(now, work_now)``), the attainment feedback,
    and the lead-time backlog.

    The backlog: demand the ready fleet does not serve (``unserved``, replicas of work) queues up for one
    lead time until the replicas asked for now are ready; drained over one more lead time it needs
    ``unserved`` more replicas of work for that long, so one decision asks for them too instead of finding
    out a cold start later."""
    lead = hr.lead_time(capacity.cold_start_s, config.detection_delay_s, config.cold_start_s or 0.0)
    dt = now - state.last_decision_time if state.last_decision_time is not None else 0.0
    miss, fb = state.miss_average, state.headroom_feedback
    if settled(config, obs, capacity):
        # Only a settled fleet (nothing starting, no queue building) is judged: misses while replicas are
        # on their way are the lead time's, which the history quantile sizes; feeding them back would keep
        # the headroom raised long after a one-off surge.
        miss = hr.miss_average(state.miss_average, obs.slo_attainment, dt)
        fb = hr.feedback(state.headroom_feedback, miss, config.slo_attainment)
    room = hr.headroom(
        history,
        lead,
        config.slo_attainment,
        config.headroom_prior,
        config.headroom_base_window_s,
        fb,
        config.target_utilization,
        config.headroom_max,
    )
    return Reserve(room, hr.reserve(room), max(0.0, unserved), miss, fb)
