"""What vLLM holds on a GPU besides weights and KV cache, keyed by vLLM release.

vLLM (V1) sizes the KV cache as ``total x gpu_memory_utilization - weights - activation_peak - non_torch``
per GPU, where the activation peak and the non-torch increase are what its profiling run measures. This
module owns the *estimates* of those two terms (and of the CUDA-graph pool, captured after the KV is sized,
so it lives in the ``1 - gpu_memory_utilization`` margin). They exist separately from ``memory`` because
they are the release-dependent, calibrated part of the memory model: the constants below were fitted on the
shared calibration set ``shared/data/vllm-memory-h100`` (vLLM v0.19.0 server logs on H100 80GB: dense,
MoE, sliding-window; TP 1/2/4, PP 2/4; bf16/fp16/fp32, runtime fp8) and on nothing else.

The mechanism (what each term is made of) follows vLLM v0.19's ``gpu_model_runner.profile_run``:

* last pipeline stage (or no PP): the sampler's dummy pass over ``min(max_num_seqs, max_num_batched_tokens)``
  rows of vocabulary-wide logits (logits in the model dtype, then fp32 copies, sort values and int64
  indices: ``SAMPLER_BYTES_PER_LOGIT`` beyond the logits themselves) on top of the hidden states of the
  ``max_num_batched_tokens`` forward and the fused-MoE workspace (Triton experts: ``tokens x top_k x
  (max(I, H) + max(2I, H))`` elements, allocated once and kept);
* other stages: the forward pass alone (``tokens x (7H + 3 I/TP)`` elements: the stage's input, residual,
  normed input, QKV, gate/up and activation of the MLP);
* a last stage after others also holds the received intermediate tensors (hidden + residual).

Non-torch memory is the NCCL communicators and buffers (about 2 GiB per GPU from TP 2) and cuBLAS
workspaces; with PP alone the multi-process executor accounts most of it before the profiling baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tidal.recommender.models import ModelProfile

GIB = 2**30


@dataclass(frozen=True)
class VllmOverheads:
    """Calibrated overhead constants of one vLLM release (GiB unless noted)."""

    release: str
    sampler_bytes_per_logit: float
    """Bytes per (row x vocab) element the sampler's profiling pass holds beyond the logits (fitted)."""
    hidden_copies_last: float
    """Hidden-state-sized tensors (tokens x hidden) alive during the sampler pass (fitted)."""
    hidden_copies_forward: float
    """Hidden-state-sized tensors alive at the forward peak of a non-last stage (fitted)."""
    non_torch_single_gib: float
    """Non-torch increase at TP=1, PP=1 (cuBLAS workspaces)."""
    non_torch_pp_only_gib: float
    """Non-torch increase at TP=1, PP>1 (the multi-process executor counts the rest before profiling)."""
    nccl_base_gib: float
    """Non-torch increase at TP>=2: NCCL communicators and buffers ..."""
    nccl_per_rank_gib: float
    """... plus this much per TP rank."""
    cuda_graph_base_gib: float
    """CUDA-graph pool, captured after KV sizing: base ..."""
    cuda_graph_per_layer_gib: float
    """... plus this per layer of the stage (divided by TP ** 0.25; estimate)."""
    cuda_context_gib: float
    """CUDA context and allocator state before vLLM starts (outside the requested fraction)."""
    cuda_graphs_in_kv_budget: bool = False
    """Whether the KV sizing subtracts the CUDA-graph estimate (not in v0.19.0)."""


V0_19 = VllmOverheads(
    release="v0.19",
    sampler_bytes_per_logit=12.66,
    hidden_copies_last=1.42,
    hidden_copies_forward=6.0,
    non_torch_single_gib=0.25,
    non_torch_pp_only_gib=0.07,
    nccl_base_gib=2.01,
    nccl_per_rank_gib=0.03,
    cuda_graph_base_gib=0.35,
    cuda_graph_per_layer_gib=0.0175,
    cuda_context_gib=0.51,
)
"""vLLM v0.19.0 on H100 80GB (the calibration set)."""

OVERHEADS: dict[str, VllmOverheads] = {V0_19.release: V0_19}
"""Known releases (major.minor). Unknown ones use DEFAULT_VLLM_RELEASE and say so."""
DEFAULT_VLLM_RELEASE = "v0.19"


def release_key(release: str) -> str:
    """``v0.19.0``, ``0.19``, ``V0.19`` -> ``v0.19`` (the key of :data:`OVERHEADS`)."""
    parts = release.strip().lower().removeprefix("v").split(".")
    return "v" + ".".join(parts[:2])


def overheads_for(release: str | None = None) -> VllmOverheads:
    """The constants of ``release`` (``v0.19.0``, ``0.19``, ...); the default release for unknown ones."""
    if not release:
        return OVERHEADS[DEFAULT_VLLM_RELEASE]
    return OVERHEADS.get(release_key(release), OVERHEADS[DEFAULT_VLLM_RELEASE])


def moe_workspace_elements(profile: ModelProfile, tp: int, tokens: int) -> float:
    """Elements of the fused-MoE (Triton experts) workspaces for ``tokens`` tokens on one TP rank."""
    if not profile.is_moe:
        return 0.0
    width = profile.expert_width / tp
    h = profile.hidden_size
    return float(tokens * profile.num_experts_per_tok * (max(width, h) + max(2 * width, h)))


def activation_stage_bytes(
    profile: ModelProfile,
    *,
    stage: int,
    pp: int,
    tp: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    act_bytes: float,
    overheads: VllmOverheads = V0_19,
) -> int:
    """The profiling run's torch peak increase on one GPU of pipeline stage ``stage`` (an estimate)."""
    tokens = max_num_batched_tokens
    h = profile.hidden_size
    hidden = tokens * h * act_bytes
    moe_ws = moe_workspace_elements(profile, tp, tokens) * act_bytes
    dense_width = 0.0 if profile.is_moe and profile.first_k_dense_layers == 0 else profile.intermediate_size
    forward = overheads.hidden_copies_forward * hidden + 3 * tokens * dense_width / tp * act_bytes + moe_ws
    forward += hidden  # the stage's input: the embedding output or the received hidden states
    if stage < pp - 1:
        return int(forward)
    received = 2 * hidden if stage > 0 else 0.0  # intermediate tensors kept through the sampler pass
    rows = min(max_num_seqs, max_num_batched_tokens)
    sampler = rows * profile.vocab_size * (overheads.sampler_bytes_per_logit + act_bytes)
    last = overheads.hidden_copies_last * hidden + moe_ws + sampler
    return int(max(forward, last) + received)


def non_torch_bytes(tp: int = 1, pp: int = 1, overheads: VllmOverheads = V0_19) -> int:
    """Non-torch increase of the profiling run per GPU (NCCL buffers from TP 2; an estimate)."""
    if tp >= 2:
        gib = overheads.nccl_base_gib + overheads.nccl_per_rank_gib * tp
    elif pp >= 2:
        gib = overheads.non_torch_pp_only_gib
    else:
        gib = overheads.non_torch_single_gib
    return int(gib * GIB)


def cuda_graph_bytes(
    stage_layers: int, tp: int = 1, enforce_eager: bool = False, overheads: VllmOverheads = V0_19
) -> int:
    """CUDA-graph pool per GPU, captured after the KV cache is sized (an estimate; 0 with eager mode)."""
    if enforce_eager:
        return 0
    gib = overheads.cuda_graph_base_gib + overheads.cuda_graph_per_layer_gib * stage_layers / math.pow(
        tp, 0.25
    )
    return int(gib * GIB)
