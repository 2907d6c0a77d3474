"""How vLLM sizes GPU memory: weights, activation peak, non-torch overhead, and the KV cache that is left.

vLLM (V1) reserves ``total x gpu_memory_utilization`` of each GPU (total = the physical memory CUDA
reports: 79.19 GiB on an H100 80GB), loads the weights, runs one profiling forward pass of
``max_num_batched_tokens`` tokens (plus a sampler pass over ``max_num_seqs`` rows on the last pipeline
stage), and gives whatever is left to the KV cache, per GPU of each pipeline stage:

    available_kv(stage) = total x gpu_memory_utilization - weights(stage) - activation(stage) - non_torch
    bytes_per_block = block_size x sum over the stage's layers (2 x kv_heads_per_gpu x head_dim x kv_bytes)
    kv_tokens = min over stages of floor(available_kv / bytes_per_block) x block_size

with ``kv_heads_per_gpu = max(1, kv_heads // tp)`` (KV heads are replicated when there are fewer than TP
ranks) and, for Multi-head Latent Attention, one latent of ``kv_lora_rank + qk_rope_head_dim`` elements per
token and layer, replicated on every TP rank. Hybrid attention (sliding-window / chunked layers beside full
ones) is grouped the way vLLM v0.19's hybrid allocator does (:func:`kv_groups`); the token count is the
full-attention equivalent, like vLLM's own log line. With ``--kv-cache-memory-bytes`` vLLM skips the
profiling: :func:`kv_tokens_for_kv_memory` is that exact case (checked against the real engine in
``tests/engine/test_recommender_kv.py``). CUDA graphs are captured after the KV is sized: they must fit in
the ``1 - gpu_memory_utilization`` margin beside the CUDA context.

Weights are counted per GPU: layers split over pipeline stages the way vLLM's ``get_pp_indices`` does,
linear layers split over TP (vocabulary padded to 64 and split, norms and MLA down-projections replicated,
KV projections replicated when kv_heads < tp), at the bytes per parameter of the dtype / quantization
(:mod:`tidal.recommender.quant`), plus the rotary cos/sin cache each stage builds; scaled to the
checkpoint's own size (``model.safetensors.index.json``) when the profile carries it.

The activation, non-torch and CUDA-graph terms are estimates calibrated per vLLM release
(:mod:`tidal.recommender.overheads`); ``tests/unit/test_recommender_calibration.py`` replays the shared
measured runs through :func:`memory_plan`. The plan is split across this module (arithmetic) and
:mod:`tidal.recommender.memplan` (the per-stage plan and its explanation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tidal.recommender.models import ModelProfile, dtype_bytes
from tidal.recommender.overheads import (
    non_torch_bytes,
)
from tidal.recommender.quant import (
    EXPERTS_ONLY_QUANT,
    MXFP4_INTERMEDIATE_ALIGN,
    QUANT_BYTES_PER_PARAM,
    bytes_per_param,
    effective_quantization,
    normalize_quantization,
)

__all__ = [
    "EXPERTS_ONLY_QUANT",
    "QUANT_BYTES_PER_PARAM",
    "effective_quantization",
    "non_torch_bytes",
    "normalize_quantization",
]

DEFAULT_BLOCK_SIZE = 16
"""vLLM's default KV block size on GPUs (tokens per block)."""


def resolve_dtype(profile: ModelProfile, dtype: str = "auto") -> str:
    """The activation/weight dtype vLLM uses. ``auto`` is the checkpoint's, except that vLLM downcasts a
    float32 checkpoint to its platform's preferred dtype (bfloat16 on GPUs; ``_resolve_auto_dtype``)."""
    d = profile.torch_dtype if dtype in ("auto", "") else dtype
    d = _canonical_dtype(d)
    if dtype in ("auto", "") and d == "float32":
        d = "bfloat16"
    dtype_bytes(d)  # validates
    return d


def _canonical_dtype(d: str) -> str:
    d = d.lower().removeprefix("torch.")
    return {
        "float": "float32",
        "fp32": "float32",
        "half": "float16",
        "fp16": "float16",
        "bf16": "bfloat16",
    }.get(d, d)


def resolve_kv_dtype(profile: ModelProfile, kv_cache_dtype: str = "auto", dtype: str = "auto") -> str:
    """``auto`` stores the KV cache in the model dtype; ``fp8*`` in one byte."""
    k = kv_cache_dtype.lower()
    if k in ("auto", ""):
        return resolve_dtype(profile, dtype)
    if k.startswith("fp8"):
        return "fp8"
    return resolve_dtype(profile, k)


def check_tp(profile: ModelProfile, tp: int) -> str | None:
    """Why ``tp`` cannot split this model's attention (None when it can)."""
    if tp < 1:
        return f"tensor_parallel_size {tp} must be ≥ 1"
    if profile.num_attention_heads % tp:
        return (
            f"num_attention_heads {profile.num_attention_heads} is not divisible by tensor_parallel_size {tp}"
        )
    kv = profile.num_kv_heads
    if not profile.is_mla and kv % tp and tp % kv:
        return f"num_key_value_heads {kv} and tensor_parallel_size {tp}: neither divides the other"
    return None


