"""Replays every measured vLLM v0.19.0 run of the calibration set through the recommender.

``tests/data/vllm-memory-h100`` is a copy of ``shared/data/vllm-memory-h100`` (26 server starts of five
models on H100 80GB, parsed from public vLLM logs; see its README). Each run goes through ``recommend`` with
the run's own TP, PP, max_model_len, gpu_memory_utilization, max_num_seqs, max_num_batched_tokens, dtype,
runtime quantization and KV cache dtype, on a GPU whose memory is the run's physical total (79.19 GiB).

The thresholds come from issue 15 and were fixed BEFORE the overhead constants were fitted:
every run's weights within 2 %, KV GiB within 4 % (error over max(measured, 10 GiB)), mean KV error within
1.5 %. The KV measured value is the smallest stage's ("the smallest stage decides" with PP). This set is
in-sample (the constants in ``overheads.py`` were fitted on it); other measured runs are held out by the
project to judge the fit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tidal.recommender.gpus import get_gpu
from tidal.recommender.models import load_profile
from tidal.recommender.recommend import RecommendInput, recommend

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm-memory-h100"
WEIGHTS_MAX_ERROR = 0.02
KV_MAX_ERROR = 0.04
KV_MEAN_ERROR = 0.015
KV_ERROR_FLOOR_GIB = 10.0


def _runs() -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads((DATA / "runs.json").read_text())["runs"]
    return runs


def _replay(run: dict[str, Any]) -> tuple[float, float, int]:
    """(weights GiB/GPU, KV GiB/GPU, KV tokens) the recommender predicts for ``run``'s settings."""
    profile = load_profile(DATA / run["config"])
    gpu = dataclasses.replace(get_gpu("H100-80GB"), memory_gib=run["gpu_total_gib"])
    rec = recommend(
        RecommendInput(
            model=profile,
            gpu=gpu,
            tp=run["tp"],
            pp=run["pp"],
            gpu_memory_utilization=run["gpu_memory_utilization"],
            max_model_len=run["max_model_len"],
            max_num_seqs=run["max_num_seqs"],
            max_num_batched_tokens=run["max_num_batched_tokens"],
            dtype=run["dtype"],
            quantization=run["quantization"],
            kv_cache_dtype=run["kv_cache_dtype"],
            enforce_eager=run["enforce_eager"],
        )
    )
    return rec.weights_gib_per_gpu, rec.kv_cache_gib_per_gpu, rec.kv_cache_tokens


def _measured_kv(run: dict[str, Any]) -> float:
    return float(min(rank["kv_budget_gib_derived"] for rank in run["per_rank"]))


def test_the_calibration_set_is_all_there() -> None:
    runs = _runs()
    assert len(runs) == 26
    assert {r["model_short"] for r in runs} == {
        "llama-3.1-8b",
        "qwen2.5-7b",
        "mixtral-8x7b",
        "qwen3-30b-a3b",
        "gemma-2-9b",
    }
    assert {r["vllm_version"] for r in runs} == {"v0.19.0"}


@pytest.mark.parametrize(
    "run", _runs(), ids=lambda r: f"{r['model_short']}-tp{r['tp']}pp{r['pp']}-{r['dtype']}"
)
def test_each_run_weights_and_kv(run: dict[str, Any]) -> None:
    weights, kv, tokens = _replay(run)
    measured_kv = _measured_kv(run)
    assert abs(weights - run["weights_gib"]) / run["weights_gib"] <= WEIGHTS_MAX_ERROR, (weights, run)
    assert abs(kv - measured_kv) / max(measured_kv, KV_ERROR_FLOOR_GIB) <= KV_MAX_ERROR, (kv, measured_kv)
    # vLLM's own "GPU KV cache size: N tokens" line follows from the KV GiB (also hybrid Gemma-2 groups).
    assert tokens == pytest.approx(run["kv_cache_tokens"], rel=KV_MAX_ERROR)


def test_mean_kv_error_over_the_set() -> None:
    errors = []
    for run in _runs():
        _, kv, _ = _replay(run)
        measured = _measured_kv(run)
        errors.append(abs(kv - measured) / max(measured, KV_ERROR_FLOOR_GIB))
    assert sum(errors) / len(errors) <= KV_MEAN_ERROR
