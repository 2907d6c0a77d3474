"""The step latency model: never below physics, fitted to measured H100 steps, predicting measured H200 steps,
calibrated variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidal.recommender.catalog import catalog_names, catalog_profile
from tidal.recommender.gpus import get_gpu
from tidal.recommender.perf import PerformanceModel, performance_model, predict

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("name", catalog_names())
@pytest.mark.parametrize(("gpu", "tp"), [("H100-80GB", 8), ("A100-80GB", 4), ("L4", 1), ("MI300X", 2)])
def test_step_never_beats_the_physical_floor(name: str, gpu: str, tp: int) -> None:
    profile = catalog_profile(name)
    if profile.num_attention_heads % tp:
        tp = 1
    pm = performance_model(profile, get_gpu(gpu), tp=tp)
    for prefill in (0, 1, 512, 8192):
        for decode in (0, 1, 64, 1024):
            for kv in (0, 1000, 1_000_000):
                step = pm.step_seconds(prefill, decode, kv)
                floor = pm.physical_floor_seconds(prefill, decode, kv)
                assert floor > 0 and step >= floor


def test_step_grows_with_batch_context_and_prefill() -> None:
    pm = performance_model(catalog_profile("Llama-3.1-8B"), get_gpu("H100-80GB"))
    steps = [pm.step_seconds(0, b, b * 1024) for b in (1, 8, 64, 256)]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    assert pm.step_seconds(0, 32, 32 * 4096) > pm.step_seconds(0, 32, 32 * 512)
    assert pm.step_seconds(4096, 32, 0) > pm.step_seconds(512, 32, 0)


@pytest.mark.parametrize(
    ("data_file", "gpu"),
    [
        # The model's efficiency constants were fitted to these H100 steps...
        ("h100_llama31_8b_steps.json", "H100-80GB"),
        # ...and predict H200 steps (measured later, never fitted) from its datasheet bandwidth and FLOP/s.
        ("h200_llama31_8b_steps.json", "H200"),
    ],
)
def test_llama_8b_matches_measured_steps(data_file: str, gpu: str) -> None:
    data = json.loads((DATA_DIR / data_file).read_text())
    pm = performance_model(catalog_profile("Llama-3.1-8B"), get_gpu(gpu))
    assert pm.weight_bytes_read(1) == pytest.approx(data["weight_bytes"], rel=0.005)
    for row in data["decode"]:
        pred = pm.step_seconds(0, row["batch"], row["batch"] * row["context"])
        assert pred == pytest.approx(row["seconds"], rel=0.10), row
    for row in data["prefill"]:
        assert pm.step_seconds(row["tokens"], 0, row["tokens"]) == pytest.approx(row["seconds"], rel=0.10)


def test_moe_reads_only_routed_experts() -> None:
    pm = performance_model(catalog_profile("Mixtral-8x7B"), get_gpu("H100-80GB"), tp=2)
    one, many = pm.weight_bytes_read(1), pm.weight_bytes_read(256)
    assert one < many and many == pytest.approx(pm.dense_weight_bytes + 32 * 8 * pm.expert_bytes, rel=1e-6)
    assert one == pytest.approx(pm.dense_weight_bytes + 32 * 2 * pm.expert_bytes, rel=1e-6)


def test_tensor_parallel_speeds_up_decode() -> None:
    p = catalog_profile("Llama-3.1-70B")
    tp4 = performance_model(p, get_gpu("H100-80GB"), tp=4).step_seconds(0, 64, 64 * 2048)
    tp8 = performance_model(p, get_gpu("H100-80GB"), tp=8).step_seconds(0, 64, 64 * 2048)
    assert tp8 < tp4


def test_calibrated_model() -> None:
    pm = PerformanceModel.calibrated(0.01, 0.002, 0.0005, kv_s_per_token=1e-6)
    assert pm.step_seconds(100, 4, 1000) == pytest.approx(0.01 + 4 * 0.002 + 100 * 0.0005 + 1000 * 1e-6)
    assert pm.physical_floor_seconds(100, 4, 1000) == 0.0
    floored = PerformanceModel.calibrated(
        0.0, 0.0, 0.0, weight_bytes=3e6, bandwidth_bytes_per_s=1e9, peak_flops=1e11, params=1.5e6
    )
    assert floored.physical_floor_seconds(0, 1, 0) == pytest.approx(3e-3)
    assert floored.step_seconds(0, 1, 0) == pytest.approx(3e-3)  # never below the floor


def test_predict_latency_and_throughput() -> None:
    pm = performance_model(catalog_profile("Llama-3.1-8B"), get_gpu("H100-80GB"))
    small, big = predict(pm, 8, 1024, 256, 8192), predict(pm, 256, 1024, 256, 8192)
    assert small.tpot_seconds < big.tpot_seconds
    assert small.output_tokens_per_second < big.output_tokens_per_second
    assert big.output_tokens_per_second == pytest.approx(256 / big.tpot_seconds)
    assert big.prefill_tokens_per_step == 1024
    long_prompt = predict(pm, 8, 32768, 256, 8192)
    assert long_prompt.ttft_seconds > 4 * long_prompt.step_seconds * 0.9  # 4+ chunks of 8,184 tokens
