"""The simulated fleet's numbers: a load profile over time and a small queueing model of one vLLM replica.

`make demo` has no GPUs, so the worker pods KWOK runs serve nothing. The demo stands in for their
``/metrics`` with this model, kept small, deterministic (no random numbers: distributions are put into
histogram buckets through their CDFs) and tied to the same performance model the operator's ``load``
signal uses (``tidal.sim.capacity.modelled_capacity`` on ``tidal.sim.stepmodel.load_step_model``), so what
Prometheus sees is what a replica of that model on that GPU would roughly report:

* **Load**: :class:`LoadProfile` gives the offered request rate at time ``t`` as a multiple of one replica's
  capacity ``mu``: low, a ramp up, high, a ramp down, low again (fractions of the run's duration).
* **Capacity**: :class:`ReplicaModel` holds ``mu`` (requests/s within the TPOT target), the batch at that
  rate, the prefill time of one prompt and the step-time model.
* **Routing** (:func:`split_load`): the offered rate goes to the Ready replicas, less to those with a
  backlog (least outstanding requests); a replica's queue stays on it.
* **One replica** (:meth:`ReplicaModel.advance`): offered ``lambda`` requests/s, utilisation
  ``rho = lambda / mu``. Below capacity the waiting queue settles at ``rho^4 / (1 - rho)`` (continuous
  batching keeps it near zero until the batch is nearly full) over the M/M/1 relaxation time, so a
  replica offered just under its capacity does not jump to thousands waiting in one tick; at or above
  capacity it grows by ``(lambda - mu)`` per second, and a backlog drains at ``mu - lambda``. The replica
  serves ``min(lambda, mu)`` (``mu`` while a backlog drains). Running sequences follow Little's law on the
  batch at capacity; KV use is running x (prompt + output/2) tokens over the KV capacity; the queue wait is
  ``waiting / mu``; TTFT is prefill + queue wait, TPOT is the step time of the running batch stretched by
  the prefill share of the GPU (the same fixed point as ``tidal.sim.capacity.concurrency_at``).

Nothing here does I/O; ``tidal.demo.exporter`` turns :class:`ReplicaState` into vLLM's metric families.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from tidal.sim.capacity import modelled_capacity
from tidal.sim.stepmodel import EngineLimits, StepTimeModel, load_step_model

# vLLM V1's default histogram bounds (vllm/v1/metrics/buckets.py in vllm 0.32).
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
)  # fmt: skip

MAX_WAITING = 5000.0
"""A replica's queue stops growing here (vLLM would start refusing long before)."""
ROUTER_BACKLOG_SCALE = 10.0
"""Waiting requests at which the router sends a replica half the share of an idle one."""


@dataclass(frozen=True)
class LoadProfile:
    """Offered load over one demo run, in multiples of one replica's capacity: low -> high -> low.

    The phases are fractions of ``duration_s``: low until ``rise_start``, a linear ramp to ``high`` until
    ``rise_end``, high until ``fall_start``, a ramp down to ``low`` until ``fall_end``, then low to the end.
    """

    duration_s: float
    low: float = 0.4
    high: float = 2.4
    rise_start: float = 0.10
    rise_end: float = 0.18
    fall_start: float = 0.45
    fall_end: float = 0.50

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise ValueError(f"duration must be positive, got {self.duration_s}")
        if not 0 <= self.rise_start <= self.rise_end <= self.fall_start <= self.fall_end <= 1:
            raise ValueError("phases must satisfy 0 <= rise_start <= rise_end <= fall_start <= fall_end <= 1")
        if self.low < 0 or self.high < self.low:
            raise ValueError(f"need 0 <= low <= high, got {self.low}..{self.high}")

    def level(self, t: float) -> float:
        """Offered load at ``t`` seconds after the start, in replicas' worth of capacity."""
        x = min(max(t / self.duration_s, 0.0), 1.0)
        if x < self.rise_start:
            return self.low
        if x < self.rise_end:
            return self.low + (self.high - self.low) * (x - self.rise_start) / (
                self.rise_end - self.rise_start
            )
        if x < self.fall_start:
            return self.high
        if x < self.fall_end:
            return self.high - (self.high - self.low) * (x - self.fall_start) / (
                self.fall_end - self.fall_start
            )
        return self.low

    def phase(self, t: float) -> str:
        """``low``, ``rising``, ``high``, ``falling`` or ``low`` again, for the demo's table."""
        x = t / self.duration_s
        if x < self.rise_start:
            return "low"
        if x < self.rise_end:
            return "rising"
        if x < self.fall_start:
            return "high"
        if x < self.fall_end:
            return "falling"
        return "low"


