"""How vLLM sizes GPU memory: weights, activation peak, non-torch overhead, and the KV cache that is left.

vLLM (V1) reserves ``total x gpu_memory_utilization`` of each GPU, loads the weights, runs one profiling
forward pass of ``max_num_batched_tokens`` tokens (plus a sampler pass over ``max_num_seqs`` rows), and
gives whatever is left to the KV cache:

    available_kv = total x gpu_memory_utilization - weights - activation_peak - non_torch
    bytes_per_block = block_size x sum over layers (2 x kv_heads_per_gpu x head_dim x kv_dtype_bytes)
    num_blocks = available_kv // bytes_per_block;   kv_tokens = num_blocks x block_size

with ``kv_heads_per_gpu = max(1, kv_heads // tp)`` (KV heads are replicated when there are fewer than TP
ranks) and, for Multi-head Latent Attention, one latent of ``kv_lora_rank + qk_rope_head_dim`` elements per
token and layer, replicated on every TP rank. With ``--kv-cache-memory-bytes`` vLLM skips the profiling and
uses the given bytes directly: :func:`kv_tokens_for_kv_memory` is that exact case (it is checked against the
real engine in ``tests/engine/test_recommender_kv.py``).

Weights are counted per GPU: layers split over pipeline stages the way vLLM's ``get_pp_indices`` does,
linear layers split over TP (vocabulary padded to 64 and split, norms and MLA down-projections replicated,
KV projections replicated when kv_heads < tp), at the bytes per parameter of the dtype / quantization.

The activation and non-torch terms are estimates (documented constants below); they are a few percent of
an 80 GB GPU, so their error moves the KV capacity by a few percent at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tidal.recommender.models import ModelProfile, dtype_bytes, gib

DEFAULT_BLOCK_SIZE = 16
"""vLLM's default KV block size on GPUs (tokens per block)."""

QUANT_BYTES_PER_PARAM: dict[str, float] = {
    "fp8": 1.0 + 4.0 / (128 * 128),  # e4m3 + one fp32 scale per 128x128 block (per-tensor: smaller)
    "int8": 1.0 + 4.0 / 4096,  # w8a8 / per-channel scales
    "awq": 0.5 + 2.5 / 128,  # 4-bit weights + fp16 scale + 4-bit zero point per group of 128
    "gptq": 0.5 + 2.5 / 128,
    "awq_marlin": 0.5 + 2.5 / 128,
    "gptq_marlin": 0.5 + 2.5 / 128,
    "int4": 0.5 + 2.5 / 128,
    "bitsandbytes": 0.5 + 4.0 / 64,  # nf4 + fp32 absmax per 64
    "mxfp4": 0.5 + 1.0 / 32,  # e2m1 + one e8m0 scale per 32 (gpt-oss: experts only)
    "nvfp4": 0.5 + 1.0 / 16,  # e2m1 + one fp8 scale per 16
}
"""Bytes per quantized parameter (weights plus their scales) for ``--quantization`` methods."""

EXPERTS_ONLY_QUANT = frozenset({"mxfp4"})
"""Methods that quantize only the routed experts (gpt-oss's MXFP4); attention stays in the model dtype."""

NON_TORCH_BYTES = int(0.5 * 2**30)
"""cuBLAS/cuDNN workspaces and allocator slack that vLLM's profiler sees as non-torch memory (one GPU)."""
NCCL_BYTES = int(0.75 * 2**30)
"""Extra non-torch memory of NCCL communicators and buffers when TP or PP > 1."""
CUDA_GRAPH_BYTES = int(0.5 * 2**30)
"""Reserve for CUDA-graph memory pools (not ``--enforce-eager``); vLLM captures them after sizing the KV."""
SAMPLER_COPIES = 2
"""fp32 vocab-sized tensors the sampler's profiling pass holds per sequence (logits and probabilities)."""


