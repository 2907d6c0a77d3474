"""How many replicas run and how the ``"auto"`` engine settings are chosen: SLO-driven autoscaling
(``spec.autoscaling``: targets, stabilisation, panic mode, the Prometheus to read) and the recommendation
mode (``spec.recommendation``).

It exists apart from :mod:`tidal.api.spec` so the knobs of the two control loops, the autoscaler and the
recommender, read together and apart from what is served.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tidal.api.base import ApiModel, PositiveFloat, Rule

DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
"""The in-cluster Prometheus (the Service the Prometheus Operator creates in ``monitoring``)."""

RecommendationMode = Literal["Apply", "Advise"]


class AutoscalingTargets(ApiModel):
    """Service-level targets: the autoscaler keeps each observed signal near its target."""

    ttft_p95_seconds: PositiveFloat = 2.0
    """Target p95 time to first token, in seconds."""
    tpot_p95_seconds: PositiveFloat = 0.1
    """Target p95 time per output token (inter-token latency), in seconds."""
    queue_length_per_replica: PositiveFloat = 5.0
    """Target waiting requests per ready replica."""
    kv_cache_usage: float = Field(default=0.9, gt=0, le=1)
    """Target mean KV-cache usage, a fraction in (0, 1]."""
    slo_attainment: float = Field(default=0.99, ge=0.5, le=0.9999)
    """Fraction of requests that must meet both the TTFT and the TPOT target over a rolling window: the
    autoscaler keeps headroom for the demand growth within one provisioning lead time at this quantile of
    the deployment's history, and feeds the measured attainment back."""


class PrometheusSource(ApiModel):
    """Where the autoscaler reads the vLLM metrics."""

    url: str = Field(default=DEFAULT_PROMETHEUS_URL, max_length=2048, pattern=r"^https?://[^\s]+$")
    """Prometheus base URL."""
    selector: str = Field(default="", max_length=1024)
    """Extra PromQL label matchers added to every query, e.g. ``cluster="prod"``."""


class Autoscaling(ApiModel):
    """SLO-driven autoscaling of ``spec.replicas`` between ``minReplicas`` and ``maxReplicas``."""

    __rules__ = (
        Rule(
            cel=(
                "!has(self.headroomPrior) || !has(self.headroomMax) "
                "|| self.headroomPrior <= self.headroomMax"
            ),
            message="spec.autoscaling.headroomPrior must not exceed spec.autoscaling.headroomMax",
            check=lambda a: a.headroom_prior <= a.headroom_max,
            field_path=".headroomPrior",
        ),
    )

    enabled: bool = False
    """Let Tidal write ``spec.replicas``; when false the replica count is left to you (or
    ``kubectl scale``)."""
    targets: AutoscalingTargets = Field(default_factory=AutoscalingTargets)
    """Targets for the scaling signals."""
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    """No change while the worst signal/target ratio stays within 1 ± tolerance."""
    panic_threshold: float = Field(default=2.0, gt=1)
    """A ratio at or above this scales up at once, past the step limit (panic mode)."""
    panic_window_seconds: float = Field(default=6.0, ge=0)
    """After a panic, no scale-down for this many seconds."""
    scale_up_stabilization_seconds: float = Field(default=0.0, ge=0)
    """Scale up to the lowest recommendation over this window (0: immediately)."""
    scale_down_stabilization_seconds: float = Field(default=300.0, ge=0)
    """Scale down only to the highest recommendation over this window."""
    scale_down_consecutive: int = Field(default=3, ge=1)
    """Consecutive below-target decisions required before a scale-down."""
    max_scale_up_step: int = Field(default=4, ge=1)
    """Most replicas added by one decision (outside panic)."""
    max_scale_down_step: int = Field(default=1, ge=1)
    """Most replicas removed by one decision."""
    metrics_stale_after_seconds: float = Field(default=60.0, gt=0)
    """Metrics older than this count as missing: replicas are held and ``MetricsAvailable`` is False."""
    cold_start_seconds: PositiveFloat | None = None
    """Expected time from a new replica to ready; measured from pod conditions when unset."""
    replica_warmup_seconds: float = Field(default=60.0, ge=0)
    """A replica ready for less than this is not compared with its peers for ``ReplicaDegraded`` (cold
    caches and few requests right after a scale-up)."""
    headroom_prior: float = Field(default=3.0, ge=1, le=10)
    """Demand growth within one provisioning lead time to keep capacity for while this deployment's own
    history is short (3.0: the demand may triple before a new replica is ready, as in the recurring 3-4x
    bursts of LLM chat traffic). Its weight falls as the history grows (half after 4 lead times); growth
    the history shows always counts. Lower it for traffic known to be smooth from the first minutes (its
    cost: about a third more replicas for the first quarter hour); raise it for traffic that bursts harder."""
    headroom_max: float = Field(default=10.0, ge=1, le=10)
    """The most standing capacity kept for demand growth, as a multiple of the base demand (the median over
    the last five minutes): a cost bound on the headroom the history and the attainment feedback ask for.
    1 turns the standing headroom off (purely reactive scaling: bursts shorter than a cold start land on
    the replicas already there); 10, the default, leaves the headroom to the SLO-attainment target."""
    prometheus: PrometheusSource = Field(default_factory=PrometheusSource)
    """The Prometheus to query."""


class Recommendation(ApiModel):
    """How engine settings left ``"auto"`` are chosen."""

    mode: RecommendationMode = "Advise"
    """``Advise`` writes the recommendation to ``status.recommendation`` only; ``Apply`` also uses it for the
    settings left ``"auto"`` (explicit settings always win), and applies engine advice from live metrics to
    them (``status.engineTuning``: bounded, one change per cool-down, rolled out like any spec change)."""
    expected_input_tokens: int = Field(default=1024, ge=1)
    """Typical prompt length, in tokens, the recommendation is sized for."""
    expected_output_tokens: int = Field(default=256, ge=1)
    """Typical output length, in tokens."""
