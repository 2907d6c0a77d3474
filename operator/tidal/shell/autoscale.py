"""One autoscaler pass for one ``LLMDeployment``: read Prometheus, decide, and write ``spec.replicas``.

The handlers run :func:`autoscale_pass` (synchronous: call it through ``asyncio.to_thread``) inside the
deployment's reconcile, every :func:`interval_seconds` when ``spec.autoscaling.enabled``. The decision is
the pure algorithm's (:func:`tidal.scaling.compute_desired_replicas`), its inputs and outputs the pure glue's
(:mod:`tidal.plan.autoscale`); this module only does the I/O: the Prometheus query, the merge patch of
``spec.replicas`` on the main resource (as the HPA does; the scale subresource stays usable when
autoscaling is off), and the operator's reason-labelled metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from tidal.api import GROUP, PLURAL, VERSION, LLMDeployment
from tidal.builders.names import label_value
from tidal.plan import NodeInfo
from tidal.plan.autoscale import (
    AutoscalerPatch,
    alive_replicas,
    autoscaler_patch,
    capacity_view,
    free_gpus,
    load_state,
    scaling_config,
)
from tidal.plan.reconcile import Target, node_matches
from tidal.scaling import FleetObservation, ScalingDecision, compute_desired_replicas
from tidal.shell import metrics
from tidal.shell.kube import MERGE, Kube
from tidal.shell.prom import PrometheusSignals

log = logging.getLogger(__name__)

INTERVAL_ENV: Final = "TIDAL_AUTOSCALER_INTERVAL_SECONDS"
DEFAULT_INTERVAL_S: Final = 15.0


def interval_seconds() -> float:
    """Seconds between autoscaler passes of one deployment (``$TIDAL_AUTOSCALER_INTERVAL_SECONDS``, 15)."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError as exc:
        raise ValueError(f"{INTERVAL_ENV}={raw!r} is not a number of seconds") from exc
    if value <= 0:
        raise ValueError(f"{INTERVAL_ENV} must be > 0, got {value}")
    return value


@dataclass(frozen=True)
class PassResult:
    """A decision and what it writes."""

    decision: ScalingDecision
    patch: AutoscalerPatch
    observation: FleetObservation | None


def autoscale_pass(
    deployment: LLMDeployment,
    target: Target,
    status: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    all_worker_pods: Sequence[Mapping[str, Any]],
    nodes: Sequence[NodeInfo] | None,
    reader: PrometheusSignals,
    now: float,
    now_dt: datetime,
    stamp: str,
) -> PassResult:
    """Observe Prometheus and decide (blocking I/O: run it in a thread)."""
    spec = deployment.spec
    name = deployment.metadata.name or ""
    ns = deployment.metadata.namespace or "default"
    prom = spec.autoscaling.prometheus
    obs, error = reader.observe(prom.url, ns, label_value(name), prom.selector, pod_prefix=name)
    config = scaling_config(deployment, target.inputs.engine.max_num_seqs)
    gpr = target.inputs.engine.world_size
    matching = None if nodes is None else [n for n in nodes if node_matches(n, deployment)]
    capacity = capacity_view(spec.replicas, pods, now_dt, gpr, free_gpus(matching, all_worker_pods))
    decision = compute_desired_replicas(config, obs, capacity, load_state(status), now)
    gpus_in_use = alive_replicas(pods, now_dt) * gpr
    patch = autoscaler_patch(decision, config, obs, status, now, stamp, gpus_in_use, error)
    return PassResult(decision, patch, obs)


def patch_replicas(kube: Kube, namespace: str, name: str, replicas: int) -> None:
    """Merge-patch ``spec.replicas`` on the LLMDeployment (the autoscaler's one write to the spec)."""
    metrics.KUBE_REQUESTS.labels("patch", "llmdeployments", namespace).inc()
    kube.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"spec": {"replicas": replicas}},
        _content_type=MERGE,
        _preload_content=False,
    )


def export_metrics(namespace: str, name: str, result: PassResult) -> None:
    """Reason-labelled decision counter, signal ratios, degraded replicas and GPU-hours."""
    d = result.decision
    metrics.SCALING_DECISIONS.labels(namespace, name, d.reason.value).inc()
    metrics.AUTOSCALER_DECISIONS.labels(d.reason.value).inc()
    for signal, ratio in d.ratios.items():
        metrics.SIGNAL_RATIO.labels(namespace, name, signal).set(ratio)
    metrics.DEGRADED_REPLICAS.labels(namespace, name).set(len(d.sick_replicas))
    if result.patch.gpu_hours_delta > 0:
        metrics.GPU_HOURS.labels(namespace, name).inc(result.patch.gpu_hours_delta)
    for cond in result.patch.conditions:
        metrics.CONDITION.labels(namespace, name, cond.type).set(1 if cond.status else 0)


__all__ = [
    "DEFAULT_INTERVAL_S",
    "INTERVAL_ENV",
    "PassResult",
    "autoscale_pass",
    "export_metrics",
    "interval_seconds",
    "patch_replicas",
]