def normalize_quantization(quantization: str | None) -> str | None:
    """Canonical quantization name (``None`` / ``"none"`` → None; ``ValueError`` for an unknown method)."""
    if quantization is None:
        return None
    q = quantization.strip().lower()
    if q in ("", "none", "auto"):
        return None
    if q in ("compressed-tensors", "fbgemm_fp8", "modelopt", "fp8_e4m3"):
        q = "fp8"
    if q not in QUANT_BYTES_PER_PARAM:
        raise ValueError(
            f"unknown quantization {quantization!r}; known: {', '.join(sorted(QUANT_BYTES_PER_PARAM))}"
        )
    return q


def resolve_dtype(profile: ModelProfile, dtype: str = "auto") -> str:
    """The activation/weight dtype vLLM uses: ``auto`` is the checkpoint's (float32 stays float32)."""
    d = profile.torch_dtype if dtype in ("auto", "") else dtype
    d = d.lower().removeprefix("torch.")
    if d in ("float", "fp32"):
        d = "float32"
    if d in ("half", "fp16"):
        d = "float16"
    if d in ("bf16",):
        d = "bfloat16"
    dtype_bytes(d)  # validates
    return d


def resolve_kv_dtype(profile: ModelProfile, kv_cache_dtype: str = "auto", dtype: str = "auto") -> str:
    """``auto`` stores the KV cache in the model dtype; ``fp8*`` in one byte."""
    k = kv_cache_dtype.lower()
    if k in ("auto", ""):
        return resolve_dtype(profile, dtype)
    if k.startswith("fp8"):
        return "fp8"
    return resolve_dtype(profile, k)


