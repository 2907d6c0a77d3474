"""A fleet of simulated replicas in virtual time, driven by a scaling policy's own code.

Event loop over: trace arrivals (routed by a least-outstanding-requests load balancer to ready,
non-draining replicas; held at the gateway when none is ready), engine step ends, replicas becoming
ready after the cold start, metric scrapes (every ``scrape_interval_s``) and the policy's decisions
(every ``policy.sync_period_s``, from the end of the first metrics window). A scrape produces the same
:class:`FleetObservation` the operator builds from Prometheus: gauges now, rates over ``window_s``, and
p95s computed the way ``histogram_quantile`` does from vLLM's histogram buckets, per fleet and per
replica. The policy's decision is applied at once: scale-up creates replicas that become ready after
``cold_start_s``; scale-down cancels starting replicas first, then drains the least-loaded ready ones
(no new requests, in-flight ones finish, then the GPUs are released). GPU time is charged from
creation to release.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tidal.scaling.policies import ScalingPolicy
from tidal.scaling.types import CapacityView, FleetObservation, ReplicaStats
from tidal.sim.engine import ReplicaEngine, Request
from tidal.sim.stepmodel import EngineLimits, StepTimeModel, engine_model
from tidal.sim.traces import Trace

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
QUEUE_BUCKETS = TTFT_BUCKETS

STARTING, READY, DRAINING, GONE = "Starting", "Ready", "Draining", "Gone"
FLAP_WINDOW_S = 300.0


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


@dataclass
class SimConfig:
    """Everything about the simulated fleet except the trace and the policy."""

    model: StepTimeModel
    """The NOMINAL step model: what the policies are given (their capacity model). The simulated engine
    runs ``engine_model(model, capacity_error)``."""
    limits: EngineLimits = field(default_factory=EngineLimits)
    slo_ttft_s: float = 2.0
    slo_tpot_s: float = 0.1
    cold_start_s: float = 90.0
    scrape_interval_s: float = 5.0
    window_s: float = 30.0
    gpus_per_replica: int = 1
    cluster_gpus: int = 1024
    initial_replicas: int = 1
    macro_horizon_s: float = 0.05
    drain_tail_s: float = 900.0
    record_steps: bool = False
    request_overhead_s: float = 0.0
    """Time from a request's arrival until its engine sees it (HTTP, tokenisation, the API process):
    part of its TTFT, not of any engine step."""
    record_requests: bool = False
    """Keep every request's (arrival, TTFT, TPOT, finish, output tokens) in ``PolicyResult.request_log``."""
    capacity_error: float = 0.0
    """How wrong the policies' capacity model is: the simulated engine is ``1 + capacity_error`` times as
    fast as ``model`` (-0.3: it serves 30 % less than the policies are told). Policies keep ``model``."""

    def __post_init__(self) -> None:
        if not -0.9 <= self.capacity_error <= 9.0:
            raise ValueError(f"capacity_error must be within [-0.9, 9], got {self.capacity_error}")

    @property
    def engine(self) -> StepTimeModel:
        """The step model the simulated engine times its steps with."""
        return engine_model(self.model, self.capacity_error)


@dataclass
class Replica:
    """One replica's lifecycle around its engine."""

    engine: ReplicaEngine
    state: str
    created: float
    ready_at: float
    released: float = -1.0
    stepping: bool = False


@dataclass
class Sample:
    """One point of the timeline (taken at every scrape) for plots."""

    time: float
    request_rate: float
    """Arrivals per second over the window (the offered load, for plots)."""
    ready: int
    total: int
    ttft_p95: float | None


@dataclass
class PolicyResult:
    """What one policy did on one trace."""

    policy: str
    gpu_hours: float
    slo_attainment: float
    p95_ttft_seconds: float
    p95_tpot_seconds: float
    scale_events: int
    flaps_per_hour: float
    requests: int
    preemptions: int
    duration_s: float
    reasons: dict[str, int]
    timeline: list[Sample]
    events: list[tuple[float, int, int, str]]
    """(time, from, to, reason) of every change."""
    steps: list[tuple[int, int, int, int, float]] | None = None
    request_log: list[tuple[float, float, float, float, int]] | None = None
    """(arrival, TTFT, TPOT, finish, output tokens) of each finished request, with ``record_requests``."""
    headroom: list[tuple[float, float]] | None = None
    """(time, headroom) after each decision, for a policy exposing a numeric ``headroom`` attribute
    (the replicas it keeps beyond the demand it measures); None otherwise."""

    def summary(self) -> dict[str, float | int | str]:
        return {
            "policy": self.policy,
            "gpu_hours": round(self.gpu_hours, 4),
            "slo_attainment": round(self.slo_attainment, 5),
            "p95_ttft_seconds": round(self.p95_ttft_seconds, 4),
            "p95_tpot_seconds": round(self.p95_tpot_seconds, 4),
            "scale_events": self.scale_events,
            "flaps_per_hour": round(self.flaps_per_hour, 3),
        }