@dataclass
class Histogram:
    """Cumulative bucket counts (upper bounds ``bounds``, then +Inf), sum and count, as floats."""

    bounds: tuple[float, ...]
    cumulative: list[float] = field(default_factory=list)
    total: float = 0.0
    count: float = 0.0

    def __post_init__(self) -> None:
        if not self.cumulative:
            self.cumulative = [0.0] * (len(self.bounds) + 1)

    def add_shifted_exponential(self, n: float, shift: float, mean_excess: float) -> None:
        """Add ``n`` observations of ``shift + Exp(mean_excess)`` spread over the buckets by the CDF."""
        if n <= 0:
            return
        for i, bound in enumerate(self.bounds):
            self.cumulative[i] += n * _shifted_exp_cdf(bound, shift, mean_excess)
        self.cumulative[-1] += n
        self.total += n * (shift + mean_excess)
        self.count += n

    def buckets(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, +Inf last, as the exposition format wants them."""
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        return list(zip(les, self.cumulative, strict=True))


def _le(bound: float) -> str:
    return repr(float(bound))


def _shifted_exp_cdf(x: float, shift: float, mean_excess: float) -> float:
    if x < shift:
        return 0.0
    if mean_excess <= 0:
        return 1.0
    return 1.0 - math.exp(-(x - shift) / mean_excess)


def quantile_shifted_exponential(q: float, shift: float, mean_excess: float) -> float:
    """The ``q`` quantile of ``shift + Exp(mean_excess)`` (for tests and the docs' arithmetic)."""
    return shift - mean_excess * math.log(1.0 - q)


@dataclass
class ReplicaState:
    """What one simulated replica has reported so far (counters only grow)."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    offered_rps: float = 0.0
    served_rps: float = 0.0
    requests: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))


@dataclass(frozen=True)
class ReplicaModel:
    """One replica of a model on a GPU, reduced to the numbers the queueing model needs."""

    capacity_rps: float
    """``mu``: requests/s one replica serves within the TPOT target."""
    batch_at_capacity: float
    """Sequences decoding together at ``mu``."""
    prompt_tokens: int
    output_tokens: int
    prefill_s: float
    """Time to prefill one prompt on an idle replica."""
    gamma_s: float
    """Seconds of GPU time per prompt token (chunked prefill)."""
    limits: EngineLimits
    step: StepTimeModel
    source: str = ""

    @classmethod
    def for_model(
        cls,
        model: str = "llama-3.1-8b",
        gpu: str = "H100-80GB",
        tp: int = 1,
        prompt_tokens: int = 1024,
        output_tokens: int = 256,
        tpot_target_s: float = 0.1,
    ) -> ReplicaModel:
        """The recommender's performance model for ``model`` on ``gpu`` and its capacity at the target."""
        loaded = load_step_model(model, gpu, tp=tp)
        cap = modelled_capacity(loaded.model, loaded.limits, prompt_tokens, output_tokens, tpot_target_s)
        chunk = loaded.limits.max_num_batched_tokens
        gamma = (loaded.model.step_seconds(chunk, 0, 0) - loaded.model.step_seconds(0, 0, 0)) / chunk
        return cls(
            capacity_rps=cap.requests_per_s,
            batch_at_capacity=max(1.0, cap.concurrency),
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            prefill_s=loaded.model.step_seconds(prompt_tokens, 0, 0),
            gamma_s=gamma,
            limits=loaded.limits,
            step=loaded.model,
            source=loaded.source,
        )

    def steady_waiting(self, rho: float) -> float:
        """Waiting requests of a replica below capacity: ``rho^4 / (1 - rho)``."""
        if rho >= 1.0:
            return MAX_WAITING
        return min(MAX_WAITING, rho**4 / (1.0 - rho))

    def relaxation_seconds(self, rho: float) -> float:
        """How long a replica's queue takes to settle at a new load below capacity: an M/M/1 queue's
        relaxation time, ``1 / (mu (1 - sqrt(rho))^2)``, which grows without bound as ``rho -> 1``."""
        gap = (1.0 - math.sqrt(min(max(rho, 0.0), 1.0))) ** 2
        return math.inf if gap <= 0.0 else 1.0 / (self.capacity_rps * gap)

    def settle_towards(self, waiting: float, floor: float, rho: float, dt: float) -> float:
        """The queue after ``dt`` seconds on its way up to the steady ``floor``: it closes the gap by
        ``1 - exp(-dt / relaxation)``, so a replica offered just under its capacity builds its (large)
        steady queue over minutes, not in one tick, and never faster than requests arrive."""
        tau = self.relaxation_seconds(rho)
        if waiting >= floor or math.isinf(tau):
            return waiting
        rise = (floor - waiting) * -math.expm1(-dt / tau)
        return waiting + min(rise, rho * self.capacity_rps * dt)

    def tpot_seconds(self, running: float, served_rps: float) -> float:
        """Mean time per output token with ``running`` sequences decoding and ``served_rps`` prompts/s."""
        b = max(1, round(running))
        ctx = self.prompt_tokens + self.output_tokens / 2
        d = self.step.step_seconds(0, b, int(b * ctx))
        busy = min(0.9, served_rps * self.prompt_tokens * self.gamma_s)
        return d / (1.0 - busy)

    def advance(self, state: ReplicaState, offered_rps: float, dt: float) -> None:
        """Move ``state`` on by ``dt`` seconds at ``offered_rps`` requests/s (see the module docstring)."""
        if dt <= 0:
            return
        mu = self.capacity_rps
        rho = offered_rps / mu
        floor = self.steady_waiting(rho)
        if rho >= 1.0:
            waiting = min(
                MAX_WAITING, max(state.waiting, self.steady_waiting(0.95)) + (offered_rps - mu) * dt
            )
            served = mu
        elif state.waiting > floor:
            waiting = max(floor, state.waiting - (mu - offered_rps) * dt)
            served = mu if waiting > floor else offered_rps
        else:
            waiting, served = self.settle_towards(state.waiting, floor, rho, dt), offered_rps
        running = min(float(self.limits.max_num_seqs), self.batch_at_capacity * served / mu)
        ctx = self.prompt_tokens + self.output_tokens / 2
        kv = min(1.0, running * ctx / self.limits.kv_cache_tokens)
        queue_wait = waiting / mu if served > 0 else 0.0
        tpot = self.tpot_seconds(running, served)
        n = served * dt
        state.waiting, state.running, state.kv_cache_usage = waiting, running, kv
        state.offered_rps, state.served_rps = offered_rps, served
        state.requests += n
        state.prompt_tokens += n * self.prompt_tokens
        state.generation_tokens += n * self.output_tokens
        if kv >= 0.99 and rho >= 1.0:
            state.preemptions += 0.05 * n
        state.ttft.add_shifted_exponential(n, 0.9 * self.prefill_s, queue_wait + 0.1 * self.prefill_s)
        state.queue_time.add_shifted_exponential(n, 0.0, queue_wait)
        state.itl.add_shifted_exponential(n * (self.output_tokens - 1), 0.8 * tpot, 0.2 * tpot)
        state.e2e.add_shifted_exponential(
            n, self.prefill_s + self.output_tokens * tpot * 0.9, queue_wait + 0.1 * self.output_tokens * tpot
        )


def split_load(total_rps: float, waiting: Mapping[str, float]) -> dict[str, float]:
    """The router: the offered rate over the ready replicas (keys of ``waiting``), fewer new requests to
    those with a backlog (weight ``1 / (1 + waiting / ROUTER_BACKLOG_SCALE)``), as a least-outstanding-
    requests balancer does. Requests already queued on a replica stay there (vLLM's queue is per engine),
    so a backlog drains where it built up while new replicas take the new load."""
    if not waiting:
        return {}
    weights = {name: 1.0 / (1.0 + max(0.0, q) / ROUTER_BACKLOG_SCALE) for name, q in waiting.items()}
    norm = sum(weights.values())
    return {name: total_rps * w / norm for name, w in weights.items()}