def effective_quantization(profile: ModelProfile, quantization: str | None) -> str | None:
    """The requested method, or the checkpoint's own (``quantization_config``) when none is given."""
    q = normalize_quantization(quantization)
    if q is None and profile.quantization:
        try:
            q = normalize_quantization(profile.quantization)
        except ValueError:
            q = None
    return q


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
    per_layer = kv_bytes_per_token_layer(profile, tp, kv_dtype)
    tokens = None
    for layers in pp_partition(profile.num_layers, pp):
        bytes_per_block = int(layers * per_layer) * block_size
        n = (max(0, kv_bytes) // bytes_per_block) * block_size
        tokens = n if tokens is None else min(tokens, n)
    return int(tokens or 0)


@dataclass(frozen=True)
class WeightBytes:
    """Weight bytes on the GPU of each pipeline stage, and the largest."""

    per_stage: tuple[int, ...]
    bytes_per_param_linear: float
    bytes_per_param_experts: float
    bytes_per_param_other: float

    @property
    def per_gpu(self) -> int:
        """The largest stage's bytes per GPU (the one that decides feasibility)."""
        return max(self.per_stage)


def _layer_params_per_gpu(profile: ModelProfile, layer: int, tp: int) -> tuple[float, float, float]:
    """(attention+dense linear, routed experts, replicated small) parameters of ``layer`` on one TP rank."""
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
        attn = replicated + split / tp
    else:
        q_out = profile.num_attention_heads * profile.head_dim
        kv_out = kv_heads_per_gpu(profile, tp) * profile.head_dim
        attn = 2 * h * q_out / tp + 2 * h * kv_out
        if profile.attention_bias:
            attn += q_out / tp + 2 * kv_out
    dense = 0.0
    experts = 0.0
    is_moe_layer = profile.is_moe and layer >= profile.first_k_dense_layers
    if is_moe_layer:
        experts = profile.num_experts * profile.expert_params() / tp
        dense = profile.num_shared_experts * 3 * h * profile.expert_width / tp
    else:
        dense = 3 * h * profile.intermediate_size / tp
    small = 2 * h  # the two RMSNorms
    if profile.o_bias:
        small += h
    if is_moe_layer:
        small += h * profile.num_experts  # router
        if profile.expert_bias or profile.is_mla:
            small += profile.num_experts  # router bias / e_score_correction_bias
    if profile.architecture.startswith("GptOss"):
        small += profile.num_attention_heads  # attention sinks
    if profile.architecture.startswith("Qwen3"):
        small += 2 * profile.head_dim  # q_norm, k_norm
    return attn + dense, experts, small


def weight_bytes(
    profile: ModelProfile, tp: int = 1, pp: int = 1, dtype: str = "auto", quantization: str | None = None
) -> WeightBytes:
    """Weight bytes per GPU for each pipeline stage (first stage holds the embedding, last the LM head)."""
    act = dtype_bytes(resolve_dtype(profile, dtype))
    q = effective_quantization(profile, quantization)
    qb = QUANT_BYTES_PER_PARAM[q] if q else act
    linear_b = act if q in EXPERTS_ONLY_QUANT else qb
    experts_b = qb
    padded_vocab = math.ceil(profile.vocab_size / 64) * 64
    vocab_params = padded_vocab * profile.hidden_size / tp
    stages: list[int] = []
    start = 0
    parts = pp_partition(profile.num_layers, pp)
    for i, n_layers in enumerate(parts):
        total = 0.0
        for layer in range(start, start + n_layers):
            lin, exp, small = _layer_params_per_gpu(profile, layer, tp)
            total += lin * linear_b + exp * experts_b + small * act
        start += n_layers
        if i == 0:
            total += vocab_params * act
        if i == len(parts) - 1:
            total += profile.hidden_size * act
            if not profile.tie_word_embeddings or pp > 1:
                total += vocab_params * act
        stages.append(int(total))
    return WeightBytes(tuple(stages), linear_b, experts_b, act)


def activation_peak_bytes(
    profile: ModelProfile,
    tp: int = 1,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 1024,
    dtype: str = "auto",
) -> int:
    """Peak torch activation memory of vLLM's profiling pass (an estimate).

    Forward: ``tokens x act_bytes x (4*hidden + qkv_out/tp + 3*mlp_width/tp)`` — residual, normed input, the
    fused QKV output and the gate/up output plus activation of the widest MLP (for MoE, ``top_k`` experts'
    width per token). Sampler: ``max_num_seqs x vocab x 4 B x SAMPLER_COPIES`` (fp32 logits and probs).
    vLLM runs the two one after the other, so the peak is the larger.
    """
    act = dtype_bytes(resolve_dtype(profile, dtype))
    h = profile.hidden_size
    if profile.is_moe:
        width = max(profile.num_experts_per_tok * profile.expert_width, profile.intermediate_size)
    else:
        width = profile.intermediate_size
    qkv = (profile.num_attention_heads + 2 * profile.num_kv_heads) * profile.head_dim
    forward = max_num_batched_tokens * act * (4 * h + qkv / tp + 3 * width / tp)
    sampler = max_num_seqs * profile.vocab_size * 4 * SAMPLER_COPIES
    return int(max(forward, sampler))


def non_torch_bytes(tp: int = 1, pp: int = 1, enforce_eager: bool = False) -> int:
    """Non-torch memory (workspaces, NCCL) plus the CUDA-graph reserve."""
    n = NON_TORCH_BYTES
    if tp > 1 or pp > 1:
        n += NCCL_BYTES
    if not enforce_eager:
        n += CUDA_GRAPH_BYTES
    return n


@dataclass(frozen=True)
class MemoryPlan:
    """Every number of one configuration's memory arithmetic (bytes are per GPU of the largest stage)."""

    total_bytes: int
    gpu_memory_utilization: float
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    kv_cache_bytes: int
    """available_kv: reserved - weights - activation - non-torch (may be negative: infeasible)."""
    kv_bytes_per_token: int
    """On this GPU (after the TP split / replication)."""
    kv_bytes_per_token_model: int
    """Whole model, unsplit (for display)."""
    kv_tokens: int
    block_size: int
    weight_dtype: str
    kv_dtype: str
    quantization: str | None

    @property
    def reserved_bytes(self) -> int:
        """total x gpu_memory_utilization."""
        return int(self.total_bytes * self.gpu_memory_utilization)

    def _weights_label(self) -> str:
        if not self.quantization:
            return self.weight_dtype
        part = "experts" if self.quantization in EXPERTS_ONLY_QUANT else "linear layers"
        return f"{self.quantization} {part}, {self.weight_dtype} rest"

    def lines(self) -> list[str]:
        """The arithmetic, one step a line, for a reviewer."""
        return [
            f"reserved = {gib(self.total_bytes):.2f} GiB x {self.gpu_memory_utilization:.2f} = "
            f"{gib(self.reserved_bytes):.2f} GiB per GPU",
            f"weights ({self._weights_label()}) = {gib(self.weights_bytes):.2f} GiB per GPU",
            f"activation peak ≈ {gib(self.activation_bytes):.2f} GiB; non-torch + CUDA graphs ≈ "
            f"{gib(self.non_torch_bytes):.2f} GiB",
            f"KV space = {gib(self.reserved_bytes):.2f} - {gib(self.weights_bytes):.2f} - "
            f"{gib(self.activation_bytes):.2f} - {gib(self.non_torch_bytes):.2f} = "
            f"{gib(self.kv_cache_bytes):.2f} GiB per GPU",
            f"KV bytes/token ({self.kv_dtype}) = {self.kv_bytes_per_token:,} per GPU "
            f"({self.kv_bytes_per_token_model:,} for the whole model)",
            f"KV tokens = floor({max(self.kv_cache_bytes, 0):,} / ({self.kv_bytes_per_token:,} x "
            f"{self.block_size})) x {self.block_size} = {self.kv_tokens:,}",
        ]


def memory_plan(
    profile: ModelProfile,
    total_bytes: int,
    *,
    tp: int = 1,
    pp: int = 1,
    gpu_memory_utilization: float = 0.9,
    dtype: str = "auto",
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 1024,
    block_size: int = DEFAULT_BLOCK_SIZE,
    enforce_eager: bool = False,
) -> MemoryPlan:
    """The memory arithmetic of one configuration, the way vLLM sizes it."""
    w = weight_bytes(profile, tp, pp, dtype, quantization)
    act = activation_peak_bytes(profile, tp, max_num_batched_tokens, max_num_seqs, dtype)
    nt = non_torch_bytes(tp, pp, enforce_eager)
    reserved = int(total_bytes * gpu_memory_utilization)
    available = reserved - w.per_gpu - act - nt
    kv_dtype = resolve_kv_dtype(profile, kv_cache_dtype, dtype)
    per_tok = kv_bytes_per_token(profile, tp, pp, kv_cache_dtype, dtype)
    tokens = kv_tokens_for_kv_memory(profile, available, tp, kv_cache_dtype, block_size, pp=pp, dtype=dtype)
    return MemoryPlan(
        total_bytes=total_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        weights_bytes=w.per_gpu,
        activation_bytes=act,
        non_torch_bytes=nt,
        kv_cache_bytes=available,
        kv_bytes_per_token=per_tok,
        kv_bytes_per_token_model=kv_bytes_per_token(profile, 1, 1, kv_cache_dtype, dtype),
        kv_tokens=tokens,
        block_size=block_size,
        weight_dtype=resolve_dtype(profile, dtype),
        kv_dtype=kv_dtype,
        quantization=effective_quantization(profile, quantization),
    )


def infeasibility(plan: MemoryPlan, max_model_len: int) -> list[str]:
    """Why vLLM would refuse to start with this plan (empty when it would start)."""
    reasons: list[str] = []
    if plan.weights_bytes + plan.activation_bytes + plan.non_torch_bytes >= plan.reserved_bytes:
        reasons.append(
            f"weights {gib(plan.weights_bytes):.2f} GiB + activation {gib(plan.activation_bytes):.2f} GiB + "
            f"non-torch {gib(plan.non_torch_bytes):.2f} GiB per GPU exceed the "
            f"{gib(plan.reserved_bytes):.2f} GiB reserved (gpu_memory_utilization "
            f"{plan.gpu_memory_utilization:.2f}): no memory left for the KV cache"
        )
    elif plan.kv_tokens < max_model_len:
        need = max_model_len * plan.kv_bytes_per_token
        reasons.append(
            f"max_model_len {max_model_len:,} needs {gib(need):.2f} GiB of KV cache per GPU for one "
            "sequence, "
            f"but only {gib(max(plan.kv_cache_bytes, 0)):.2f} GiB ({plan.kv_tokens:,} tokens) is available"
        )
    return reasons
