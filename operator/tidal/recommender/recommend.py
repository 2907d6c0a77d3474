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
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tidal.recommender.chunking import ChunkChoice, choose_chunk
from tidal.recommender.gpus import GPUSpec
from tidal.recommender.memory import (
    DEFAULT_BLOCK_SIZE,
    check_tp,
    effective_quantization,
    normalize_quantization,
    resolve_dtype,
    resolve_kv_dtype,
)
from tidal.recommender.memplan import MemoryPlan, infeasibility, memory_plan
from tidal.recommender.models import ModelProfile, gib
from tidal.recommender.perf import LatencyPrediction, PerformanceModel, performance_model, predict

DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
"""vLLM's default. Not raised on large GPUs: the 10% left over covers CUDA-graph pools, NCCL buffers and
allocator fragmentation that vLLM's profiler does not see, and a start-up OOM costs more than 5% of KV."""
LEN_HEADROOM = 2
"""One maximum-length sequence may use at most 1/LEN_HEADROOM of the KV cache."""
MAX_SEQS_CAP = 1024
"""Never recommend more concurrent sequences than vLLM's largest default."""
MAX_PP = 16
"""Largest pipeline-parallel size tried (nodes)."""
DEFAULT_SLO_TTFT_SECONDS = 2.0
"""TTFT target when none is given (MLPerf Inference server scenario, Llama-3.1-8B: p99 TTFT <= 2 s)."""
DEFAULT_SLO_TPOT_SECONDS = 0.1
"""TPOT target when none is given (MLPerf Inference server scenario, Llama-3.1-8B: p99 TPOT <= 100 ms)."""


def vllm_default_limits(gpu: GPUSpec) -> tuple[int, int]:
    """vLLM's API-server defaults ``(max_num_batched_tokens, max_num_seqs)`` for the GPU's class."""
    return (8192, 1024) if gpu.is_large else (2048, 256)


@dataclass(frozen=True)
class RecommendInput:
    """What to recommend for; ``None`` fields are chosen by the recommender, the others are fixed."""

    model: ModelProfile
    gpu: GPUSpec
    gpus_per_node: int = 8
    tp: int | None = None
    pp: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    input_tokens: int = 1024
    """Expected prompt length."""
    output_tokens: int = 256
    """Expected generated length."""
    slo_ttft_seconds: float | None = None
    """TTFT target; None: DEFAULT_SLO_TTFT_SECONDS."""
    slo_tpot_seconds: float | None = None
    """TPOT target; None: DEFAULT_SLO_TPOT_SECONDS."""
    min_concurrency: int = 16
    """Sequences of the expected length the KV cache must hold for a parallelism to count as fitting."""
    block_size: int = DEFAULT_BLOCK_SIZE
    enforce_eager: bool = False
    long_input_tokens: int | None = None
    """The long prompts of the expected mix (e.g. p90); None: 2 x ``input_tokens`` (chunk sizing)."""
    vllm_release: str | None = None
    """vLLM release whose overheads to use (None: the calibrated default, v0.19)."""


@dataclass(frozen=True)
class Predicted:
    """Predicted latency at the recommended concurrency (the batch full, steady state)."""

    ttft_seconds: float
    tpot_seconds: float
    output_tokens_per_second: float


@dataclass(frozen=True)
class Recommendation:
    """Engine settings, the arithmetic behind them and whether vLLM would start with them."""

    model: str
    gpu: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    dtype: str
    kv_cache_dtype: str
    quantization: str | None
    block_size: int
    weights_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int
    kv_bytes_per_token: int
    """Per GPU, after the TP split."""
    feasible: bool
    slo_met: bool
    """The predicted latency at ``max_num_seqs`` meets the TTFT/TPOT targets (given or default)."""
    predicted: Predicted
    slo_ttft_seconds: float = DEFAULT_SLO_TTFT_SECONDS
    slo_tpot_seconds: float = DEFAULT_SLO_TPOT_SECONDS
    reasons: tuple[str, ...] = ()
    arithmetic: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    """Which settings were given rather than recommended."""

    @property
    def num_gpus(self) -> int:
        """GPUs one replica uses."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the ``tidal recommend --json`` output)."""
        return {
            "model": self.model,
            "gpu": self.gpu,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "num_gpus": self.num_gpus,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "dtype": self.dtype,
            "kv_cache_dtype": self.kv_cache_dtype,
            "quantization": self.quantization,
            "block_size": self.block_size,
            "weights_gib_per_gpu": round(self.weights_gib_per_gpu, 3),
            "kv_cache_gib_per_gpu": round(self.kv_cache_gib_per_gpu, 3),
            "kv_cache_tokens": self.kv_cache_tokens,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "feasible": self.feasible,
            "slo_met": self.slo_met,
            "slo": {"ttft_seconds": self.slo_ttft_seconds, "tpot_seconds": self.slo_tpot_seconds},
            "reasons": list(self.reasons),
            "arithmetic": list(self.arithmetic),
            "fixed": list(self.fixed),
            "predicted": {
                "ttft_seconds": round(self.predicted.ttft_seconds, 6),
                "tpot_seconds": round(self.predicted.tpot_seconds, 6),
                "output_tokens_per_second": round(self.predicted.output_tokens_per_second, 2),
            },
        }

    def engine_args(self) -> list[str]:
        """The vLLM command-line flags that apply this recommendation."""
        args = [
            f"--tensor-parallel-size={self.tensor_parallel_size}",
            f"--pipeline-parallel-size={self.pipeline_parallel_size}",
            f"--gpu-memory-utilization={self.gpu_memory_utilization:g}",
            f"--max-model-len={self.max_model_len}",
            f"--max-num-seqs={self.max_num_seqs}",
            f"--max-num-batched-tokens={self.max_num_batched_tokens}",
        ]
        if self.kv_cache_dtype.startswith("fp8"):
            args.append(f"--kv-cache-dtype={self.kv_cache_dtype}")
        if self.quantization:
            args.append(f"--quantization={self.quantization}")
        return args


