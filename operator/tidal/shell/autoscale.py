"""One autoscaler pass for one ``LLMDeployment``: read Prometheus, decide, and write ``spec.replicas``.

The handlers run :func:`autoscale_pass` (synchronous: call it through ``asyncio.to_thread``) inside the
deployment's reconcile, every :func:`interval_seconds` when ``spec.autoscaling.enabled``. The decision is
the pure algorithm's (:func:`tidal.scaling.compute_desired_replicas`), its inputs and outputs the pure glue's
(:mod:`tidal.plan.autoscale`), all from the reconcile pass's one :class:`~tidal.plan.target.Resolved`; this
module only does the I/O: the Prometheus query, the list of every pod that requests GPUs (other workloads
share the GPU nodes: free GPUs must subtract them too), the merge patch of ``spec.replicas`` on the main
resource (as the HPA does; the scale subresource stays usable when autoscaling is off), and the operator's
reason-labelled metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from tidal.api import GROUP, PLURAL, VERSION, LLMDeployment
from tidal.builders.names import label_value
from tidal.plan import NodeInfo, Observed, rfc3339
from tidal.plan.autoscale.config import replica_capacity, scaling_config
from tidal.plan.autoscale.observe import (
    alive_replicas,
    capacity_view,
    free_gpus,
    load_state,
    merge_pods,
    replica_ages,
    with_replica_ages,
)
from tidal.plan.autoscale.status import (
    AUTOSCALER_FAILED,
    AutoscalerPatch,
    autoscaler_patch,
    failed_pass_patch,
    with_kv_capacity,
)
from tidal.plan.autoscale.tuning import engine_tuning
from tidal.plan.kvcapacity import kv_capacity_update, reporting_pods
from tidal.plan.replicas import pod_gpus
from tidal.plan.target import Resolved, node_matches
from tidal.scaling import FleetObservation, ScalingDecision, compute_desired_replicas
from tidal.shell import metrics
from tidal.shell.history import HISTORY
from tidal.shell.kube import MERGE, Kube
from tidal.shell.kvcapacity import read_kv_reports
from tidal.shell.prom import DEFAULT_RATE_WINDOW, PrometheusSignals, matchers

log = logging.getLogger(__name__)

INTERVAL_ENV: Final = "TIDAL_AUTOSCALER_INTERVAL_SECONDS"
DEFAULT_INTERVAL_S: Final = 15.0
GPU_PODS_TTL_S: Final = 5.0
"""How long one cluster-wide list of GPU pods serves the passes of every deployment."""
LIVE_PODS: Final = "status.phase!=Succeeded,status.phase!=Failed"


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


class GpuPods:
    """Every non-terminated pod in the cluster that requests ``nvidia.com/gpu`` (Tidal's or not), listed at
    most every :data:`GPU_PODS_TTL_S` from the API server's watch cache (``resourceVersion=0``), slimmed to
    what the free-GPU arithmetic reads."""

    def __init__(self, ttl: float = GPU_PODS_TTL_S) -> None:
        self.ttl = ttl
        self._at = -1e18
        self._pods: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def get(self, kube: Kube) -> list[dict[str, Any]] | None:
        """The GPU pods (the previous list when listing fails), or ``None`` when they were never listed (the
        caller falls back to its own pods)."""
        with self._lock:
            if time.monotonic() - self._at < self.ttl:
                return self._pods
            try:
                metrics.KUBE_REQUESTS.labels("list", "pods", "").inc()
                resp: Any = kube.core.list_pod_for_all_namespaces(
                    field_selector=LIVE_PODS, resource_version="0", _preload_content=False
                )
                items = json.loads(resp.data).get("items") or []
                self._pods = [_slim(p) for p in items if pod_gpus(p) > 0]
            except Exception as exc:  # API errors, RBAC: the last list, else Tidal's own pods only
                log.warning(
                    "could not list GPU pods (free GPUs use %s): %s",
                    "the previous list" if self._pods is not None else "Tidal's workers only",
                    exc,
                )
            self._at = time.monotonic()
            return self._pods


def _slim(pod: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": {
            "nodeName": spec.get("nodeName"),
            "nodeSelector": spec.get("nodeSelector"),
            "containers": [{"resources": c.get("resources") or {}} for c in spec.get("containers") or []],
        },
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


GPU_PODS = GpuPods()
"""The operator's one cache of the cluster's GPU pods."""


@dataclass(frozen=True)
class PassResult:
    """A decision and what it writes."""

    decision: ScalingDecision
    patch: AutoscalerPatch
    observation: FleetObservation | None


def autoscale_pass(
    deployment: LLMDeployment,
    resolved: Resolved,
    status: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    all_worker_pods: Sequence[Mapping[str, Any]],
    nodes: Sequence[NodeInfo] | None,
    reader: PrometheusSignals,
    now: float,
    now_dt: datetime,
    stamp: str,
    kube: Kube | None = None,
) -> PassResult:
    """Observe Prometheus (and, with ``kube``, the cluster's GPU pods) and decide (blocking I/O: run it in a
    thread). ``resolved``: the pass's target and the replica views of ``pods``. The same pass reads the ready
    engines' KV capacity for the online check (``status.kvCapacity``)."""
    spec = deployment.spec
    target = resolved.target
    name = deployment.metadata.name or ""
    ns = deployment.metadata.namespace or "default"
    prom = spec.autoscaling.prometheus
    obs, error = reader.observe(prom.url, ns, label_value(name), prom.selector, pod_prefix=name)
    obs = with_replica_ages(obs, replica_ages(pods, now_dt))
    engine = target.inputs.engine
    load = replica_capacity(deployment, engine, target.recommendation)
    rec = target.recommendation
    rec_mbt = rec.values.get("max_num_batched_tokens") if rec is not None and rec.status.feasible else None
    config = scaling_config(
        deployment,
        engine.max_num_seqs,
        engine.gpu_memory_utilization,
        load.capacity,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        recommended_max_num_batched_tokens=None if rec_mbt is None else int(rec_mbt),
    )
    gpr = engine.world_size
    matching = None if nodes is None else [n for n in nodes if node_matches(n, deployment)]
    gpu_pods = GPU_PODS.get(kube) if kube is not None else None
    holders = merge_pods(all_worker_pods, gpu_pods or [])
    capacity = capacity_view(spec.replicas, resolved.views, pods, gpr, free_gpus(matching, holders))
    key = (ns, name)
    per_replica = (
        None
        if load.capacity is None
        else (load.capacity.prefill_tokens_per_s, load.capacity.decode_tokens_per_s)
    )

    def range_query(expr: str, start: datetime, end: datetime, step: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = reader.client(prom.url).custom_query_range(expr, start, end, step)
        return result

    sel = matchers(ns, label_value(name), prom.selector)
    window = str(getattr(reader, "window", DEFAULT_RATE_WINDOW))  # test doubles may not carry one
    # A Prometheus outside the allowlist is never queried (observe already held the deployment).
    access = getattr(reader, "access", None)  # test doubles may not carry one
    allowed = access is None or access.allows(prom.url)
    past = HISTORY.get(key, range_query, sel, window, per_replica, now) if allowed else []
    decision = compute_desired_replicas(config, obs, capacity, load_state(status), now, past)
    HISTORY.record(key, now, decision.demand)
    gpus_in_use = alive_replicas(resolved.views) * gpr
    tuning = engine_tuning(deployment, decision, status, now, pods, target)
    reports = read_kv_reports(
        reader, prom.url, ns, label_value(name), prom.selector, reporting_pods(resolved.views.values(),
        target.spec_hash),
    ) if allowed else []  # fmt: skip
    kv = kv_capacity_update(deployment, engine, reports, status, stamp)
    patch = autoscaler_patch(
        decision, config, obs, status, now, stamp, gpus_in_use, error, tuning, load.text, load.unreachable
    )
    patch = with_kv_capacity(patch, kv)
    return PassResult(decision, patch, obs)


def next_interval() -> float:
    """:func:`interval_seconds`, or the default (with a warning) when the variable is malformed: a bad
    setting must not stop the reconciles."""
    try:
        return interval_seconds()
    except ValueError as exc:
        log.warning("%s; using %gs", exc, DEFAULT_INTERVAL_S)
        return DEFAULT_INTERVAL_S


async def guarded_pass(
    kube: Kube,
    deployment: LLMDeployment,
    resolved: Resolved,
    observed: Observed,
    all_worker_pods: Sequence[Mapping[str, Any]],
    reader: PrometheusSignals,
    now: datetime,
    held: int,
) -> tuple[AutoscalerPatch, int | None]:
    """One pass off the event loop, and the merge patch of ``spec.replicas`` when the count changes: the
    patch for the planner and the count just patched (``None``: unchanged). A pass that raises (a bug, a spec
    no model handles) never stops the reconcile: one log line, ``ScalingActive=False``/``AutoscalerFailed``
    with the error (its transition posts a Warning Event), and the replicas held at ``held``."""
    ns, name = deployment.metadata.namespace or "default", deployment.metadata.name or ""
    try:
        result = await asyncio.to_thread(
            autoscale_pass,
            deployment,
            resolved,
            deployment.status.to_dict(),
            observed.pods,
            all_worker_pods,
            observed.nodes,
            reader,
            time.time(),
            now,
            rfc3339(now),
            kube,
        )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("%s/%s: autoscaler pass failed, replicas held at %d: %s", ns, name, held, error)
        metrics.AUTOSCALER_DECISIONS.labels(AUTOSCALER_FAILED).inc()
        return failed_pass_patch(held, error), None
    patched = None
    if result.decision.changed:
        await asyncio.to_thread(patch_replicas, kube, ns, name, result.decision.desired)
        patched = result.decision.desired
        log.info("%s/%s: %s", ns, name, result.decision.message)
    export_metrics(ns, name, result)
    return result.patch, patched


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
    if d.headroom is not None:
        metrics.HEADROOM_FACTOR.labels(namespace, name).set(d.headroom.factor)
        metrics.HEADROOM_LEAD_TIME.labels(namespace, name).set(d.headroom.lead_time_s)
        metrics.HEADROOM_HISTORY.labels(namespace, name).set(d.headroom.history_s)
    if result.patch.gpu_hours_delta > 0:
        metrics.GPU_HOURS.labels(namespace, name).inc(result.patch.gpu_hours_delta)
    for cond in result.patch.conditions:
        metrics.CONDITION.labels(namespace, name, cond.type).set(1 if cond.status else 0)


__all__ = [
    "DEFAULT_INTERVAL_S",
    "GPU_PODS",
    "INTERVAL_ENV",
    "GpuPods",
    "PassResult",
    "autoscale_pass",
    "export_metrics",
    "guarded_pass",
    "interval_seconds",
    "next_interval",
    "patch_replicas",
]
