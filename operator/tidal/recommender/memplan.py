"""One configuration's memory plan, per pipeline stage, the way vLLM sizes it, and why vLLM would refuse it.

Separate from :mod:`tidal.recommender.memory` (the arithmetic of weights and KV bytes) because this module
puts the terms together per stage, decides which stage limits the KV cache, checks the CUDA-graph margin,
and explains each term, saying which ones are exact arithmetic and which are calibrated estimates (and
which vLLM itself measures at start-up, so the online check can compare them).
"""

from __future__ import annotations

from dataclasses import dataclass

from tidal.recommender.memory import (
    DEFAULT_BLOCK_SIZE,
    EXPERTS_ONLY_QUANT,
    _stage_kv_tokens,
    _stage_slices,
    kv_bytes_per_token,
    resolve_dtype,
    resolve_kv_dtype,
    weight_bytes,
)
from tidal.recommender.models import ModelProfile, gib
from tidal.recommender.overheads import (
    activation_stage_bytes,
    cuda_graph_bytes,
    non_torch_bytes,
    overheads_for,
)
from tidal.recommender.quant import effective_quantization


@dataclass(frozen=True)
class MemoryPlan:
    """Every number of one configuration's memory arithmetic (bytes per GPU)."""

    total_bytes: int
    gpu_memory_utilization: float
    weights_bytes: int
    """The largest stage's weights."""
    activation_bytes: int
    """The profiling peak of the stage that limits the KV cache."""
    non_torch_bytes: int
    kv_cache_bytes: int
    """available_kv of the limiting stage: reserved - weights - activation - non-torch (<0: infeasible)."""
    kv_bytes_per_token: int
    """On this GPU (after the TP split; the largest stage)."""
    kv_bytes_per_token_model: int
    """Whole model, unsplit (for display)."""
    kv_tokens: int
    block_size: int
    weight_dtype: str
    kv_dtype: str
    quantization: str | None
    stage_weights: tuple[int, ...] = ()
    stage_activation: tuple[int, ...] = ()
    stage_kv_bytes: tuple[int, ...] = ()
    stage_kv_tokens: tuple[int, ...] = ()
    limiting_stage: int = 0
    cuda_graph_bytes: int = 0
    """CUDA-graph pool (captured after the KV is sized; lives in the 1 - utilization margin)."""
    cuda_context_bytes: int = 0
    vllm_release: str = ""
    checkpoint_scale: float = 1.0

    @property
    def reserved_bytes(self) -> int:
        """total x gpu_memory_utilization."""
        return int(self.total_bytes * self.gpu_memory_utilization)

    @property
    def margin_bytes(self) -> int:
        """Memory outside the reserved fraction: CUDA context and CUDA graphs must fit in it."""
        return self.total_bytes - self.reserved_bytes

    def _weights_label(self) -> str:
        if not self.quantization:
            return self.weight_dtype
        part = "experts" if self.quantization in EXPERTS_ONLY_QUANT else "linear layers"
        return f"{self.quantization} {part}, {self.weight_dtype} rest"

    def lines(self) -> list[str]:
        """The arithmetic, one step a line, each term labelled exact, estimate, or follows."""
        w, a, nt, kv = (gib(x) for x in (self.weights_bytes, self.activation_bytes, self.non_torch_bytes,
                                          self.kv_cache_bytes))  # fmt: skip
        ckpt = (
            f", scaled x{self.checkpoint_scale:.3f} to the checkpoint's safetensors size"
            if self.checkpoint_scale != 1.0
            else ""
        )
        out = [
            "terms vLLM measures at start-up (its log: 'Model loading took', 'torch peak memory increase', "
            "'non-torch forward increase', 'Available KV cache memory', 'CUDA graph pool'); here weights and "
            f"KV bytes/token are exact arithmetic, activation, non-torch and CUDA graphs are estimates "
            f"calibrated on vLLM {self.vllm_release} measurements",
            f"reserved = {gib(self.total_bytes):.2f} GiB x {self.gpu_memory_utilization:.2f} = "
            f"{gib(self.reserved_bytes):.2f} GiB per GPU",
            f"weights ({self._weights_label()}) = {w:.2f} GiB per GPU [exact arithmetic{ckpt}]",
            f"activation peak ≈ {a:.2f} GiB [estimate: profiling run of the limiting stage]; non-torch ≈ "
            f"{nt:.2f} GiB [estimate: NCCL buffers, workspaces]",
            f"KV space = {gib(self.reserved_bytes):.2f} - {w:.2f} - {a:.2f} - {nt:.2f} = {kv:.2f} GiB "
            "per GPU [follows]",
        ]
        if len(self.stage_weights) > 1:
            out.append(
                "per stage (weights / activation / KV GiB): "
                + "; ".join(
                    f"{i}: {gib(sw):.2f} / {gib(sa):.2f} / {gib(sk):.2f}"
                    for i, (sw, sa, sk) in enumerate(
                        zip(self.stage_weights, self.stage_activation, self.stage_kv_bytes, strict=True)
                    )
                )
                + f"; stage {self.limiting_stage} limits the KV cache"
            )
        out += [
            f"KV bytes/token ({self.kv_dtype}) = {self.kv_bytes_per_token:,} per GPU "
            f"({self.kv_bytes_per_token_model:,} for the whole model) [exact]",
            f"KV tokens = floor({max(self.kv_cache_bytes, 0):,} / ({self.kv_bytes_per_token:,} x "
            f"{self.block_size})) x {self.block_size} = {self.kv_tokens:,}",
            f"CUDA graphs ≈ {gib(self.cuda_graph_bytes):.2f} GiB [estimate] + CUDA context "
            f"{gib(self.cuda_context_bytes):.2f} GiB must fit in the {gib(self.margin_bytes):.2f} GiB "
            "outside the reserved fraction (captured after the KV is sized)",
        ]
        return out


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
    vllm_release: str | None = None,
) -> MemoryPlan:
    """The memory arithmetic of one configuration, per pipeline stage, the way vLLM sizes it."""
    ov = overheads_for(vllm_release)
    w = weight_bytes(profile, tp, pp, dtype, quantization)
    act_b = 2.0 if resolve_dtype(profile, dtype) != "float32" else 4.0
    nt = non_torch_bytes(tp, pp, ov)
    reserved = int(total_bytes * gpu_memory_utilization)
    kv_dtype = resolve_kv_dtype(profile, kv_cache_dtype, dtype)
    acts, kvs, toks = [], [], []
    for stage, (start, n) in enumerate(_stage_slices(profile, pp)):
        act = activation_stage_bytes(
            profile, stage=stage, pp=pp, tp=tp, max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs, act_bytes=act_b, overheads=ov,
        )  # fmt: skip
        acts.append(act)
        kvs.append(reserved - w.per_stage[stage] - act - nt)
        toks.append(_stage_kv_tokens(profile, kvs[-1], tp, kv_dtype, block_size, start, n))
    limiting = min(range(pp), key=lambda i: (toks[i], kvs[i]))
    graph_layers = max(n for _, n in _stage_slices(profile, pp))
    return MemoryPlan(
        total_bytes=total_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        weights_bytes=w.per_gpu,
        activation_bytes=acts[limiting],
        non_torch_bytes=nt,
        kv_cache_bytes=reserved - w.per_gpu - acts[limiting] - nt if pp == 1 else kvs[limiting],
        kv_bytes_per_token=kv_bytes_per_token(profile, tp, pp, kv_cache_dtype, dtype),
        kv_bytes_per_token_model=kv_bytes_per_token(profile, 1, 1, kv_cache_dtype, dtype),
        kv_tokens=toks[limiting],
        block_size=block_size,
        weight_dtype=resolve_dtype(profile, dtype),
        kv_dtype=kv_dtype,
        quantization=effective_quantization(profile, quantization),
        stage_weights=w.per_stage,
        stage_activation=tuple(acts),
        stage_kv_bytes=tuple(kvs),
        stage_kv_tokens=tuple(toks),
        limiting_stage=limiting,
        cuda_graph_bytes=cuda_graph_bytes(graph_layers, tp, enforce_eager, ov),
        cuda_context_bytes=int(ov.cuda_context_gib * 2**30),
        vllm_release=ov.release,
        checkpoint_scale=w.checkpoint_scale,
    )


