"""The memory model: weights by dtype/quantization, KV bytes per token, TP/PP splits, vLLM's feasibility."""

from __future__ import annotations

import dataclasses

import pytest

from tidal.recommender.catalog import catalog_profile
from tidal.recommender.gpus import get_gpu
from tidal.recommender.memory import (
    QUANT_BYTES_PER_PARAM,
    check_tp,
    kv_bytes_per_token,
    kv_heads_per_gpu,
    kv_tokens_for_kv_memory,
    pp_partition,
    rope_cache_elements,
    weight_bytes,
)
from tidal.recommender.memplan import infeasibility, memory_plan
from tidal.recommender.models import ModelProfile

MiB = 2**20

# The tiny Llama of tests/support/tinymodel.py: 2 layers, 4 heads, 2 KV heads, head_dim 64, bf16.
TINY = ModelProfile(
    name="tiny",
    architecture="LlamaForCausalLM",
    num_layers=2,
    hidden_size=256,
    num_attention_heads=4,
    num_kv_heads=2,
    head_dim=64,
    intermediate_size=512,
    vocab_size=512,
    max_position_embeddings=2048,
)


def test_kv_bytes_per_token_by_hand() -> None:
    assert kv_bytes_per_token(TINY) == 2 * 2 * 2 * 64 * 2 == 1024
    llama8 = catalog_profile("Llama-3.1-8B")
    assert kv_bytes_per_token(llama8) == 2 * 32 * 8 * 128 * 2 == 131072
    assert kv_bytes_per_token(llama8, kv_cache_dtype="fp8") == 65536
    assert kv_bytes_per_token(llama8, tp=4) == 2 * 32 * 2 * 128 * 2
    assert kv_bytes_per_token(llama8, pp=2) == 131072 // 2


def test_float32_checkpoint_is_downcast_under_dtype_auto() -> None:
    fp32 = dataclasses.replace(TINY, torch_dtype="float32")
    assert kv_bytes_per_token(fp32) == 1024  # vLLM's _resolve_auto_dtype: float32 -> bfloat16 on GPUs
    assert kv_bytes_per_token(fp32, dtype="float32") == 2048
    assert kv_bytes_per_token(fp32, dtype="float32", kv_cache_dtype="fp8_e4m3") == 512


def test_kv_heads_replicated_when_fewer_than_tp() -> None:
    qwen = catalog_profile("Qwen3-235B-A22B")  # 4 KV heads
    assert [kv_heads_per_gpu(qwen, tp) for tp in (1, 2, 4, 8)] == [4, 2, 1, 1]
    assert kv_bytes_per_token(qwen, tp=8) == kv_bytes_per_token(qwen, tp=4)  # replicated, not halved
    assert kv_bytes_per_token(qwen, tp=4) == kv_bytes_per_token(qwen, tp=1) // 4


def test_mla_latent_not_split_by_tp() -> None:
    ds = catalog_profile("DeepSeek-V3")
    assert kv_bytes_per_token(ds) == 61 * (512 + 64) * 2 == 70272
    assert kv_bytes_per_token(ds, tp=8) == 70272
    assert kv_bytes_per_token(ds, tp=8, kv_cache_dtype="fp8") == 61 * 576
    assert check_tp(ds, 8) is None  # MLA has no KV-head divisibility rule


def test_kv_tokens_for_exact_memory_matches_measured_engine_facts() -> None:
    # vLLM CPU, measured (docs ENVIRONMENT.md): 64 MiB -> 65,536 tokens; fp8 -> 131,072; TP 2 -> 131,072.
    assert kv_tokens_for_kv_memory(TINY, 64 * MiB, 1, "auto", 16) == 65536
    assert kv_tokens_for_kv_memory(TINY, 64 * MiB, 1, "fp8", 16) == 131072
    assert kv_tokens_for_kv_memory(TINY, 64 * MiB, 2, "auto", 16) == 131072


def test_kv_tokens_round_down_to_whole_blocks() -> None:
    # 1,024 B/token, blocks of 128 tokens = 128 KiB: 1 MiB + 1 byte holds 8 blocks; 1 MiB - 1 holds 7.
    assert kv_tokens_for_kv_memory(TINY, MiB + 1, block_size=128) == 1024
    assert kv_tokens_for_kv_memory(TINY, MiB - 1, block_size=128) == 896
    assert kv_tokens_for_kv_memory(TINY, -5) == 0


def test_pp_partition_like_vllm() -> None:
    assert pp_partition(126, 2) == [63, 63]
    assert pp_partition(61, 2) == [31, 30]
    assert pp_partition(10, 3) == [3, 4, 3]
    with pytest.raises(ValueError):
        pp_partition(4, 5)


def test_weights_by_dtype() -> None:
    p = catalog_profile("Llama-3.1-8B")  # vocab 128256 is a multiple of 64: no padding
    rope = rope_cache_elements(p)  # vLLM's rotary cos/sin cache, in the model dtype
    assert rope == 131072 * 128
    assert weight_bytes(p).per_gpu == pytest.approx((p.total_params + rope) * 2, rel=1e-9)
    assert weight_bytes(p, dtype="float32").per_gpu == pytest.approx((p.total_params + rope) * 4, rel=1e-9)


