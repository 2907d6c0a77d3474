"""Choose vLLM engine settings for a model on a GPU type, and say why (``recommend``).

Given values in :class:`RecommendInput` are fixed; the rest are chosen in this order, each with a reason:

1. Parallelism: the smallest tensor-parallel size, then pipeline-parallel size, that *fits*: TP divides the
   attention heads (and KV heads divide TP or TP divides them), TP <= GPUs per node (PP spans nodes), vLLM
   would start (weights + activation + non-torch < memory x fraction; KV holds one ``max_model_len``
   sequence) and the KV cache holds at least ``min_concurrency`` sequences of the expected length, so
   the replica is not starved of batch.
2. ``gpu_memory_utilization``: vLLM's 0.90 (see ``DEFAULT_GPU_MEMORY_UTILIZATION``).
3. ``max_model_len``: the model's maximum, capped so that one maximum-length sequence uses at most
   ``1/LEN_HEADROOM`` of the KV cache (rounded down to 1,024 tokens).
4. ``max_num_seqs``: the largest batch the KV cache holds at full expected length whose predicted TPOT and
   TTFT (:mod:`tidal.recommender.perf`) meet the targets; ``max_num_batched_tokens``: the largest chunk
   whose worst step (decodes + the prompt mix's largest prefill) meets the TPOT target, at least what keeps
   the batch full, at most vLLM's default for the GPU class (8,192 on >= 70 GiB GPUs, else 2,048) unless the
   steady state needs more (:mod:`tidal.recommender.chunking`).

Explicit values that vLLM would refuse make the recommendation ``feasible=False`` with the reason.

The steps live in :mod:`.parallelism` (1) and :mod:`.batching` (3, 4), the types in :mod:`.recommendation`;
this module runs them in order, writes the arithmetic and re-exports the public names.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tidal.recommender.batching import choose_batch, choose_max_model_len, chunk_for
from tidal.recommender.gpus import GPUSpec
from tidal.recommender.memory import (
    effective_quantization,
    normalize_quantization,
    resolve_dtype,
    resolve_kv_dtype,
)
from tidal.recommender.memplan import MemoryPlan, infeasibility
from tidal.recommender.models import ModelProfile, gib
from tidal.recommender.parallelism import ParallelFit, choose_parallelism, evaluate_parallelism, plan_for
from tidal.recommender.perf import LatencyPrediction, PerformanceModel, performance_model
from tidal.recommender.recommendation import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_SLO_TPOT_SECONDS,
    DEFAULT_SLO_TTFT_SECONDS,
    LEN_HEADROOM,
    MAX_PP,
    MAX_SEQS_CAP,
    Predicted,
    Recommendation,
    RecommendInput,
    expected_len,
    slo_targets,
    vllm_default_limits,
)

_FIXABLE = ("tp", "pp", "gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens")


def _parallel_reasons(inp: RecommendInput, fit: ParallelFit, plan: MemoryPlan) -> list[str]:
    """The line that names the chosen (TP, PP), or why it does not fit."""
    tp, pp = fit.tp, fit.pp
    if not fit.fits:
        return [f"TP={tp} PP={pp}: {r}" for r in fit.reasons]
    how = "given" if inp.tp is not None and (inp.pp is not None or pp == 1) else "smallest that fits"
    gpus = f"{tp * pp} GPU{'s' if tp * pp > 1 else ''}"
    return [f"TP={tp} PP={pp} ({gpus}): {how}; weights {gib(plan.weights_bytes):.2f} GiB/GPU"]


def _measured_reason(inp: RecommendInput, plan: MemoryPlan) -> list[str]:
    if not inp.measured_kv_tokens:
        return []
    return [
        f"KV capacity {inp.measured_kv_tokens:,} tokens per GPU as the running engine reports it (the memory "
        f"model predicted {plan.kv_tokens:,}): max_model_len and max_num_seqs are sized from the measurement"
    ]


def _arithmetic(
    inp: RecommendInput, final: MemoryPlan, pm: PerformanceModel, seqs: int, pred: LatencyPrediction
) -> tuple[str, ...]:
    profile, gpu = inp.model, inp.gpu
    return (
        f"model {profile.name}: {profile.total_params / 1e9:.2f} B parameters"
        + (f" ({profile.active_params / 1e9:.2f} B active)" if profile.is_moe else "")
        + f", {profile.num_layers} layers, {profile.num_attention_heads} heads / "
        f"{profile.num_kv_heads} KV heads"
        + (f", MLA latent {profile.kv_lora_rank}+{profile.qk_rope_head_dim}" if profile.is_mla else ""),
        f"GPU {gpu.name}: {gpu.memory_gib:.2f} GiB, {gpu.bandwidth_tbps:g} TB/s, "
        f"{gpu.bf16_tflops:g} BF16 TFLOP/s",
        *final.lines(),
        *pm.describe(),
        f"predicted at batch {seqs}: TTFT {pred.ttft_seconds:.3f} s, TPOT {pred.tpot_seconds * 1e3:.2f} ms, "
        f"{pred.output_tokens_per_second:,.0f} output tokens/s per replica",
    )


def recommend_config(inp: RecommendInput) -> Recommendation:
    """The recommendation for ``inp`` (see the module docstring)."""
    profile, gpu = inp.model, inp.gpu
    quant = effective_quantization(profile, normalize_quantization(inp.quantization))
    dtype = resolve_dtype(profile, inp.dtype)
    kv_dtype = resolve_kv_dtype(profile, inp.kv_cache_dtype, inp.dtype)
    fixed = tuple(name for name in _FIXABLE if getattr(inp, name) is not None)
    mbt_default, _ = vllm_default_limits(gpu)
    fit, reasons = choose_parallelism(inp)
    tp, pp = fit.tp, fit.pp
    util = inp.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    if inp.gpu_memory_utilization is None:
        reasons.append(
            f"gpu_memory_utilization {util:.2f}: vLLM's default (see DEFAULT_GPU_MEMORY_UTILIZATION)"
        )
    if fit.plan is None:
        # Not even a memory plan (bad TP/PP given): report what we can.
        return _infeasible(inp, tp, pp, util, dtype, kv_dtype, quant, [*reasons, *fit.reasons], fixed)
    plan = fit.plan
    feasible = fit.fits
    head = _parallel_reasons(inp, fit, plan)
    reasons = [*head, *reasons] if feasible else [*reasons, *head]
    kv_tokens = inp.measured_kv_tokens or plan.kv_tokens
    reasons.extend(_measured_reason(inp, plan))
    max_len, len_reason = choose_max_model_len(inp, kv_tokens)
    reasons.append(len_reason)
    if max_len > profile.max_position_embeddings:
        feasible = False
        reasons.append(
            f"max_model_len {max_len:,} exceeds the model's max_position_embeddings "
            f"{profile.max_position_embeddings:,}: vLLM refuses it"
        )
    pm = performance_model(
        profile, gpu, tp=tp, pp=pp, weight_dtype=dtype, kv_cache_dtype=kv_dtype, quantization=quant
    )
    seqs, mbt, pred, slo_met, batch_lines = choose_batch(inp, pm, kv_tokens, mbt_default)
    reasons.extend(batch_lines)
    if inp.max_num_batched_tokens is None:
        chunk = chunk_for(inp, pm, seqs, mbt_default)
        reasons.append(
            f"max_num_batched_tokens {mbt:,}: {chunk.reason} (vLLM's default for this GPU class is "
            f"{mbt_default:,}; the batch needs {chunk.steady_tokens:,} tokens a step to stay full)"
        )
    if mbt < seqs:
        feasible = False
        reasons.append(f"max_num_batched_tokens {mbt:,} < max_num_seqs {seqs}: vLLM refuses this")
    final = plan_for(inp, tp, pp, util, seqs, mbt)  # with the chosen limits
    judged = replace(final, kv_tokens=kv_tokens) if inp.measured_kv_tokens else final
    refused = infeasibility(judged, max_len)
    if refused and feasible:
        feasible = False
        reasons.extend(refused)
    return Recommendation(
        model=profile.name,
        gpu=gpu.name,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        gpu_memory_utilization=util,
        max_model_len=max_len,
        max_num_seqs=seqs,
        max_num_batched_tokens=mbt,
        dtype=dtype,
        kv_cache_dtype=kv_dtype if inp.kv_cache_dtype != "auto" else "auto",
        quantization=quant,
        block_size=inp.block_size,
        weights_gib_per_gpu=gib(final.weights_bytes),
        kv_cache_gib_per_gpu=gib(max(0, final.kv_cache_bytes)),
        kv_cache_tokens=inp.measured_kv_tokens or final.kv_tokens,
        kv_bytes_per_token=final.kv_bytes_per_token,
        feasible=feasible,
        slo_met=slo_met,
        slo_ttft_seconds=slo_targets(inp)[0],
        slo_tpot_seconds=slo_targets(inp)[1],
        predicted=Predicted(pred.ttft_seconds, pred.tpot_seconds, pred.output_tokens_per_second),
        reasons=tuple(reasons),
        arithmetic=_arithmetic(inp, final, pm, seqs, pred),
        fixed=fixed,
    )


def _infeasible(
    inp: RecommendInput,
    tp: int,
    pp: int,
    util: float,
    dtype: str,
    kv_dtype: str,
    quant: str | None,
    reasons: list[str],
    fixed: tuple[str, ...],
) -> Recommendation:
    mbt, seqs = vllm_default_limits(inp.gpu)
    return Recommendation(
        model=inp.model.name,
        gpu=inp.gpu.name,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        gpu_memory_utilization=util,
        max_model_len=inp.max_model_len or inp.model.max_position_embeddings,
        max_num_seqs=inp.max_num_seqs or seqs,
        max_num_batched_tokens=inp.max_num_batched_tokens or mbt,
        dtype=dtype,
        kv_cache_dtype=kv_dtype if inp.kv_cache_dtype != "auto" else "auto",
        quantization=quant,
        block_size=inp.block_size,
        weights_gib_per_gpu=0.0,
        kv_cache_gib_per_gpu=0.0,
        kv_cache_tokens=0,
        kv_bytes_per_token=0,
        feasible=False,
        slo_met=False,
        slo_ttft_seconds=slo_targets(inp)[0],
        slo_tpot_seconds=slo_targets(inp)[1],
        predicted=Predicted(0.0, 0.0, 0.0),
        reasons=tuple(reasons),
        arithmetic=(),
        fixed=fixed,
    )


def recommend(
    request: RecommendInput | ModelProfile, gpu: GPUSpec | None = None, **fixed: Any
) -> Recommendation:
    """``recommend(RecommendInput(...))``, or ``recommend(profile, gpu, tp=2, ...)`` for the same fields."""
    if isinstance(request, RecommendInput):
        inp = replace(request, **fixed) if fixed else request
    else:
        if gpu is None:
            raise TypeError("recommend(profile, gpu, ...) needs a GPU")
        inp = RecommendInput(model=request, gpu=gpu, **fixed)
    return recommend_config(inp)


__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "DEFAULT_SLO_TPOT_SECONDS",
    "DEFAULT_SLO_TTFT_SECONDS",
    "LEN_HEADROOM",
    "MAX_PP",
    "MAX_SEQS_CAP",
    "ParallelFit",
    "Predicted",
    "RecommendInput",
    "Recommendation",
    "choose_parallelism",
    "evaluate_parallelism",
    "expected_len",
    "recommend",
    "recommend_config",
    "slo_targets",
    "vllm_default_limits",
]