@dataclass(frozen=True)
class ParallelFit:
    """Whether one (TP, PP) fits, with its memory plan and the reasons it does not."""

    tp: int
    pp: int
    plan: MemoryPlan | None
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        """No reason against it."""
        return not self.reasons


def _defaults(inp: RecommendInput) -> tuple[int, int, float]:
    mbt, seqs = vllm_default_limits(inp.gpu)
    return (
        inp.max_num_batched_tokens or mbt,
        inp.max_num_seqs or seqs,
        inp.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION,
    )


def expected_len(inp: RecommendInput) -> int:
    """Tokens one expected request occupies at its end (prompt + output)."""
    return max(1, inp.input_tokens) + max(1, inp.output_tokens)


def evaluate_parallelism(inp: RecommendInput, tp: int, pp: int) -> ParallelFit:
    """Does ``tp`` x ``pp`` fit (see the module docstring, step 1)? Pure arithmetic, no search."""
    reasons: list[str] = []
    bad_tp = check_tp(inp.model, tp)
    if bad_tp:
        return ParallelFit(tp, pp, None, (bad_tp,))
    if tp > inp.gpus_per_node:
        return ParallelFit(
            tp,
            pp,
            None,
            (f"tensor_parallel_size {tp} exceeds the {inp.gpus_per_node} GPUs of a node; "
             "use pipeline parallelism across nodes",),
        )  # fmt: skip
    if pp < 1 or pp > inp.model.num_layers:
        return ParallelFit(
            tp, pp, None, (f"pipeline_parallel_size {pp} must be in 1..{inp.model.num_layers}",)
        )
    mbt, seqs, util = _defaults(inp)
    plan = memory_plan(
        inp.model,
        inp.gpu.memory_bytes,
        tp=tp,
        pp=pp,
        gpu_memory_utilization=util,
        dtype=inp.dtype,
        quantization=inp.quantization,
        kv_cache_dtype=inp.kv_cache_dtype,
        max_num_batched_tokens=mbt,
        max_num_seqs=seqs,
        block_size=inp.block_size,
        enforce_eager=inp.enforce_eager,
        vllm_release=inp.vllm_release,
    )
    min_len = inp.max_model_len or min(inp.model.max_position_embeddings, expected_len(inp))
    reasons.extend(infeasibility(plan, min_len))
    if not reasons:
        need = inp.min_concurrency * expected_len(inp)
        if plan.kv_tokens < need:
            reasons.append(
                f"KV cache holds {plan.kv_tokens:,} tokens per GPU, fewer than {inp.min_concurrency} "
                "sequences "
                f"x {expected_len(inp):,} tokens = {need:,} (min_concurrency)"
            )
    return ParallelFit(tp, pp, plan, tuple(reasons))


def _tp_candidates(inp: RecommendInput) -> list[int]:
    if inp.tp is not None:
        return [inp.tp]
    return [t for t in range(1, inp.gpus_per_node + 1) if inp.gpus_per_node % t == 0]


def _pp_candidates(inp: RecommendInput) -> list[int]:
    if inp.pp is not None:
        return [inp.pp]
    return list(range(1, min(MAX_PP, inp.model.num_layers) + 1))


