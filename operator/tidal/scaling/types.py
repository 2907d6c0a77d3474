"""Typed inputs and outputs of the autoscaler: configuration, observations, capacity, state, decision.

These are plain frozen dataclasses so the operator shell can build them from Prometheus query results
and the CRD spec, and the simulator can build them from its virtual fleet, without either depending
on the other. :class:`AutoscalerState` round-trips through a JSON-able dict so it can live in the
``LLMDeployment`` status and survive an operator restart without resetting the windows.

Conventions: times are seconds (``now`` and ``FleetObservation.time`` on the same clock, e.g. Unix
time in the operator, virtual time in the simulator); fleet gauges (``waiting``, ``running``) are sums
over replicas; ``kv_cache_usage`` is the mean fraction 0..1 over replicas; rates are per second over
the observation window; latencies are p95 over the window in seconds; ``None`` means missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tidal.scaling.headroom import Headroom


class Reason(StrEnum):
    """CamelCase reasons carried by every decision (also used as Event reasons and metric labels)."""

    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    WITHIN_TOLERANCE = "WithinTolerance"
    NO_CHANGE = "NoChange"
    SCALE_BLOCKED = "ScaleBlocked"
    INSUFFICIENT_GPU = "InsufficientGPU"
    METRICS_STALE = "MetricsStale"
    MAX_REPLICAS_REACHED = "MaxReplicasReached"
    MIN_REPLICAS_REACHED = "MinReplicasReached"
    STABILIZATION_WINDOW = "StabilizationWindow"
    COLD_START_PENDING = "ColdStartPending"
    PANIC_HOLD = "PanicHold"
    SCHEDULED = "Scheduled"


@dataclass(frozen=True)
class ScalingConfig:
    """Targets and behaviour of the Tidal autoscaler. Every field has a default; targets set to
    ``None`` disable that signal."""

    ttft_p95_s: float | None = 2.0
    """Target p95 time to first token (seconds)."""
    tpot_p95_s: float | None = 0.1
    """Target p95 time per output token (seconds)."""
    queue_per_replica: float | None = 5.0
    """Target waiting requests per ready replica."""
    kv_cache_usage: float | None = 0.9
    """Target mean KV-cache usage (fraction 0..1)."""
    prefill_tokens_per_replica_s: float | None = None
    """Prompt tokens/s one replica sustains within the SLO (from the recommender's performance model).
    With ``decode_tokens_per_replica_s`` it enables the proportional ``load`` signal."""
    decode_tokens_per_replica_s: float | None = None
    """Generated tokens/s one replica sustains within the SLO (from the performance model)."""
    decode_step_s: float | None = None
    """The capacity model's decode step time at no batch (seconds); with ``decode_step_per_seq_s`` the
    modelled step time the online capacity calibration compares the engine's with (``None``: no
    calibration)."""
    decode_step_per_seq_s: float | None = None
    """The capacity model's decode step time added per running sequence (seconds)."""
    target_utilization: float = 0.85
    """Fraction of the modelled per-replica capacity the ``load`` signal aims at (headroom for bursts)."""
    backlog_drain_s: float = 60.0
    """Without a queue history (a lone observation), the ``load`` signal counts waiting requests as work
    to finish within this many seconds."""
    queue_growth_window_s: float = 30.0
    """The ``load`` signal adds the growth of the waiting queue, a slope fitted over this window, as
    demand the fleet does not serve."""
    trend_window_s: float = 120.0
    """The ``load`` signal adds the growth of the demand (prompt tokens/s) expected over one cold start,
    from a slope fitted over this window; only a statistically clear rise counts."""
    tolerance: float = 0.1
    """No change while the worst ratio is within 1 ± tolerance."""
    panic_threshold: float = 2.0
    """Worst ratio at or above which the autoscaler panics: jumps past the step limit."""
    panic_window_s: float = 6.0
    """After a panic, no scale-down for this long (extended while the breach lasts)."""
    scale_up_stabilization_s: float = 0.0
    """Scale up to the minimum recommendation over this window (0 = immediately)."""
    scale_down_stabilization_s: float = 300.0
    """Scale down only to the maximum recommendation over this window."""
    scale_down_consecutive: int = 3
    """Consecutive below-target decisions required before a scale-down."""
    max_scale_up_step: int = 4
    """Most replicas added by one decision (outside panic)."""
    max_scale_down_step: int = 1
    """Most replicas removed by one decision."""
    lagging_scale_up_step: int = 1
    """With the ``load`` signal available, replicas added per decision when only a lagging signal
    (latency, queue) breaches: the modelled load does not explain the breach, so no jump."""
    metrics_stale_after_s: float = 60.0
    """Observations older than this hold the replica count (reason MetricsStale)."""
    min_replicas: int = 1
    max_replicas: int = 10
    cold_start_s: float | None = None
    """Expected time from pod creation to a ready replica; the measured value in CapacityView wins."""
    sick_latency_factor: float = 3.0
    """A replica whose TTFT or TPOT exceeds this multiple of its peers' median, at no more load than
    them, is flagged degraded."""
    max_num_seqs: int | None = None
    """The engine's max_num_seqs, for engine advice (batch size relative to the limit)."""
    gpu_memory_utilization: float | None = None
    """The engine's effective gpu_memory_utilization (``None``: vLLM's default), for engine advice."""
    max_num_batched_tokens: int | None = None
    """The engine's effective max_num_batched_tokens (the prefill chunk budget per step; vLLM's default for
    the GPU class when left to vLLM, ``None``: unknown), for chunk advice
    (:mod:`tidal.scaling.chunkadvice`)."""
    recommended_max_num_batched_tokens: int | None = None
    """The recommender's chunk budget: chunk advice raises the budget back towards it, never above it."""
    replica_warmup_s: float = 60.0
    """Replicas ready for less than this are not judged against their peers (cold caches, few requests:
    a fresh replica after a scale-up is not a sick one)."""
    slo_attainment: float = 0.99
    """Target fraction of requests meeting both latency targets over a rolling window: the objective the
    headroom is sized for (its quantile) and the measured attainment is fed back against."""
    detection_delay_s: float = 30.0
    """Added to the cold start to give the provisioning lead time: the metrics window plus a sync period
    before a rise is seen and acted on."""
    headroom_prior: float = 3.0
    """Headroom assumed while the demand history is short (:mod:`tidal.scaling.headroom`)."""
    headroom_max: float = 10.0
    """The largest headroom factor kept (``spec.autoscaling.headroomMax``; 1: no standing headroom)."""
    headroom_base_window_s: float = 300.0
    """The base demand the headroom multiplies is the median over this window."""
    max_scale_up_factor: float = 4.0
    """Safety bound of a proportional (one-step) scale-up: at most this many times the ready replicas more
    in one decision (or ``max_scale_up_step``, whichever is larger)."""
    min_replica_request_rate: float = 0.05
    """Replicas completing fewer requests per second than this over the window are not judged either:
    their latency quantiles rest on a handful of samples."""

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < self.min_replicas:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}..{self.max_replicas}"
            )
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.max_scale_up_step < 1 or self.max_scale_down_step < 1:
            raise ValueError("step limits must be >= 1")
        if not 0.5 <= self.slo_attainment < 1:
            raise ValueError(f"slo_attainment must be in [0.5, 1), got {self.slo_attainment}")
        if self.headroom_prior < 1:
            raise ValueError(f"headroom_prior must be >= 1, got {self.headroom_prior}")
        if self.headroom_max < 1:
            raise ValueError(f"headroom_max must be >= 1, got {self.headroom_max}")
        if not 0 < self.target_utilization <= 1:
            raise ValueError(f"target_utilization must be in (0, 1], got {self.target_utilization}")


