"""The clairvoyant reference: a schedule that knows the whole trace and the cold start, verified to reach
the SLO-attainment target.

Why it exists: the old "oracle" provisioned each minute for that minute's mean rate and was taken as a
lower bound; on a diurnal trace with flash crowds it reached 88 % (issue 14), so it anchored nothing. A
reference must reach the target it anchors. This one:

1. starts from the perfect-foresight need per 60 s interval, ``ceil(rate_i / μ)`` with ``μ`` the TRUE
   per-replica capacity (measured on the simulated engine, capacity error included), each replica
   created one cold start ahead of the interval that needs it (:func:`ahead`);
2. replays the trace against that schedule, finds the intervals whose arrivals missed the SLO more
   often than the target allows, adds replicas there (and in the interval before: a backlog starts
   before its requests fail), and replays again, until the attainment reaches the target or
   ``max_rounds`` is spent.

It knows the future, so it is a reference for what foresight buys, not a lower bound on cost (a policy
may undercut it by spending the whole error budget). :class:`ClairvoyantResult` says whether the target
was met; callers report it when it was not instead of hiding it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from tidal.sim.baselines import SchedulePolicy
from tidal.sim.fleet import PolicyResult, SimConfig, simulate
from tidal.sim.traces import Trace

INTERVAL_S = 60.0
MAX_ROUNDS = 6


@dataclass
class ClairvoyantResult:
    """The verified schedule, its run, and how many replays it took."""

    schedule: list[tuple[float, int]]
    result: PolicyResult
    rounds: int
    met: bool


def initial_need(
    trace: Trace, capacity_rps: float, min_replicas: int = 1, interval_s: float = INTERVAL_S
) -> list[int]:
    """Replicas each interval needs at its mean rate and the true capacity ``capacity_rps``."""
    rates = trace.rate_series(interval_s)
    return [max(min_replicas, math.ceil(float(r) / capacity_rps - 1e-9)) for r in rates]


def ahead(
    need: Sequence[int], cold_start_s: float, interval_s: float = INTERVAL_S, resolution_s: float = 5.0
) -> list[tuple[float, int]]:
    """(time, replicas) steps holding, at each time, the largest need of the intervals that start
    within one cold start from then: a replica is created a cold start before it is needed."""
    if not need:
        raise ValueError("empty need")
    out: list[tuple[float, int]] = []
    end = len(need) * interval_s
    t = 0.0
    while t <= end:
        first = min(int(t // interval_s), len(need) - 1)
        last = min(int((t + cold_start_s) // interval_s), len(need) - 1)
        n = max(need[first : last + 1])
        if not out or out[-1][1] != n:
            out.append((t, n))
        t += resolution_s
    return out


def repair(
    need: list[int],
    log: Sequence[tuple[float, float, float, float, int]],
    cfg: SimConfig,
    target: float,
    max_replicas: int,
    interval_s: float = INTERVAL_S,
) -> list[int]:
    """More replicas where arrivals missed the SLO more often than ``1 - target`` allows."""
    bins = len(need)
    total = [0] * bins
    bad = [0] * bins
    for arrival, ttft, tpot, _, _ in log:
        i = min(int(arrival // interval_s), bins - 1)
        total[i] += 1
        if ttft > cfg.slo_ttft_s or tpot > cfg.slo_tpot_s:
            bad[i] += 1
    out = list(need)
    for i in range(bins):
        if total[i] and bad[i] / total[i] > 1 - target:
            for j in (i - 1, i):
                if j >= 0:
                    out[j] = min(max_replicas, max(out[j], need[j] + max(1, math.ceil(0.25 * need[j]))))
    return out


def clairvoyant(
    trace: Trace,
    cfg: SimConfig,
    capacity_rps: float,
    target: float = 0.99,
    min_replicas: int = 1,
    max_replicas: int = 64,
    max_rounds: int = MAX_ROUNDS,
    progress: Callable[[float], None] | None = None,
) -> ClairvoyantResult:
    """Build, replay and repair the schedule until it reaches ``target`` (see the module docstring)."""
    need = initial_need(trace, capacity_rps, min_replicas)
    need = [min(n, max_replicas) for n in need]
    run_cfg = replace(cfg, record_requests=True)
    for rounds in range(1, max_rounds + 1):
        schedule = ahead(need, cfg.cold_start_s)
        policy = SchedulePolicy(schedule, name="clairvoyant")
        res = simulate(trace, policy, replace(run_cfg, initial_replicas=schedule[0][1]), progress)
        met = res.slo_attainment >= target
        fixed = repair(need, res.request_log or [], cfg, target, max_replicas) if not met else need
        if met or rounds == max_rounds or fixed == need:
            res.request_log = None
            return ClairvoyantResult(schedule, res, rounds, met)
        need = fixed
    raise AssertionError("unreachable")


def replicas_at(schedule: Sequence[tuple[float, int]], times: Sequence[float]) -> list[int]:
    """The schedule's replica count at each of ``times`` (for plots and reaction-time measures)."""
    starts = np.array([t for t, _ in schedule])
    idx = np.searchsorted(starts, np.asarray(times, dtype=np.float64), side="right") - 1
    return [schedule[max(0, int(i))][1] for i in idx]