def choose_parallelism(inp: RecommendInput) -> tuple[ParallelFit, list[str]]:
    """The first fitting (TP, PP), PP outer and TP inner (smallest TP first, PP only when a node is full).

    Returns the fit and the lines explaining rejected smaller configurations (one per TP/PP tried).
    """
    tried: list[str] = []
    last: ParallelFit | None = None
    for pp in _pp_candidates(inp):
        for tp in _tp_candidates(inp):
            fit = evaluate_parallelism(inp, tp, pp)
            if fit.fits:
                return fit, tried
            if check_tp(inp.model, tp) is None or inp.tp is not None:
                tried.append(f"TP={tp} PP={pp} rejected: {fit.reasons[0]}")
            if fit.plan is not None or last is None:
                last = fit
    assert last is not None
    return last, tried


def _round_len(n: int) -> int:
    return n if n < 1024 else n // 1024 * 1024


def _choose_max_model_len(inp: RecommendInput, plan: MemoryPlan) -> tuple[int, str]:
    model_max = inp.model.max_position_embeddings
    if inp.max_model_len is not None:
        return inp.max_model_len, f"max_model_len {inp.max_model_len:,} (given)"
    cap = _round_len(plan.kv_tokens // LEN_HEADROOM)
    if cap >= model_max:
        return model_max, f"max_model_len {model_max:,}: the model's maximum (KV holds {plan.kv_tokens:,})"
    length = max(cap, min(model_max, expected_len(inp)))
    return length, (
        f"max_model_len {length:,}: KV holds {plan.kv_tokens:,} tokens; one sequence may use at most "
        f"1/{LEN_HEADROOM} of it (model maximum {model_max:,})"
    )


def _batch_candidates(limit: int) -> list[int]:
    small = [b for b in (1, 2, 4, 8) if b <= limit]
    return small + list(range(16, limit + 1, 8))


def slo_targets(inp: RecommendInput) -> tuple[float, float]:
    """(TTFT, TPOT) targets: the given ones, else the defaults."""
    ttft = inp.slo_ttft_seconds if inp.slo_ttft_seconds is not None else DEFAULT_SLO_TTFT_SECONDS
    tpot = inp.slo_tpot_seconds if inp.slo_tpot_seconds is not None else DEFAULT_SLO_TPOT_SECONDS
    return ttft, tpot


def chunk_for(inp: RecommendInput, pm: PerformanceModel, batch: int, mbt_default: int) -> ChunkChoice:
    """The chunk budget for ``batch`` from the TPOT target and the prompt mix (:mod:`.chunking`)."""
    return choose_chunk(
        pm,
        batch=batch,
        input_tokens=inp.input_tokens,
        output_tokens=inp.output_tokens,
        tpot_target_s=slo_targets(inp)[1],
        default_tokens=mbt_default,
        long_input_tokens=inp.long_input_tokens,
    )


def _choose_batch(
    inp: RecommendInput, pm: PerformanceModel, kv_tokens: int, mbt_default: int
) -> tuple[int, int, LatencyPrediction, bool, list[str]]:
    """(max_num_seqs, max_num_batched_tokens, prediction at that batch, targets met, reason lines)."""
    lines: list[str] = []
    per_seq = expected_len(inp)
    kv_limit = max(1, kv_tokens // per_seq)
    ttft_target, tpot_target = slo_targets(inp)
    targets = f"TTFT <= {ttft_target:g} s, TPOT <= {tpot_target * 1e3:g} ms" + (
        " (default targets: MLPerf server)"
        if inp.slo_ttft_seconds is None and inp.slo_tpot_seconds is None
        else ""
    )

    def mbt_for(batch: int) -> int:
        if inp.max_num_batched_tokens is not None:
            return inp.max_num_batched_tokens
        return chunk_for(inp, pm, batch, mbt_default).tokens

    def meets(p: LatencyPrediction) -> bool:
        return p.tpot_seconds <= tpot_target and p.ttft_seconds <= ttft_target

    if inp.max_num_seqs is not None:
        b = inp.max_num_seqs
        mbt = mbt_for(b)
        p = predict(pm, b, inp.input_tokens, inp.output_tokens, mbt)
        if b > kv_limit:
            lines.append(
                f"max_num_seqs {b} (given) exceeds the {kv_limit} sequences of {per_seq:,} tokens the KV "
                "holds: expect preemptions at full load"
            )
        if not meets(p):
            lines.append(
                f"max_num_seqs {b} (given): predicted TTFT {p.ttft_seconds:.3f} s, TPOT "
                f"{p.tpot_seconds * 1e3:.1f} ms miss the targets ({targets})"
            )
        return b, mbt, p, meets(p), lines

    limit = min(MAX_SEQS_CAP, kv_limit)
    best: tuple[int, int, LatencyPrediction] | None = None
    for b in _batch_candidates(limit):
        mbt = mbt_for(b)
        p = predict(pm, b, inp.input_tokens, inp.output_tokens, mbt)
        if not meets(p):
            break  # latency grows with the batch: larger ones miss too
        best = (b, mbt, p)
    lines.append(
        f"KV holds {kv_limit:,} sequences of {inp.input_tokens:,}+{inp.output_tokens:,} tokens "
        f"({kv_tokens:,} // {per_seq:,}); cap {MAX_SEQS_CAP}"
    )
    if best is None:
        mbt = mbt_for(1)
        p = predict(pm, 1, inp.input_tokens, inp.output_tokens, mbt)
        lines.append(
            f"latency targets ({targets}) cannot be met even at batch 1: predicted TTFT "
            f"{p.ttft_seconds:.3f} s, TPOT {p.tpot_seconds * 1e3:.1f} ms"
        )
        return 1, mbt, p, False, lines
    b, mbt, p = best
    limited = " (limited by KV/cap, not latency)" if b == _batch_candidates(limit)[-1] else ""
    lines.append(
        f"max_num_seqs {b}: the largest batch whose predicted TPOT {p.tpot_seconds * 1e3:.1f} ms and TTFT "
        f"{p.ttft_seconds:.3f} s meet {targets}{limited}"
    )
    return b, mbt, p, True, lines


def recommend_config(inp: RecommendInput) -> Recommendation:
    """The recommendation for ``inp`` (see the module docstring)."""
    profile, gpu = inp.model, inp.gpu
    quant = effective_quantization(profile, normalize_quantization(inp.quantization))
    dtype = resolve_dtype(profile, inp.dtype)
    kv_dtype = resolve_kv_dtype(profile, inp.kv_cache_dtype, inp.dtype)
    fixed = tuple(
        name
        for name in (
            "tp",
            "pp",
            "gpu_memory_utilization",
            "max_model_len",
            "max_num_seqs",
            "max_num_batched_tokens",
        )
        if getattr(inp, name) is not None
    )
    reasons: list[str] = []
    mbt_default, _ = vllm_default_limits(gpu)
    fit, tried = choose_parallelism(inp)
    reasons.extend(tried)
    tp, pp = fit.tp, fit.pp
    util = inp.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    if inp.gpu_memory_utilization is None:
        reasons.append(
            f"gpu_memory_utilization {util:.2f}: vLLM's default (see DEFAULT_GPU_MEMORY_UTILIZATION)"
        )
    feasible = fit.fits
    if fit.plan is None:
        # Not even a memory plan (bad TP/PP given): report what we can.
        reasons.extend(fit.reasons)
        return _infeasible(inp, tp, pp, util, dtype, kv_dtype, quant, reasons, fixed)
    plan = fit.plan
    if not feasible:
        reasons.extend(f"TP={tp} PP={pp}: {r}" for r in fit.reasons)
    else:
        reasons.insert(
            0,
            f"TP={tp} PP={pp} ({tp * pp} GPU{'s' if tp * pp > 1 else ''}): "
            + ("given" if inp.tp is not None and (inp.pp is not None or pp == 1) else "smallest that fits")
            + f"; weights {gib(plan.weights_bytes):.2f} GiB/GPU",
        )
    max_len, len_reason = _choose_max_model_len(inp, plan)
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
    seqs, mbt, pred, slo_met, batch_lines = _choose_batch(inp, pm, plan.kv_tokens, mbt_default)
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
    # Re-plan with the chosen limits (the activation peak depends on them).
    final = memory_plan(
        profile,
        gpu.memory_bytes,
        tp=tp,
        pp=pp,
        gpu_memory_utilization=util,
        dtype=inp.dtype,
        quantization=inp.quantization,
        kv_cache_dtype=inp.kv_cache_dtype,
        max_num_batched_tokens=mbt,
        max_num_seqs=seqs,
        block_size=inp.block_size,
        enforce_eager=inp.enforce_eager,
        vllm_release=inp.vllm_release,
    )
    refused = infeasibility(final, max_len)
    if refused and feasible:
        feasible = False
        reasons.extend(refused)
    arithmetic = [
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
    ]
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
        kv_cache_tokens=final.kv_tokens,
        kv_bytes_per_token=final.kv_bytes_per_token,
        feasible=feasible,
        slo_met=slo_met,
        slo_ttft_seconds=slo_targets(inp)[0],
        slo_tpot_seconds=slo_targets(inp)[1],
        predicted=Predicted(pred.ttft_seconds, pred.tpot_seconds, pred.output_tokens_per_second),
        reasons=tuple(reasons),
        arithmetic=tuple(arithmetic),
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