@dataclass(frozen=True)
class ReplicaStats:
    """Per-replica view used by sick-replica detection (any field may be missing)."""

    replica: str
    ttft_p95: float | None = None
    tpot_p95: float | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    age_s: float | None = None
    """Seconds since the replica turned ready (``None``: unknown, judged as warm)."""
    request_rate: float | None = None
    """Requests it completed per second over the window (``None``: unknown, judged as busy enough)."""


@dataclass(frozen=True)
class FleetObservation:
    """One sample of the fleet's signals at ``time`` (see the module docstring for units)."""

    time: float
    ttft_p95: float | None = None
    tpot_p95: float | None = None
    queue_time_p95: float | None = None
    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    preemption_rate: float | None = None
    request_rate: float | None = None
    prompt_token_rate: float | None = None
    generation_token_rate: float | None = None
    gpu_util: float | None = None
    slo_attainment: float | None = None
    """Fraction of the requests finished over the window that met both latency targets (0..1). From the
    vLLM histograms it is bounded below by ``1 - TTFT misses - TPOT misses`` (their joint is not exported)."""
    replicas: tuple[ReplicaStats, ...] = ()

    def has_any_signal(self) -> bool:
        """True when at least one fleet-level signal is present."""
        return any(
            v is not None
            for v in (self.ttft_p95, self.tpot_p95, self.waiting, self.running, self.kv_cache_usage)
        )