def pp_partition(num_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage, as vLLM's ``get_pp_indices`` assigns them (remainder before the last)."""
    if pp < 1 or pp > num_layers:
        raise ValueError(f"pipeline_parallel_size {pp} must be between 1 and num_layers {num_layers}")
    base = num_layers // pp
    parts = [base] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def kv_heads_per_gpu(profile: ModelProfile, tp: int) -> int:
    """KV heads each TP rank stores: ``max(1, kv_heads // tp)`` (replicated when kv_heads < tp)."""
    return max(1, profile.num_kv_heads // tp)


def kv_bytes_per_token_layer(profile: ModelProfile, tp: int = 1, kv_dtype: str = "bfloat16") -> float:
    """KV bytes one token takes in one layer on one GPU (K and V; MLA: one latent, not split by TP)."""
    b = dtype_bytes(kv_dtype)
    if profile.is_mla:
        return (profile.kv_lora_rank + profile.qk_rope_head_dim) * b
    return 2 * kv_heads_per_gpu(profile, tp) * profile.head_dim * b


def kv_bytes_per_token(
    profile: ModelProfile, tp: int = 1, pp: int = 1, kv_cache_dtype: str = "auto", dtype: str = "auto"
) -> int:
    """KV bytes per token on the GPU of the largest stage: 2 x layers x kv_heads/GPU x head_dim x B."""
    kv_dtype = resolve_kv_dtype(profile, kv_cache_dtype, dtype)
    layers = max(pp_partition(profile.num_layers, pp))
    return int(layers * kv_bytes_per_token_layer(profile, tp, kv_dtype))


def kv_groups(layer_types: tuple[str, ...] | list[str], num_layers: int) -> tuple[int, int]:
    """``(layers per group, groups)`` of vLLM v0.19's KV cache for these layers.

    One attention kind: one group of every layer. Hybrid (sliding/chunked beside full): each kind is cut
    into groups of ``min`` layers of a kind (the ``max`` when it is under 1.25 x the min), every group shares
    one block table, and a block costs one page per layer of a group; vLLM reports
    ``blocks // groups x block_size`` tokens.
    """
    kinds = [k for k in set(layer_types)] if layer_types else []
    if len(kinds) <= 1:
        return num_layers, 1
    counts = [sum(1 for t in layer_types if t == k) for k in kinds]
    size = min(counts)
    if max(counts) < 1.25 * size:
        size = max(counts)
    return size, sum(math.ceil(c / size) for c in counts)


def _stage_slices(profile: ModelProfile, pp: int) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in pp_partition(profile.num_layers, pp):
        out.append((start, n))
        start += n
    return out


def _stage_kv_tokens(
    profile: ModelProfile, kv_bytes: int, tp: int, kv_dtype: str, block_size: int, start: int, n: int
) -> int:
    per_layer = int(kv_bytes_per_token_layer(profile, tp, kv_dtype))
    group_size, groups = kv_groups(profile.layer_types[start : start + n], n)
    blocks = max(0, kv_bytes) // (per_layer * block_size * group_size)
    return int(blocks // groups * block_size)


def kv_tokens_for_kv_memory(
    profile: ModelProfile,
    kv_bytes: int,
    tp: int = 1,
    kv_cache_dtype: str = "auto",
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    pp: int = 1,
    dtype: str = "auto",
) -> int:
    """Tokens of KV cache that ``kv_bytes`` per GPU hold (vLLM ``--kv-cache-memory-bytes``):
    ``floor(kv_bytes / (bytes_per_token x block_size)) x block_size``, the minimum over pipeline stages."""
    kv_dtype = resolve_kv_dtype(profile, kv_cache_dtype, dtype)
    return min(
        _stage_kv_tokens(profile, kv_bytes, tp, kv_dtype, block_size, start, n)
        for start, n in _stage_slices(profile, pp)
    )


@dataclass(frozen=True)
class WeightBytes:
    """Weight bytes on the GPU of each pipeline stage, and the largest."""

    per_stage: tuple[int, ...]
    bytes_per_param_linear: float
    bytes_per_param_experts: float
    bytes_per_param_other: float
    checkpoint_scale: float = 1.0
    """Checkpoint's own size / the size the config implies (1.0 when no checkpoint index is known)."""

    @property
    def per_gpu(self) -> int:
        """The largest stage's bytes per GPU (the one that decides feasibility)."""
        return max(self.per_stage)


def _attention_params_per_gpu(profile: ModelProfile, tp: int) -> float:
    h = profile.hidden_size
    if profile.is_mla:
        nh = profile.num_attention_heads
        qk_head = profile.qk_nope_head_dim + profile.qk_rope_head_dim
        replicated = h * (profile.kv_lora_rank + profile.qk_rope_head_dim)
        split = profile.kv_lora_rank * nh * (profile.qk_nope_head_dim + profile.v_head_dim)
        if profile.q_lora_rank:
            replicated += h * profile.q_lora_rank
            split += profile.q_lora_rank * nh * qk_head
        else:
            split += h * nh * qk_head
        split += nh * profile.v_head_dim * h
        return replicated + split / tp
    q_out = profile.num_attention_heads * profile.head_dim
    kv_out = kv_heads_per_gpu(profile, tp) * profile.head_dim
    attn = 2 * h * q_out / tp + 2 * h * kv_out
    if profile.attention_bias:
        attn += q_out / tp + 2 * kv_out
    return attn


def _expert_params_per_gpu(profile: ModelProfile, tp: int, quant: str | None) -> float:
    """Routed-expert parameters of one MoE layer on one TP rank (MXFP4 pads each rank's width)."""
    if quant == "mxfp4":
        width = math.ceil(profile.expert_width / tp / MXFP4_INTERMEDIATE_ALIGN) * MXFP4_INTERMEDIATE_ALIGN
        h = profile.hidden_size
        per_expert = 3 * h * width + (2 * width + h / tp if profile.expert_bias else 0)
        return profile.num_experts * per_expert
    return profile.num_experts * profile.expert_params() / tp


def _layer_params_per_gpu(
    profile: ModelProfile, layer: int, tp: int, quant: str | None
) -> tuple[float, float, float]:
    """(attention+dense linear, routed experts, replicated small) parameters of ``layer`` on one TP rank."""
    h = profile.hidden_size
    attn = _attention_params_per_gpu(profile, tp)
    experts = 0.0
    small = 2 * h  # the two norms
    if profile.is_moe_layer(layer):
        experts = _expert_params_per_gpu(profile, tp, quant)
        dense = profile.num_shared_experts * 3 * h * profile.shared_width / tp
        small += h * profile.num_experts + (h if profile.shared_expert_width else 0)  # router, shared gate
        if profile.expert_bias or profile.is_mla:
            small += profile.num_experts  # router bias / e_score_correction_bias
    else:
        dense = profile.dense_mlp_params(profile.intermediate_size) / tp
    if profile.o_bias:
        small += h
    if profile.architecture.startswith("GptOss"):
        small += profile.num_attention_heads  # attention sinks
    if profile.architecture.startswith("Qwen3"):
        small += 2 * profile.head_dim  # q_norm, k_norm
    return attn + dense, experts, small


def rope_cache_elements(profile: ModelProfile) -> int:
    """Elements of the rotary cos/sin cache vLLM builds once per stage (max positions x rotary width)."""
    width = profile.qk_rope_head_dim if profile.is_mla else (profile.rotary_dim or profile.head_dim)
    return profile.max_position_embeddings * width


def _bytes_per_param(profile: ModelProfile, q: str | None, act: float) -> tuple[float, float]:
    """(linear, experts) bytes per parameter under quantization ``q``."""
    qb = bytes_per_param(profile, q) if q else act
    return (act if q in EXPERTS_ONLY_QUANT else qb), qb


def checkpoint_scale(profile: ModelProfile) -> float:
    """The checkpoint's own bytes over what the config implies in the checkpoint's dtype/quantization."""
    if not profile.checkpoint_bytes:
        return 1.0
    stored = dtype_bytes(_canonical_dtype(profile.torch_dtype))
    q = effective_quantization(profile, None)
    linear_b, experts_b = _bytes_per_param(profile, q, stored)
    b = profile.parameter_breakdown()
    implied = (b.attention + b.dense_mlp) * linear_b + b.experts * experts_b
    implied += (b.embedding + b.lm_head + b.other) * stored
    return profile.checkpoint_bytes / implied if implied > 0 else 1.0


def weight_bytes(
    profile: ModelProfile, tp: int = 1, pp: int = 1, dtype: str = "auto", quantization: str | None = None
) -> WeightBytes:
    """Weight bytes per GPU for each pipeline stage (first stage holds the embedding, last the LM head)."""
    act = dtype_bytes(resolve_dtype(profile, dtype))
    q = effective_quantization(profile, quantization)
    linear_b, experts_b = _bytes_per_param(profile, q, act)
    padded_vocab = math.ceil(profile.vocab_size / 64) * 64
    vocab_params = padded_vocab * profile.hidden_size / tp
    scale = checkpoint_scale(profile)
    stages: list[int] = []
    slices = _stage_slices(profile, pp)
    for i, (start, n_layers) in enumerate(slices):
        total = 0.0
        for layer in range(start, start + n_layers):
            lin, exp, small = _layer_params_per_gpu(profile, layer, tp, q)
            total += lin * linear_b + exp * experts_b + small * act
        if i == 0:
            total += vocab_params * act
        if i == len(slices) - 1:
            total += profile.hidden_size * act
            if not profile.tie_word_embeddings or pp > 1:
                total += vocab_params * act
        stages.append(int(total * scale + rope_cache_elements(profile) * act))
    return WeightBytes(tuple(stages), linear_b, experts_b, act, scale)
