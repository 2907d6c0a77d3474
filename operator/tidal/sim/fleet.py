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
creation to release. :mod:`tidal.sim.scrape` is the simulated Prometheus, :mod:`tidal.sim.results` what
a run returns.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tidal.scaling.policies import ScalingPolicy
from tidal.scaling.types import CapacityView, FleetObservation
from tidal.sim.engine import ReplicaEngine, Request
from tidal.sim.results import FLAP_WINDOW_S, PolicyResult, Sample, score
from tidal.sim.scrape import (
    QUEUE_BUCKETS,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    MetricWindows,
    histogram_quantile,
    window_attainment,
)
from tidal.sim.stepmodel import EngineLimits, StepTimeModel, engine_model
from tidal.sim.traces import Trace

STARTING, READY, DRAINING, GONE = "Starting", "Ready", "Draining", "Gone"

__all__ = [  # the metric and result names importers found here before they moved
    "FLAP_WINDOW_S",
    "QUEUE_BUCKETS",
    "TPOT_BUCKETS",
    "TTFT_BUCKETS",
    "PolicyResult",
    "Replica",
    "Sample",
    "SimConfig",
    "histogram_quantile",
    "simulate",
    "window_attainment",
]


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


def simulate(
    trace: Trace,
    policy: ScalingPolicy,
    cfg: SimConfig,
    progress: Callable[[float], None] | None = None,
) -> PolicyResult:
    """Replay ``trace`` against ``policy`` on a simulated fleet; deterministic for a given input.

    Longer than 80 lines on purpose: it is one discrete-event loop, and its handlers (``push``, ``kick``,
    ``route``, ``scrape``, ``apply``) are closures over the state they all share (the event heap, the
    replicas, the gateway, the next arrival's index, the next scrape's time). The metrics
    (:class:`~tidal.sim.scrape.MetricWindows`), the policy's view (``_capacity``) and the scoring
    (:func:`~tidal.sim.results.score`) are outside it; splitting the loop further would pass that state
    between functions or turn it into an object, for no gain in reading it."""
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

    metrics = MetricWindows(cfg.window_s, cfg.slo_ttft_s, cfg.slo_tpot_s)
    arrived = 0
    latest_obs: FleetObservation | None = None
    timeline: list[Sample] = []
    decision_events: list[tuple[float, int, int, str]] = []
    reasons: dict[str, int] = {}
    headroom: list[tuple[float, float]] = []

    def scrape(now: float) -> FleetObservation:
        live = [r.engine for r in replicas if r.state in (READY, DRAINING)]
        engines = [r.engine for r in replicas]
        obs, arrival_rate = metrics.scrape(now, engines, live, len(gateway), arrived)
        active = [r for r in replicas if r.state in (READY, STARTING)]
        timeline.append(
            Sample(now, arrival_rate, sum(r.state == READY for r in active), len(active), obs.ttft_p95)
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
            metrics.collect(r.engine)
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
            done = i >= n_req and metrics.finished >= n_req
            if not done and now < horizon_end:
                push(next_scrape, SCRAPE)
            if progress is not None and trace.duration > 0 and now - last_progress >= 60:
                last_progress = now
                progress(min(1.0, now / trace.duration))
        else:  # DECIDE
            done = i >= n_req and metrics.finished >= n_req
            if done or now >= horizon_end:
                continue
            d = policy.decide(latest_obs, _capacity(replicas, cfg), now)
            h = getattr(policy, "headroom", None)
            if isinstance(h, int | float):
                headroom.append((now, float(h)))
            reasons[str(d.reason)] = reasons.get(str(d.reason), 0) + 1
            apply(d.desired, now, str(d.reason))
            push(now + policy.sync_period_s, DECIDE)
    # The fleet is released when the last request finishes (or the trace ends), not at whichever
    # bookkeeping event (a policy's next sync, a scrape) happened to be popped last: that would make
    # GPU-hours depend on the policy's sync period.
    all_done = metrics.finished >= n_req
    end_time = metrics.end_time
    end = max(end_time, trace.duration) if all_done else max(now, end_time, trace.duration)
    for r in replicas:
        if r.released < 0 or r.released > end:
            r.released = end
    gpu_s = sum(r.released - r.created for r in replicas) * cfg.gpus_per_replica
    slo = (cfg.slo_ttft_s, cfg.slo_tpot_s)
    attainment, p95_ttft, p95_tpot, flaps_per_hour, done_reqs = score(
        requests, slo, decision_events, trace.duration
    )
    steps = None
    if cfg.record_steps:
        steps = [s for r in replicas for s in (r.engine.steps or [])]
    if progress is not None:
        progress(1.0)
    return PolicyResult(
        policy=policy.name,
        gpu_hours=gpu_s / 3600,
        slo_attainment=attainment,
        p95_ttft_seconds=p95_ttft,
        p95_tpot_seconds=p95_tpot,
        scale_events=len(decision_events),
        flaps_per_hour=flaps_per_hour,
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


def _capacity(replicas: Sequence[Replica], cfg: SimConfig) -> CapacityView:
    """What the policy is told about the fleet: ready and starting replicas, free GPUs, the cold start."""
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