def test_weights_fp8_and_int4_quantize_linear_layers_only() -> None:
    p = catalog_profile("Llama-3.1-8B")
    b = p.parameter_breakdown()
    linear = b.attention + b.dense_mlp
    rest = b.embedding + b.lm_head + b.other + rope_cache_elements(p)
    fp8 = weight_bytes(p, quantization="fp8").per_gpu
    assert fp8 == pytest.approx(linear * QUANT_BYTES_PER_PARAM["fp8"] + rest * 2, rel=1e-6)
    assert fp8 / 2**30 == pytest.approx(8.46, abs=0.05)  # ~1 B/param body + bf16 embeddings and head
    awq = weight_bytes(p, quantization="awq").per_gpu
    assert awq == pytest.approx(linear * (0.5 + 2.5 / 128) + rest * 2, rel=1e-6)
    assert awq < fp8 < weight_bytes(p).per_gpu


def test_mxfp4_quantizes_only_gpt_oss_experts() -> None:
    p = catalog_profile("gpt-oss-120b")  # checkpoint says mxfp4
    b = p.parameter_breakdown()
    w = weight_bytes(p)
    assert w.bytes_per_param_experts == 0.5 + 1 / 32 and w.bytes_per_param_linear == 2.0
    pad = (-(-p.vocab_size // 64) * 64 - p.vocab_size) * p.hidden_size * 2 * 2
    rope = rope_cache_elements(p) * 2
    expected = b.experts * (0.5 + 1 / 32) + (b.total - b.experts) * 2 + pad + rope
    assert w.per_gpu == pytest.approx(expected, rel=1e-6)
    assert 60 < w.per_gpu / 2**30 < 63  # gpt-oss-120b runs on one 80 GB GPU


def test_tp_split_with_replicated_kv_projections() -> None:
    p = catalog_profile("Qwen3-235B-A22B")
    w1, w8 = weight_bytes(p, tp=1).per_gpu, weight_bytes(p, tp=8).per_gpu
    h, hd, layers = p.hidden_size, p.head_dim, p.num_layers
    replicated_kv = layers * 2 * h * hd * 2  # k and v proj of 1 KV head on each of 8 ranks (4 heads / 8)
    norms = (layers * 2 * h + h) * 2 + layers * h * p.num_experts * 2  # norms and routers on every rank
    assert w8 == pytest.approx((w1 - norms - replicated_kv * 4) / 8 + norms + replicated_kv, rel=2e-3)


def test_pp_puts_embedding_first_and_head_last() -> None:
    p = catalog_profile("Llama-3.1-405B")
    stages = weight_bytes(p, tp=8, pp=2).per_stage
    assert len(stages) == 2
    assert sum(stages) == pytest.approx(weight_bytes(p, tp=8).per_gpu, rel=1e-3)


def test_check_tp_head_divisibility() -> None:
    qwen7 = catalog_profile("Qwen2.5-7B")  # 28 heads, 4 KV heads
    assert check_tp(qwen7, 4) is None
    assert "not divisible" in (check_tp(qwen7, 8) or "")
    odd = dataclasses.replace(TINY, num_attention_heads=12, num_kv_heads=4)
    assert "neither divides" in (check_tp(odd, 6) or "")
    assert check_tp(odd, 2) is None


def test_feasibility_weights_beyond_memory_fraction() -> None:
    p = catalog_profile("Llama-3.1-70B")
    plan = memory_plan(p, get_gpu("H100-80GB").memory_bytes, tp=1)
    reasons = infeasibility(plan, 4096)
    assert reasons and "exceed" in reasons[0] and "gpu_memory_utilization 0.90" in reasons[0]


def test_feasibility_max_model_len_beyond_kv() -> None:
    p = catalog_profile("Llama-3.1-8B")
    plan = memory_plan(p, get_gpu("H100-80GB").memory_bytes, gpu_memory_utilization=0.25)
    assert 0 < plan.kv_tokens < 131072
    assert infeasibility(plan, plan.kv_tokens) == []
    reasons = infeasibility(plan, 131072)
    assert reasons and "max_model_len 131,072 needs 16.00 GiB" in reasons[0]


def test_memory_plan_arithmetic_adds_up() -> None:
    p = catalog_profile("Llama-3.1-8B")
    plan = memory_plan(p, get_gpu("H100-80GB").memory_bytes)
    assert plan.kv_cache_bytes == plan.reserved_bytes - plan.weights_bytes - plan.activation_bytes - (
        plan.non_torch_bytes
    )
    assert plan.kv_tokens == plan.kv_cache_bytes // (131072 * 16) * 16
    assert 400_000 < plan.kv_tokens < 480_000  # ~54 GiB of KV on an H100 for Llama-3.1-8B
    assert any("KV tokens = floor(" in line for line in plan.lines())
