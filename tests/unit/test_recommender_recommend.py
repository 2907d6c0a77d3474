"""recommend(): smallest fitting TP/PP, fixed values honoured, infeasible settings refused with reasons."""

from __future__ import annotations

import pytest

from tidal.recommender.catalog import catalog_names, catalog_profile
from tidal.recommender.gpus import get_gpu
from tidal.recommender.memory import check_tp
from tidal.recommender.recommend import (
    MAX_PP,
    RecommendInput,
    evaluate_parallelism,
    recommend,
)

H100 = get_gpu("H100-80GB")


def _inp(name: str, **kw: object) -> RecommendInput:
    return RecommendInput(model=catalog_profile(name), gpu=H100, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", catalog_names())
def test_catalogue_on_h100_is_feasible_with_smallest_fitting_parallelism(name: str) -> None:
    inp = _inp(name)
    rec = recommend(inp)
    assert rec.feasible, rec.reasons
    tp, pp = rec.tensor_parallel_size, rec.pipeline_parallel_size
    assert evaluate_parallelism(inp, tp, pp).fits
    # Every configuration tried before it (PP outer, TP inner, TP dividing the node) does not fit.
    for p in range(1, pp + 1):
        for t in (t for t in range(1, 9) if 8 % t == 0):
            if (p, t) >= (pp, tp):
                break
            assert not evaluate_parallelism(inp, t, p).fits, (t, p)
    # Sanity from first principles: the reserved memory of the GPUs used holds the weights.
    assert rec.weights_gib_per_gpu < 0.9 * H100.memory_gib
    assert check_tp(inp.model, tp) is None and tp <= 8 and pp <= MAX_PP
    assert rec.kv_cache_tokens >= rec.max_model_len
    assert rec.max_num_batched_tokens >= rec.max_num_seqs
    assert rec.predicted.tpot_seconds <= 0.1 and rec.predicted.ttft_seconds <= 2.0 and rec.slo_met


def test_expected_parallelism_for_well_known_models() -> None:
    # Derived from the memory model (not hard-coded guesses): see docs/recommender.md for the arithmetic.
    got = {
        n: (recommend(_inp(n)).tensor_parallel_size, recommend(_inp(n)).pipeline_parallel_size)
        for n in ("Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.1-405B", "DeepSeek-V3", "gpt-oss-120b")
    }
    assert got["Llama-3.1-8B"] == (1, 1)
    assert got["gpt-oss-120b"] == (1, 1)  # MXFP4 experts: ~61 GiB
    # 70B bf16: 131 GiB of weights -> TP2 starts but holds < 16 sequences, so TP4.
    fit2 = evaluate_parallelism(_inp("Llama-3.1-70B"), 2, 1)
    assert fit2.plan is not None and fit2.plan.kv_tokens > 0 and "min_concurrency" in fit2.reasons[0]
    assert got["Llama-3.1-70B"] == (4, 1)
    # 405B bf16 (~756 GiB) and DeepSeek-V3 fp8 (~625 GiB) exceed one node of 8 x 71 GiB: two nodes.
    assert got["Llama-3.1-405B"] == (8, 2)
    assert got["DeepSeek-V3"] == (8, 2)


def test_fp8_weights_halve_the_gpus() -> None:
    assert recommend(_inp("Llama-3.1-70B", quantization="fp8")).tensor_parallel_size == 2
    assert recommend(_inp("Llama-3.1-405B", quantization="fp8")).pipeline_parallel_size == 1


def test_fp8_kv_doubles_kv_tokens() -> None:
    # Same max_num_seqs: the sampler's profiling peak (and so the KV space) depends on it.
    auto = recommend(_inp("Llama-3.1-8B", max_num_seqs=256))
    fp8 = recommend(_inp("Llama-3.1-8B", kv_cache_dtype="fp8", max_num_seqs=256))
    assert fp8.kv_bytes_per_token * 2 == auto.kv_bytes_per_token
    assert fp8.kv_cache_tokens == pytest.approx(2 * auto.kv_cache_tokens, rel=0.001)


def test_fixed_tp_that_cannot_hold_the_weights_is_infeasible() -> None:
    rec = recommend(_inp("Llama-3.1-70B", tp=1, pp=1))
    assert not rec.feasible and rec.tensor_parallel_size == 1 and {"tp", "pp"} <= set(rec.fixed)
    assert any("exceed" in r and "no memory left for the KV cache" in r for r in rec.reasons)
    # With only TP fixed the recommender goes to pipeline stages instead.
    spread = recommend(_inp("Llama-3.1-70B", tp=1))
    assert spread.feasible and spread.tensor_parallel_size == 1 and spread.pipeline_parallel_size > 1


def test_max_model_len_the_kv_cannot_hold_is_infeasible() -> None:
    rec = recommend(_inp("Llama-3.1-8B", tp=1, pp=1, gpu_memory_utilization=0.25, max_model_len=131072))
    assert not rec.feasible
    assert any("max_model_len 131,072 needs" in r for r in rec.reasons)
    ok = recommend(_inp("Llama-3.1-8B", gpu_memory_utilization=0.25, max_model_len=8192))
    assert ok.feasible and ok.max_model_len == 8192


def test_max_model_len_beyond_the_model_is_infeasible() -> None:
    rec = recommend(_inp("Mistral-7B", max_model_len=65536))
    assert not rec.feasible and any("max_position_embeddings" in r for r in rec.reasons)


def test_tp_that_does_not_divide_heads_is_infeasible() -> None:
    rec = recommend(_inp("Qwen2.5-7B", tp=8))
    assert not rec.feasible and any("not divisible" in r for r in rec.reasons)
    rec = recommend(_inp("Llama-3.1-8B", tp=16))
    assert not rec.feasible and any("exceeds the 8 GPUs of a node" in r for r in rec.reasons)


def test_batched_tokens_below_seqs_is_infeasible() -> None:
    rec = recommend(_inp("Llama-3.1-8B", max_num_seqs=512, max_num_batched_tokens=256))
    assert not rec.feasible and any("max_num_batched_tokens 256 < max_num_seqs 512" in r for r in rec.reasons)


def test_given_values_are_kept_and_the_rest_recommended() -> None:
    rec = recommend(_inp("Llama-3.1-8B", tp=2, max_num_seqs=64, gpu_memory_utilization=0.85))
    assert (rec.tensor_parallel_size, rec.max_num_seqs, rec.gpu_memory_utilization) == (2, 64, 0.85)
    assert set(rec.fixed) == {"tp", "max_num_seqs", "gpu_memory_utilization"}
    assert rec.feasible and rec.max_model_len == 131072


def test_tighter_tpot_target_gives_smaller_batch() -> None:
    loose = recommend(_inp("Llama-3.1-70B", slo_tpot_seconds=0.1))
    tight = recommend(_inp("Llama-3.1-70B", slo_tpot_seconds=0.03))
    assert tight.max_num_seqs < loose.max_num_seqs
    assert tight.predicted.tpot_seconds <= 0.03 and tight.slo_met


def test_unreachable_target_is_reported() -> None:
    rec = recommend(_inp("Llama-3.1-405B", slo_tpot_seconds=0.001))
    assert rec.feasible and not rec.slo_met and rec.max_num_seqs == 1
    assert any("cannot be met even at batch 1" in r for r in rec.reasons)


def test_small_gpu_uses_small_defaults_and_pipeline_beyond_a_node() -> None:
    rec = recommend(
        RecommendInput(model=catalog_profile("Llama-3.1-70B"), gpu=get_gpu("L4"), gpus_per_node=4)
    )
    assert rec.feasible and rec.tensor_parallel_size == 4 and rec.pipeline_parallel_size > 1
    assert rec.max_num_batched_tokens >= 2048


def test_simulator_calling_convention() -> None:
    rec = recommend(catalog_profile("Llama-3.1-8B"), H100, tp=1)
    assert rec.kv_cache_tokens > 0 and rec.max_num_seqs > 0 and rec.max_num_batched_tokens > 0


def test_json_dict_keys() -> None:
    d = recommend(_inp("Qwen3-8B")).to_json_dict()
    for key in (
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "gpu_memory_utilization",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_model_len",
        "weights_gib_per_gpu",
        "kv_cache_gib_per_gpu",
        "kv_cache_tokens",
        "feasible",
        "reasons",
        "predicted",
    ):
        assert key in d
    assert set(d["predicted"]) >= {"ttft_seconds", "tpot_seconds", "output_tokens_per_second"}
    assert isinstance(d["reasons"], list) and all(isinstance(r, str) for r in d["reasons"])
