"""Architecture families the memory model must read right: tied embeddings by default, two-matrix MLPs,
shared experts (Qwen2-MoE, Llama-4), hybrid sliding-window KV groups, quantization_config details, the
checkpoint's own safetensors description, per-stage plans and the CUDA-graph margin. Configs here are small
synthetic ones with by-hand expectations (no held-out model is used)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tidal.recommender.checkpoint import TensorInfo, parse_tensors, total_size_from_index, with_checkpoint
from tidal.recommender.gpus import get_gpu
from tidal.recommender.memory import checkpoint_scale, kv_groups, kv_tokens_for_kv_memory, weight_bytes
from tidal.recommender.memplan import infeasibility, memory_plan
from tidal.recommender.models import load_profile, profile_from_config
from tidal.recommender.overheads import V0_19, non_torch_bytes, overheads_for
from tidal.recommender.quant import bytes_per_param

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm-memory-h100" / "models"
H, V, L, W_MLP = 256, 1024, 4, 512


def _cfg(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": H,
        "num_hidden_layers": L,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": W_MLP,
        "vocab_size": V,
        "max_position_embeddings": 2048,
        "torch_dtype": "bfloat16",
    }
    base.update(extra)
    return base


def test_gemma_ties_embeddings_when_the_config_is_silent() -> None:
    gemma = load_profile(DATA / "gemma-2-9b")
    assert "tie_word_embeddings" not in (DATA / "gemma-2-9b" / "config.json").read_text()
    assert gemma.tie_word_embeddings and gemma.parameter_breakdown().lm_head == 0
    llama = profile_from_config(_cfg())
    assert not llama.tie_word_embeddings  # Llama's config class defaults to untied


def test_two_matrix_mlp_with_biases() -> None:
    phi_like = profile_from_config(_cfg(model_type="phi", architectures=["PhiForCausalLM"]))
    gated = profile_from_config(_cfg())
    assert not phi_like.gated_mlp and phi_like.mlp_bias
    assert phi_like.parameter_breakdown().dense_mlp == L * (2 * H * W_MLP + W_MLP + H)
    assert gated.parameter_breakdown().dense_mlp == L * 3 * H * W_MLP


def test_qwen2_moe_shared_expert_of_its_own_width() -> None:
    p = profile_from_config(
        _cfg(model_type="qwen2_moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
             shared_expert_intermediate_size=256)
    )  # fmt: skip
    assert p.num_shared_experts == 1 and p.shared_width == 256 and p.expert_width == 64
    b = p.parameter_breakdown()
    assert b.dense_mlp == L * 3 * H * 256
    assert b.experts == L * 8 * 3 * H * 64


def test_llama4_interleaved_moe_layers_and_shared_expert() -> None:
    cfg = {
        "architectures": ["Llama4ForConditionalGeneration"],
        "text_config": _cfg(model_type="llama4_text", num_local_experts=4, num_experts_per_tok=1,
                            interleave_moe_layer_step=2, intermediate_size_mlp=1024),
    }  # fmt: skip
    p = profile_from_config(cfg)
    assert [p.is_moe_layer(i) for i in range(L)] == [False, True, False, True]
    assert p.num_shared_experts == 1 and p.expert_width == W_MLP and p.intermediate_size == 1024
    b = p.parameter_breakdown()
    assert b.dense_mlp == 2 * 3 * H * 1024 + 2 * 3 * H * W_MLP  # two dense layers + two shared experts
    assert b.experts == 2 * 4 * 3 * H * W_MLP


def test_hybrid_kv_groups_like_vllm() -> None:
    gemma = load_profile(DATA / "gemma-2-9b")
    assert gemma.layer_types[:2] == ("sliding", "full") and gemma.hybrid_attention
    assert kv_groups(gemma.layer_types, 42) == (21, 2)
    gemma3 = tuple("full" if (i + 1) % 6 == 0 else "sliding" for i in range(62))  # 52 sliding, 10 full
    assert kv_groups(gemma3, 62) == (10, 7)
    assert kv_groups((), 32) == (32, 1)
    # 2 groups of 21 layers: one block is 21 pages; vLLM reports blocks // 2 x 16 tokens.
    page = 16 * 2 * 8 * 256 * 2
    assert kv_tokens_for_kv_memory(gemma, 100 * page * 21) == 100 // 2 * 16
    qwen = load_profile(DATA / "qwen2.5-7b")  # sliding_window given but use_sliding_window false
    assert qwen.layer_types == () and not qwen.hybrid_attention


def test_quantization_config_bits_and_group_size() -> None:
    awq = profile_from_config(_cfg(quantization_config={"quant_method": "awq", "bits": 4, "group_size": 64}))
    assert (awq.quantization, awq.quant_bits, awq.quant_group_size) == ("awq", 4, 64)
    assert bytes_per_param(awq, "awq") == pytest.approx(0.5 + 2.5 / 64)
    channel = dataclasses.replace(awq, quant_group_size=-1)
    assert bytes_per_param(channel, "awq") == 0.5
    ct = profile_from_config(
        _cfg(quantization_config={"quant_method": "compressed-tensors",
                                  "config_groups": {"g0": {"weights": {"num_bits": 8, "type": "float"}}}})
    )  # fmt: skip
    assert ct.quantization == "fp8"


def test_checkpoint_index_scales_weights_to_its_size() -> None:
    p = profile_from_config(_cfg())
    implied = p.total_params * 2
    bigger = with_checkpoint(p, {"metadata": {"total_size": int(implied * 1.1)}, "weight_map": {}})
    assert checkpoint_scale(bigger) == pytest.approx(1.1, rel=1e-6)
    rope = 2048 * 64 * 2
    assert weight_bytes(bigger).per_gpu == pytest.approx(implied * 1.1 + rope, rel=1e-6)
    with pytest.raises(ValueError, match="total_size"):
        total_size_from_index({"weight_map": {}})


def test_checkpoint_tensors_say_tied_and_shared() -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "model.embed_tokens.weight": {"dtype": "BF16", "shape": [V, H]},
        "model.layers.0.mlp.shared_expert.gate_proj.weight": {"dtype": "BF16", "shape": [64, H]},
    }
    tensors = parse_tensors(header)
    assert tensors["model.embed_tokens.weight"] == TensorInfo("BF16", (V, H))
    moe = profile_from_config(_cfg(num_local_experts=4, num_experts_per_tok=1))
    out = with_checkpoint(moe, tensors=tensors)
    assert out.tie_word_embeddings and out.num_shared_experts == 1
    assert out.checkpoint_bytes == (V * H + 64 * H) * 2
    with pytest.raises(ValueError):
        parse_tensors({"x": {"dtype": "BF16"}})


def test_pipeline_stages_last_one_limits_kv() -> None:
    llama = load_profile(DATA / "llama-3.1-8b")
    plan = memory_plan(llama, int(79.19 * 2**30), pp=2, gpu_memory_utilization=0.95)
    assert len(plan.stage_activation) == 2 and plan.stage_activation[1] > plan.stage_activation[0]
    assert plan.limiting_stage == 1 and plan.kv_cache_bytes == min(plan.stage_kv_bytes)
    assert any("stage 1 limits the KV cache" in line for line in plan.lines())


def test_cuda_graphs_must_fit_outside_the_fraction() -> None:
    llama = load_profile(DATA / "llama-3.1-8b")
    total = get_gpu("H100-80GB").memory_bytes
    tight = memory_plan(llama, total, gpu_memory_utilization=0.985)
    assert any("CUDA graphs" in r for r in infeasibility(tight, 8192))
    eager = memory_plan(llama, total, gpu_memory_utilization=0.985, enforce_eager=True)
    assert not any("CUDA graphs" in r for r in infeasibility(eager, 8192))
    refused = memory_plan(llama, total, gpu_memory_utilization=0.999, enforce_eager=True)
    assert any("refuses to start" in r for r in infeasibility(refused, 8192))


def test_overheads_keyed_by_release() -> None:
    assert overheads_for("v0.19.0") is V0_19 and overheads_for("0.19.1") is V0_19
    assert overheads_for(None) is V0_19
    assert non_torch_bytes(2, 1) > 2 * 2**30 > non_torch_bytes(1, 2)  # NCCL buffers from TP 2
    assert non_torch_bytes(1, 2) < non_torch_bytes(1, 1)
    lines = memory_plan(load_profile(DATA / "qwen2.5-7b"), 85 * 2**30).lines()
    assert any("estimate" in line for line in lines) and any("exact" in line for line in lines)