@dataclass(frozen=True)
class CapacityView:
    """What the cluster can give: replicas that exist, are ready, are still starting, and free GPUs."""

    current: int
    """Replicas currently requested (spec.replicas / the last applied desired)."""
    ready: int
    """Replicas serving traffic."""
    starting: int = 0
    """Replicas created but not ready yet (pending or starting pods): they are coming."""
    free_gpus: int | None = None
    """Schedulable GPUs of the right type not in use; ``None`` = unknown (no limit applied)."""
    gpus_per_replica: int = 1
    cold_start_s: float | None = None
    """Measured pod-created → ready time; overrides ScalingConfig.cold_start_s."""


@dataclass(frozen=True)
class SickReplica:
    """A replica flagged by detection (reason ReplicaDegraded: replace it, don't scale out for it)."""

    replica: str
    signal: str
    value: float
    peer_median: float
    factor: float
    message: str


@dataclass(frozen=True)
class EngineAdvice:
    """Engine-setting advice derived from live data; written to status, applied only in Apply mode."""

    setting: str
    direction: str
    """"increase" or "decrease"."""
    suggested: float | None
    """The concrete value to set (already bounded, see :mod:`tidal.scaling.tuning`); ``None`` when the
    advice names no value (it is then never applied)."""
    message: str
    current: float | None = None
    """The engine's effective value the advice starts from (``None``: unknown)."""


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class AutoscalerState:
    """Windows and counters that must survive a restart (stored in the CRD status as a dict)."""

    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, bounded recommendation) pairs inside the longest stabilisation window."""
    below_target_since: float | None = None
    consecutive_below: int = 0
    last_scale_time: float | None = None
    last_scale_up_time: float | None = None
    panic_until: float | None = None
    load_history: tuple[tuple[float, float], ...] = ()
    """(time, replicas of work) samples inside ``trend_window_s``: the numbers behind the ``load``
    ratio, kept for the status (the trend no longer reads them, see ``demand_history``)."""
    demand_history: tuple[tuple[float, float], ...] = ()
    """(time, prompt tokens/s) samples inside ``trend_window_s``: the demand the load trend is fitted to."""
    queue_history: tuple[tuple[float, float], ...] = ()
    """(time, waiting requests) samples inside ``queue_growth_window_s``: the queue's growth."""
    miss_average: float | None = None
    """Moving average of the SLO miss fraction (:func:`tidal.scaling.headroom.miss_average`)."""
    headroom_feedback: float = 1.0
    """The attainment feedback factor on the headroom."""
    headroom_factor: float | None = None
    """The headroom of the last Event about it (a material change raises the next)."""
    last_decision_time: float | None = None
    capacity_scale: float = 1.0
    """The engine's capacity over the model's, learnt online (:mod:`tidal.scaling.calibration`)."""
    capacity_samples: tuple[tuple[float, float], ...] = ()
    """(time, engine speed over the model's) samples behind ``capacity_scale``."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict for the CRD status."""
        return {
            "recommendations": [[t, n] for t, n in self.recommendations],
            "belowTargetSince": self.below_target_since,
            "consecutiveBelow": self.consecutive_below,
            "lastScaleTime": self.last_scale_time,
            "lastScaleUpTime": self.last_scale_up_time,
            "panicUntil": self.panic_until,
            "loadHistory": [[t, round(w, 4)] for t, w in self.load_history],
            "demandHistory": [[t, round(d, 2)] for t, d in self.demand_history],
            "queueHistory": [[t, q] for t, q in self.queue_history],
            "missAverage": self.miss_average,
            "headroomFeedback": self.headroom_feedback,
            "headroomFactor": self.headroom_factor,
            "lastDecisionTime": self.last_decision_time,
            "capacityScale": round(self.capacity_scale, 4),
            "capacitySamples": [[t, round(r, 4)] for t, r in self.capacity_samples],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AutoscalerState:
        """Inverse of :meth:`to_dict`; tolerates missing keys (an empty or absent status)."""
        if not data:
            return cls()
        recs = tuple((float(t), int(n)) for t, n in data.get("recommendations") or ())
        return cls(
            recommendations=recs,
            below_target_since=_opt_float(data.get("belowTargetSince")),
            consecutive_below=int(data.get("consecutiveBelow") or 0),
            last_scale_time=_opt_float(data.get("lastScaleTime")),
            last_scale_up_time=_opt_float(data.get("lastScaleUpTime")),
            panic_until=_opt_float(data.get("panicUntil")),
            load_history=tuple((float(t), float(w)) for t, w in data.get("loadHistory") or ()),
            demand_history=tuple((float(t), float(d)) for t, d in data.get("demandHistory") or ()),
            queue_history=tuple((float(t), float(q)) for t, q in data.get("queueHistory") or ()),
            miss_average=_opt_float(data.get("missAverage")),
            headroom_feedback=float(data.get("headroomFeedback") or 1.0),
            headroom_factor=_opt_float(data.get("headroomFactor")),
            last_decision_time=_opt_float(data.get("lastDecisionTime")),
            capacity_scale=float(data.get("capacityScale") or 1.0),
            capacity_samples=tuple((float(t), float(r)) for t, r in data.get("capacitySamples") or ()),
        )

    def evolve(self, **changes: Any) -> AutoscalerState:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass(frozen=True)
class ScalingDecision:
    """The result of one autoscaler evaluation, including non-decisions."""

    desired: int
    """Replicas to apply."""
    proposed: int
    """What the signals asked for before stabilisation, step, bound and capacity limits."""
    current: int
    reason: Reason
    message: str
    limiting_factor: str | None = None
    """The signal that won (e.g. ``ttft``) or the limit that clipped (e.g. ``maxReplicas``)."""
    ratios: Mapping[str, float] = field(default_factory=dict)
    metrics_available: bool = True
    state: AutoscalerState = field(default_factory=AutoscalerState)
    sick_replicas: tuple[SickReplica, ...] = ()
    advice: tuple[EngineAdvice, ...] = ()
    panic: bool = False
    headroom: Headroom | None = None
    """The standing headroom behind the ``load`` signal (``None``: no load signal)."""
    demand: float | None = None
    """Replicas of work observed now, in the capacity model's units (uncalibrated): the sample to append
    to the demand history."""

    @property
    def changed(self) -> bool:
        """True when the decision changes the replica count."""
        return self.desired != self.current
