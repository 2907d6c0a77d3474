"""Read the engines' reported KV capacity from Prometheus for the online check (:mod:`tidal.plan.kvcapacity`).

vLLM exports its cache configuration once at start-up as the info gauge ``vllm:cache_config_info`` (value 1),
its numbers in the labels ``num_gpu_blocks`` and ``block_size`` (on vLLM's CPU build ``num_gpu_blocks`` counts
the CPU KV cache's blocks). One query per autoscaler pass reads them for the deployment's worker series
(the label contract of :mod:`tidal.shell.prom`); only the pods the planner names (ready replicas at the
target's spec hash) count.

Its own module (not :mod:`tidal.shell.prom`) because the check is not a scaling signal: a failure here is
logged and skipped, it never makes the autoscaler's metrics unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any, Final

from tidal.recommender.kvcheck import EngineKV
from tidal.shell.prom import PrometheusSignals, matchers

log = logging.getLogger(__name__)

CACHE_INFO: Final = "vllm:cache_config_info"
KV_CAPACITY_QUERY: Final = f"max by (pod, num_gpu_blocks, block_size) ({CACHE_INFO}{{{{{{m}}}}}})"
"""The reported capacity per pod (``{m}``: the deployment's matchers)."""


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def parse_reports(result: list[dict[str, Any]], pods: Collection[str]) -> list[EngineKV]:
    """One :class:`EngineKV` per series of a pod in ``pods`` with integer ``num_gpu_blocks`` and
    ``block_size`` labels (an engine still profiling reports ``num_gpu_blocks="None"``: left out)."""
    out: list[EngineKV] = []
    for series in result:
        labels = series.get("metric") or {}
        pod = str(labels.get("pod", ""))
        blocks, size = _int(labels.get("num_gpu_blocks")), _int(labels.get("block_size"))
        if pod in pods and blocks is not None and size is not None:
            out.append(EngineKV(pod, blocks, size))
    return out


def read_kv_reports(
    reader: PrometheusSignals,
    url: str,
    namespace: str,
    deployment_label: str,
    selector: str,
    pods: Collection[str],
) -> list[EngineKV]:
    """The reports of ``pods`` (empty when none reported yet, or when Prometheus cannot be read: logged)."""
    if not pods:
        return []
    expr = KV_CAPACITY_QUERY.format(m=matchers(namespace, deployment_label, selector))
    try:
        result: list[dict[str, Any]] = reader.client(url).custom_query(expr)
    except Exception as exc:  # requests/API errors: the check waits for the next pass
        log.warning("%s/%s: KV capacity not read from %s: %s", namespace, deployment_label, url, exc)
        return []
    return parse_reports(result, pods)


__all__ = ["CACHE_INFO", "KV_CAPACITY_QUERY", "parse_reports", "read_kv_reports"]
