"""Issue 15 must-show 2: the online KV-capacity check against the real engine, through the real Prometheus.

A real worker (the tiny Llama on vLLM's CPU build, started as a pod starts it, with an exact KV budget of
64 MiB: ``TIDAL_KV_CACHE_MEMORY_BYTES``, which the pod contract turns into ``--kv-cache-memory-bytes``) is
scraped by a real Prometheus that labels its series as the chart's PodMonitor labels an in-cluster pod. The
operator's own reader (:func:`tidal.shell.kvcapacity.read_kv_reports`) reads ``vllm:cache_config_info``
(``num_gpu_blocks`` x ``block_size``; on the CPU build the CPU KV cache), and the planner
(:func:`tidal.plan.kvcapacity.kv_capacity_update`) sets it beside the memory model's prediction for a
deployment of that architecture with the same budget (``spec.engine.extraArgs``), as ``status.kvCapacity``.

With an explicit budget the engine's token count is exact (``floor(bytes / (bytes per token x block)) x
block``), so the prediction must agree within 1 % (the threshold of tests/engine/test_recommender_kv.py, fixed
before this test ran): no Event. A deployment that declares half the budget is predicted at half the capacity:
the same real report is then a mismatch (a ``KVCapacityMismatch`` Warning Event), and the next recommendation
sizes ``max_num_seqs``/``max_model_len`` with the measured capacity.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.engine import DEFAULT_KV_CACHE_BYTES, WorkerHandle, tiny_model_dir, tiny_worker
from tests.support.fakevllm import worker_labels
from tests.support.prometheus import PrometheusServer, ScrapeTarget, running_prometheus

from tidal.api import LLMDeployment
from tidal.api.status import LLMDeploymentStatus
from tidal.plan import resolve
from tidal.plan.kvcapacity import KV_CAPACITY_MISMATCH, kv_capacity_update
from tidal.recommender.kvcheck import EngineKV
from tidal.shell.kvcapacity import read_kv_reports
from tidal.shell.prom import PrometheusSignals
from tidal.shell.promaccess import PrometheusAccess

__all__ = ["tiny_model_dir", "tiny_worker"]

pytestmark = [pytest.mark.engine, pytest.mark.metrics, pytest.mark.slow]

NS, NAME, POD = "team-kv", "tiny", "tiny-r0"
STAMP = "2026-12-07T00:00:00Z"


@pytest.fixture(scope="module")
def prom(tiny_worker: WorkerHandle) -> Iterator[PrometheusServer]:
    target = ScrapeTarget("worker", [f"127.0.0.1:{tiny_worker.port}"], worker_labels(NS, NAME, 0, POD))
    with running_prometheus([target]) as server:
        server.wait_for_targets_up(timeout=60)
        yield server


def _deployment(kv_bytes: int) -> LLMDeployment:
    """An LLMDeployment of the tiny model's architecture (tests/support/tinymodel.py defaults)."""
    return LLMDeployment.model_validate(
        {
            "apiVersion": "tidal.dev/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": NAME, "namespace": NS, "generation": 1},
            "spec": {
                "model": {
                    "uri": "pvc://models/tiny",
                    "architecture": {
                        "numLayers": 2,
                        "hiddenSize": 256,
                        "numAttentionHeads": 4,
                        "numKeyValueHeads": 2,
                        "headDim": 64,
                        "vocabSize": 512,
                        "intermediateSize": 512,
                        "maxPositionEmbeddings": 2048,
                    },
                },
                "resources": {"gpuType": "H100-80GB"},
                "engine": {"extraArgs": ["--kv-cache-memory-bytes", str(kv_bytes)]},
                "recommendation": {"mode": "Apply"},
            },
        }
    )


def _reports(prom: PrometheusServer, timeout: float = 60.0) -> list[EngineKV]:
    reader = PrometheusSignals(access=PrometheusAccess(allow=(prom.url,)))  # the operator's allowlist
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports = read_kv_reports(reader, prom.url, NS, NAME, "", {POD})
        if reports:
            return reports
        time.sleep(0.5)
    raise AssertionError(f"no vllm:cache_config_info for {POD} in {timeout:.0f}s: {prom.vector('up')}")


def _check(kv_bytes: int, reports: list[EngineKV], old: dict[str, Any] | None = None) -> Any:
    deployment = _deployment(kv_bytes)
    engine = resolve(deployment, [], _now()).target.inputs.engine
    return kv_capacity_update(deployment, engine, reports, old, STAMP)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 12, 7, tzinfo=UTC)


@pytest.mark.timeout(400)
def test_engine_kv_capacity_beside_the_prediction(prom: PrometheusServer, tiny_worker: WorkerHandle) -> None:
    reports = _reports(prom)
    assert [r.pod for r in reports] == [POD]
    engine_kv = reports[0]
    logged = tiny_worker.log_text()
    print(
        f"engine reports {engine_kv.num_blocks} blocks x {engine_kv.block_size} = {engine_kv.tokens:,} tokens"
    )
    assert f"KV cache size: {engine_kv.tokens:,} tokens" in logged  # the metric is the engine's own number

    update = _check(DEFAULT_KV_CACHE_BYTES, reports)
    status = LLMDeploymentStatus.model_validate({"kvCapacity": update.status})
    kv = status.kv_capacity
    assert kv is not None
    print(
        f"status.kvCapacity: predicted {kv.predicted_tokens:,}, measured {kv.measured_tokens:,}: {kv.message}"
    )
    assert kv.measured_tokens == engine_kv.tokens and kv.pod == POD and kv.engines == 1
    assert abs(kv.predicted_tokens - kv.measured_tokens) <= 0.01 * kv.measured_tokens
    assert not kv.mismatch and kv.tokens_in_use is None and update.events == []

    # Half the budget declared: the same real report is a mismatch, with an Event, and is used from then on.
    off = _check(DEFAULT_KV_CACHE_BYTES // 2, reports)
    bad = LLMDeploymentStatus.model_validate({"kvCapacity": off.status}).kv_capacity
    assert bad is not None
    print(f"declared half the budget: predicted {bad.predicted_tokens:,}, measured {bad.measured_tokens:,}")
    assert bad.mismatch and bad.tokens_in_use == engine_kv.tokens
    assert [(e.type, e.reason) for e in off.events] == [("Warning", KV_CAPACITY_MISMATCH)]
    deployment = _deployment(DEFAULT_KV_CACHE_BYTES // 2)
    deployment = LLMDeployment.model_validate({**deployment.to_dict(), "status": {"kvCapacity": off.status}})
    rec = resolve(deployment, [], _now()).target.recommendation
    assert rec is not None
    assert rec.status.arithmetic["kvCacheTokens"] == engine_kv.tokens