def simulate(
    trace: Trace,
    policy: ScalingPolicy,
    cfg: SimConfig,
    progress: Callable[[float], None] | None = None,
) -> PolicyResult:
    """Replay ``trace`` against ``policy`` on a simulated fleet; deterministic for a given input."""
    lim = cfg.limits
    max_prompt = max(1, lim.kv_cache_tokens // 2)
    arrivals = trace.arrivals
    prompts = np.minimum(trace.prompt, max_prompt)
    outputs = np.minimum(trace.output, max(1, lim.kv_cache_tokens // 4))
    n_req = int(arrivals.size)
    requests: list[Request] = []
    replicas: list[Replica] = []
    gateway: deque[Request] = deque()
    events: list[tuple[float, int, int, int]] = []  # (time, seq, kind, replica)
    seq = 0
    STEP, READY_EV, SCRAPE, DECIDE = 0, 1, 2, 3

    def push(t: float, kind: int, rid: int = -1) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, rid))

    true_model = cfg.engine

    def new_replica(now: float, ready: bool) -> None:
        eng = ReplicaEngine(len(replicas), true_model, lim, cfg.record_steps)
        r = Replica(eng, READY if ready else STARTING, now, now if ready else now + cfg.cold_start_s)
        replicas.append(r)
        if not ready:
            push(r.ready_at, READY_EV, eng.rid)

    for _ in range(cfg.initial_replicas):
        new_replica(0.0, True)

    ready_list: list[Replica] = [r for r in replicas if r.state == READY]

    def refresh_ready() -> None:
        nonlocal ready_list
        ready_list = [r for r in replicas if r.state == READY]

    next_scrape = 0.0
    # A policy fed at a finer metric cadence than the fleet's scrape interval (Knative: every second)
    # gets its own: the simulated Prometheus scrapes as often as the policy's metric pipeline does.
    scrape_every = min(cfg.scrape_interval_s, float(getattr(policy, "metric_interval_s", math.inf)))

    def kick(r: Replica, now: float) -> None:
        if not r.stepping and r.engine.has_work():
            r.stepping = True
            # A macro step (a stretch of pure decode) must not run past the next arrival: the engine
            # would see that request at its next step boundary, so must the simulator (else the
            # request waits up to a whole macro horizon, a TTFT tail the real engine does not have).
            t_next = float(arrivals[i]) + cfg.request_overhead_s if i < n_req else math.inf
            end = r.engine.step(now, min(next_scrape, t_next, now + cfg.macro_horizon_s))
            push(end, STEP, r.engine.rid)

    def route(req: Request, now: float) -> None:
        if not ready_list:
            gateway.append(req)
            return
        best = min(ready_list, key=lambda x: (x.engine.outstanding(), x.engine.rid))
        best.engine.add(req)
        kick(best, now)

    # Metric windows.
    ttft_obs: deque[tuple[float, float, int]] = deque()
    tpot_obs: deque[tuple[float, float, int]] = deque()
    queue_obs: deque[tuple[float, float]] = deque()
    counters: deque[tuple[float, float, float, float, float, float]] = deque()
    arrived = 0
    latest_obs: FleetObservation | None = None
    timeline: list[Sample] = []
    decision_events: list[tuple[float, int, int, str]] = []
    reasons: dict[str, int] = {}
    headroom: list[tuple[float, float]] = []
    finished_reqs = 0
    end_time = 0.0

    def collect(r: Replica) -> None:
        nonlocal finished_reqs, end_time
        eng = r.engine
        for req in eng.first_tokens:
            ttft_obs.append((req.first_token, req.ttft, eng.rid))
            queue_obs.append((req.first_token, req.admitted - req.arrival))
        eng.first_tokens.clear()
        for req in eng.finished:
            tpot_obs.append((req.finish, req.tpot, eng.rid))
            finished_reqs += 1
            end_time = max(end_time, req.finish)
        eng.finished.clear()

    def scrape(now: float) -> FleetObservation:
        w = cfg.window_s
        for dq in (ttft_obs, tpot_obs):
            while dq and dq[0][0] < now - w:
                dq.popleft()
        while queue_obs and queue_obs[0][0] < now - w:
            queue_obs.popleft()
        live = [r for r in replicas if r.state in (READY, DRAINING)]
        prompt_total = sum(r.engine.prompt_tokens_total for r in replicas)
        gen_total = sum(r.engine.generation_tokens_total for r in replicas)
        pre_total = sum(r.engine.preemptions_total for r in replicas)
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
                replica=f"r{r.engine.rid}",
                ttft_p95=histogram_quantile(0.95, per_ttft.get(r.engine.rid, []), TTFT_BUCKETS),
                tpot_p95=histogram_quantile(0.95, per_tpot.get(r.engine.rid, []), TPOT_BUCKETS),
                running=float(len(r.engine.running)),
                waiting=float(len(r.engine.waiting)),
                kv_cache_usage=r.engine.kv_usage(),
            )
            for r in live
        )
        obs = FleetObservation(
            time=now,
            ttft_p95=histogram_quantile(0.95, [v for _, v, _ in ttft_obs], TTFT_BUCKETS),
            tpot_p95=histogram_quantile(0.95, [v for _, v, _ in tpot_obs], TPOT_BUCKETS),
            queue_time_p95=histogram_quantile(0.95, [v for _, v in queue_obs], QUEUE_BUCKETS),
            waiting=float(sum(len(r.engine.waiting) for r in live) + len(gateway)),
            running=float(sum(len(r.engine.running) for r in live)),
            kv_cache_usage=(sum(s.kv_cache_usage or 0.0 for s in stats) / len(stats)) if stats else None,
            preemption_rate=rate(e0, pre_total),
            request_rate=rate(f0, finished_reqs),  # rate(vllm:request_success_total), as the operator reads
            prompt_token_rate=rate(p0, prompt_total),
            generation_token_rate=rate(g0, gen_total),
            gpu_util=None,
            slo_attainment=window_attainment(ttft_obs, tpot_obs, cfg.slo_ttft_s, cfg.slo_tpot_s),
            replicas=stats,
        )
        active = [r for r in replicas if r.state in (READY, STARTING)]
        timeline.append(
            Sample(now, rate(a0, arrived), sum(r.state == READY for r in active), len(active), obs.ttft_p95)
        )
        return obs

    def release_if_drained(r: Replica, now: float) -> None:
        if r.state == DRAINING and not r.engine.has_work() and not r.stepping:
            r.state = GONE
            r.released = now

    def apply(desired: int, now: float, reason: str) -> None:
        active = [r for r in replicas if r.state in (READY, STARTING)]
        cur = len(active)
        if desired == cur:
            return
        decision_events.append((now, cur, desired, reason))
        if desired > cur:
            for _ in range(desired - cur):
                new_replica(now, False)
            return
        remove = cur - desired
        for r in sorted((r for r in active if r.state == STARTING), key=lambda x: -x.created):
            if remove == 0:
                break
            r.state, r.released = GONE, now
            remove -= 1
        for r in sorted(
            (r for r in active if r.state == READY), key=lambda x: (x.engine.outstanding(), -x.engine.rid)
        ):
            if remove == 0:
                break
            r.state = DRAINING
            release_if_drained(r, now)
            remove -= 1
        refresh_ready()

    def capacity(now: float) -> CapacityView:
        ready_n = sum(r.state == READY for r in replicas)
        starting = sum(r.state == STARTING for r in replicas)
        used = sum(r.state != GONE for r in replicas) * cfg.gpus_per_replica
        return CapacityView(
            current=ready_n + starting,
            ready=ready_n,
            starting=starting,
            free_gpus=max(0, cfg.cluster_gpus - used),
            gpus_per_replica=cfg.gpus_per_replica,
            cold_start_s=cfg.cold_start_s,
        )

    push(0.0, SCRAPE)
    # Policies start deciding once one metrics window has been scraped: the simulated fleet starts idle at
    # t=0, and a rate or gauge read before any traffic would tell every policy to scale in to its minimum.
    # Schedules (the clairvoyant, static counts) read no metrics and act from t=0.
    push(cfg.window_s if getattr(policy, "reads_metrics", True) else 0.0, DECIDE)
    i = 0
    horizon_end = trace.duration + cfg.drain_tail_s
    last_progress = -1.0
    now = 0.0
    while True:
        t_arr = float(arrivals[i]) + cfg.request_overhead_s if i < n_req else math.inf
        t_ev = events[0][0] if events else math.inf
        if t_arr <= t_ev:
            if t_arr == math.inf:
                break
            now = t_arr
            req = Request(i, float(arrivals[i]), int(prompts[i]), int(outputs[i]))
            requests.append(req)
            arrived += 1
            i += 1
            route(req, now)
            continue
        now, _, kind, rid = heapq.heappop(events)
        if kind == STEP:
            r = replicas[rid]
            r.stepping = False
            collect(r)
            if r.state != GONE:
                kick(r, now)
            release_if_drained(r, now)
        elif kind == READY_EV:
            r = replicas[rid]
            if r.state == STARTING:
                r.state = READY
                refresh_ready()
                while gateway and ready_list:
                    route(gateway.popleft(), now)
        elif kind == SCRAPE:
            latest_obs = scrape(now)
            next_scrape = now + scrape_every
            done = i >= n_req and finished_reqs >= n_req
            if not done and now < horizon_end:
                push(next_scrape, SCRAPE)
            if progress is not None and trace.duration > 0 and now - last_progress >= 60:
                last_progress = now
                progress(min(1.0, now / trace.duration))
        else:  # DECIDE
            done = i >= n_req and finished_reqs >= n_req
            if done or now >= horizon_end:
                continue
            d = policy.decide(latest_obs, capacity(now), now)
            h = getattr(policy, "headroom", None)
            if isinstance(h, int | float):
                headroom.append((now, float(h)))
            reasons[str(d.reason)] = reasons.get(str(d.reason), 0) + 1
            apply(d.desired, now, str(d.reason))
            push(now + policy.sync_period_s, DECIDE)
    # The fleet is released when the last request finishes (or the trace ends), not at whichever
    # bookkeeping event (a policy's next sync, a scrape) happened to be popped last: that would make
    # GPU-hours depend on the policy's sync period.
    all_done = finished_reqs >= n_req
    end = max(end_time, trace.duration) if all_done else max(now, end_time, trace.duration)
    for r in replicas:
        if r.released < 0 or r.released > end:
            r.released = end
    gpu_s = sum(r.released - r.created for r in replicas) * cfg.gpus_per_replica

    done_reqs = [r for r in requests if r.finish >= 0]
    ttfts = np.array([r.ttft for r in done_reqs]) if done_reqs else np.zeros(1)
    tpots = np.array([r.tpot for r in done_reqs]) if done_reqs else np.zeros(1)
    ok = int(np.sum((ttfts <= cfg.slo_ttft_s) & (tpots <= cfg.slo_tpot_s))) if done_reqs else 0
    flaps = 0
    for (t1, a1, b1, _), (t2, a2, b2, _) in itertools.pairwise(decision_events):
        if (b1 - a1) * (b2 - a2) < 0 and t2 - t1 <= FLAP_WINDOW_S:
            flaps += 1
    hours = max(trace.duration, 1.0) / 3600
    steps = None
    if cfg.record_steps:
        steps = [s for r in replicas for s in (r.engine.steps or [])]
    if progress is not None:
        progress(1.0)
    return PolicyResult(
        policy=policy.name,
        gpu_hours=gpu_s / 3600,
        slo_attainment=ok / max(n_req, 1),
        p95_ttft_seconds=float(np.percentile(ttfts, 95)),
        p95_tpot_seconds=float(np.percentile(tpots, 95)),
        scale_events=len(decision_events),
        flaps_per_hour=flaps / hours,
        requests=n_req,
        preemptions=sum(r.engine.preemptions_total for r in replicas),
        duration_s=end,
        reasons=reasons,
        timeline=timeline,
        events=decision_events,
        steps=steps,
        request_log=(
            [(r.arrival, r.ttft, r.tpot, r.finish, r.output) for r in done_reqs]
            if cfg.record_requests
            else None
        ),
        headroom=headroom or None,
    )
