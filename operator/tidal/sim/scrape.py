"""The simulated Prometheus: the fleet's metric series over the last window, and the
:class:`~tidal.scaling.types.FleetObservation` a scrape builds from them, as the operator builds it from
vLLM's metrics (gauges now, rates over the window, p95s the way ``histogram_quantile`` computes them from
vLLM's histogram buckets, per fleet and per replica).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Sequence

from tidal.scaling.types import FleetObservation, ReplicaStats
from tidal.sim.engine import ReplicaEngine

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
QUEUE_BUCKETS = TTFT_BUCKETS


def histogram_quantile(q: float, values: Sequence[float], buckets: Sequence[float]) -> float | None:
    """Prometheus ``histogram_quantile`` over observations bucketed with upper bounds ``buckets``."""
    if not values:
        return None
    counts = [0] * (len(buckets) + 1)
    for v in values:
        counts[bisect_left(buckets, v)] += 1
    rank = q * len(values)
    cum = 0
    for i, c in enumerate(counts):
        if cum + c >= rank and c > 0:
            if i == len(buckets):
                return buckets[-1]
            lo = buckets[i - 1] if i > 0 else 0.0
            return lo + (buckets[i] - lo) * (rank - cum) / c
        cum += c
    return buckets[-1]


def window_attainment(
    ttft: Sequence[tuple[float, float, int]],
    tpot: Sequence[tuple[float, float, int]],
    t_ttft: float,
    t_tpot: float,
) -> float | None:
    """SLO attainment over the window as the operator reads it from the vLLM histograms: 1 minus the TTFT
    and the TPOT miss fractions (a lower bound on the joint; ``None`` without samples)."""
    if not ttft and not tpot:
        return None
    miss_ttft = sum(v > t_ttft for _, v, _ in ttft) / len(ttft) if ttft else 0.0
    miss_tpot = sum(v > t_tpot for _, v, _ in tpot) / len(tpot) if tpot else 0.0
    return max(0.0, 1.0 - miss_ttft - miss_tpot)


class MetricWindows:
    """The series a scrape reads: first tokens, finishes and queue times inside the window, the counters'
    samples for rates, and the finished requests so far."""

    def __init__(self, window_s: float, slo_ttft_s: float, slo_tpot_s: float):
        self.window_s, self.slo_ttft_s, self.slo_tpot_s = window_s, slo_ttft_s, slo_tpot_s
        self.ttft: deque[tuple[float, float, int]] = deque()
        self.tpot: deque[tuple[float, float, int]] = deque()
        self.queue: deque[tuple[float, float]] = deque()
        self.counters: deque[tuple[float, float, float, float, float, float]] = deque()
        self.finished = 0
        self.end_time = 0.0
        """The last finish seen."""

    def collect(self, eng: ReplicaEngine) -> None:
        """Take the first tokens and finishes of ``eng``'s last step."""
        for req in eng.first_tokens:
            self.ttft.append((req.first_token, req.ttft, eng.rid))
            self.queue.append((req.first_token, req.admitted - req.arrival))
        eng.first_tokens.clear()
        for req in eng.finished:
            self.tpot.append((req.finish, req.tpot, eng.rid))
            self.finished += 1
            self.end_time = max(self.end_time, req.finish)
        eng.finished.clear()

    def scrape(
        self,
        now: float,
        engines: Sequence[ReplicaEngine],
        live: Sequence[ReplicaEngine],
        gateway: int,
        arrived: int,
    ) -> tuple[FleetObservation, float]:
        """The observation at ``now`` (``engines``: every replica's, for the counters; ``live``: the ready
        and draining ones; ``gateway``: requests held for want of a ready replica) and the arrival rate."""
        w = self.window_s
        ttft_obs, tpot_obs, queue_obs, counters = self.ttft, self.tpot, self.queue, self.counters
        for dq in (ttft_obs, tpot_obs):
            while dq and dq[0][0] < now - w:
                dq.popleft()
        while queue_obs and queue_obs[0][0] < now - w:
            queue_obs.popleft()
        prompt_total = sum(e.prompt_tokens_total for e in engines)
        gen_total = sum(e.generation_tokens_total for e in engines)
        pre_total = sum(e.preemptions_total for e in engines)
        finished_reqs = self.finished
        counters.append((now, prompt_total, gen_total, pre_total, float(arrived), float(finished_reqs)))
        while len(counters) > 1 and counters[0][0] < now - w - 1e-9:
            counters.popleft()
        t0, p0, g0, e0, a0, f0 = counters[0]
        span = now - t0

        def rate(x0: float, x1: float) -> float:
            return (x1 - x0) / span if span > 0 else 0.0

        per_ttft: dict[int, list[float]] = {}
        per_tpot: dict[int, list[float]] = {}
        for _, v, rid in ttft_obs:
            per_ttft.setdefault(rid, []).append(v)
        for _, v, rid in tpot_obs:
            per_tpot.setdefault(rid, []).append(v)
        stats = tuple(
            ReplicaStats(
                replica=f"r{e.rid}",
                ttft_p95=histogram_quantile(0.95, per_ttft.get(e.rid, []), TTFT_BUCKETS),
                tpot_p95=histogram_quantile(0.95, per_tpot.get(e.rid, []), TPOT_BUCKETS),
                running=float(len(e.running)),
                waiting=float(len(e.waiting)),
                kv_cache_usage=e.kv_usage(),
            )
            for e in live
        )
        obs = FleetObservation(
            time=now,
            ttft_p95=histogram_quantile(0.95, [v for _, v, _ in ttft_obs], TTFT_BUCKETS),
            tpot_p95=histogram_quantile(0.95, [v for _, v, _ in tpot_obs], TPOT_BUCKETS),
            queue_time_p95=histogram_quantile(0.95, [v for _, v in queue_obs], QUEUE_BUCKETS),
            waiting=float(sum(len(e.waiting) for e in live) + gateway),
            running=float(sum(len(e.running) for e in live)),
            kv_cache_usage=(sum(s.kv_cache_usage or 0.0 for s in stats) / len(stats)) if stats else None,
            preemption_rate=rate(e0, pre_total),
            request_rate=rate(f0, finished_reqs),  # rate(vllm:request_success_total), as the operator reads
            prompt_token_rate=rate(p0, prompt_total),
            generation_token_rate=rate(g0, gen_total),
            gpu_util=None,
            slo_attainment=window_attainment(ttft_obs, tpot_obs, self.slo_ttft_s, self.slo_tpot_s),
            replicas=stats,
        )
        return obs, rate(a0, arrived)
