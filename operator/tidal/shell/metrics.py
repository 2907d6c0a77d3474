"""The operator's own Prometheus metrics, defined once so handlers, the chart's alerts and the
Grafana dashboard all agree on names and labels.

Labels are bounded: ``namespace``/``name`` of an LLMDeployment (one series per deployment) and a
CamelCase ``reason`` or ``result`` from a closed set of constants.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "tidal_reconcile_total",
    "Reconciles of LLMDeployments, by result (Success, Requeue, Error).",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "tidal_reconcile_errors_total",
    "Reconciles that raised, by exception class.",
    ["error"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "tidal_reconcile_duration_seconds",
    "Wall time of one reconcile (observe, plan, apply, status).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
DESIRED_REPLICAS = Gauge(
    "tidal_deployment_desired_replicas",
    "Replicas the operator wants for an LLMDeployment.",
    ["namespace", "name"],
    registry=REGISTRY,
)
READY_REPLICAS = Gauge(
    "tidal_deployment_ready_replicas",
    "Replicas of an LLMDeployment whose workers are all ready.",
    ["namespace", "name"],
    registry=REGISTRY,
)
CONDITION = Gauge(
    "tidal_deployment_condition",
    "1 when the condition type has status True, else 0 (Ready, Progressing, Degraded, "
    "ScalingActive, MetricsAvailable, InsufficientGPU).",
    ["namespace", "name", "condition"],
    registry=REGISTRY,
)
SCALING_DECISIONS = Counter(
    "tidal_scaling_decisions_total",
    "Autoscaler decisions, by reason (ScaledUp, ScaledDown, WithinTolerance, ScaleBlocked, "
    "InsufficientGPU, MetricsStale, ...), including non-decisions.",
    ["namespace", "name", "reason"],
    registry=REGISTRY,
)
AUTOSCALER_DECISIONS = Counter(
    "tidal_autoscaler_decisions_total",
    "Autoscaler passes over all deployments, by the decision's reason (ScaledUp, ScaledDown, "
    "WithinTolerance, StabilizationWindow, ColdStartPending, InsufficientGPU, MetricsStale, ...).",
    ["reason"],
    registry=REGISTRY,
)
SIGNAL_RATIO = Gauge(
    "tidal_autoscaler_signal_ratio",
    "Observed value of a scaling signal divided by its target (1.0 = on target).",
    ["namespace", "name", "signal"],
    registry=REGISTRY,
)
DEGRADED_REPLICAS = Gauge(
    "tidal_degraded_replicas",
    "Replicas flagged as degraded (crash loop, OOM, or latency far worse than peers).",
    ["namespace", "name"],
    registry=REGISTRY,
)
HEADROOM_FACTOR = Gauge(
    "tidal_autoscaler_headroom_factor",
    "Capacity kept over the base demand for the demand growth within one provisioning lead time.",
    ["namespace", "name"],
    registry=REGISTRY,
)
HEADROOM_LEAD_TIME = Gauge(
    "tidal_autoscaler_lead_time_seconds",
    "Provisioning lead time behind the headroom: the cold start plus the detection delay.",
    ["namespace", "name"],
    registry=REGISTRY,
)
HEADROOM_HISTORY = Gauge(
    "tidal_autoscaler_demand_history_seconds",
    "Span of the demand history (read from Prometheus) behind the headroom.",
    ["namespace", "name"],
    registry=REGISTRY,
)
GPU_HOURS = Counter(
    "tidal_gpu_hours_total",
    "GPU-hours consumed by an LLMDeployment's running workers, as accounted by the operator.",
    ["namespace", "name"],
    registry=REGISTRY,
)
KUBE_REQUESTS = Counter(
    "tidal_kube_requests_total",
    "Kubernetes API requests the operator's reconciles made (watches excluded), by verb, resource and the "
    "namespace of the LLMDeployment they were made for.",
    ["verb", "resource", "namespace"],
    registry=REGISTRY,
)