def infeasibility(plan: MemoryPlan, max_model_len: int) -> list[str]:
    """Why vLLM would refuse to start with this plan (empty when it would start)."""
    reasons: list[str] = []
    fixed = plan.reserved_bytes - plan.kv_cache_bytes
    if plan.kv_cache_bytes <= 0:
        reasons.append(
            f"weights {gib(plan.weights_bytes):.2f} GiB + activation {gib(plan.activation_bytes):.2f} GiB + "
            f"non-torch {gib(plan.non_torch_bytes):.2f} GiB per GPU ({gib(fixed):.2f} GiB) exceed the "
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
    if plan.cuda_context_bytes > plan.margin_bytes:
        reasons.append(
            f"gpu_memory_utilization {plan.gpu_memory_utilization:.3f} asks for more than the memory free "
            f"after the CUDA context ({gib(plan.cuda_context_bytes):.2f} GiB): vLLM refuses to start"
        )
    elif plan.cuda_graph_bytes + plan.cuda_context_bytes > plan.margin_bytes:
        reasons.append(
            f"CUDA graphs (≈{gib(plan.cuda_graph_bytes):.2f} GiB) and the CUDA context "
            f"({gib(plan.cuda_context_bytes):.2f} GiB) do not fit in the {gib(plan.margin_bytes):.2f} GiB "
            f"outside gpu_memory_utilization {plan.gpu_memory_utilization:.2f}: vLLM would run out of memory "
            "capturing them (lower the fraction or use --enforce-eager)"
        )
    return reasons
