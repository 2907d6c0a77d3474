"""Step 1 of a recommendation: the smallest tensor- and pipeline-parallel sizes that fit (see
:mod:`tidal.recommender.recommend`).

Its own module because fitting one (TP, PP) is pure memory arithmetic (:mod:`.memplan`) with its own reasons,
tested on its own (``evaluate_parallelism``), while the search order (PP outer, TP inner) is the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidal.recommender.memory import check_tp
from tidal.recommender.memplan import MemoryPlan, infeasibility, memory_plan
from tidal.recommender.recommendation import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    MAX_PP,
    RecommendInput,
    expected_len,
    vllm_default_limits,
)


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


def plan_for(inp: RecommendInput, tp: int, pp: int, util: float, seqs: int, mbt: int) -> MemoryPlan:
    """The memory plan of ``inp`` at ``tp`` x ``pp`` with these limits (the activation peak depends on
    them)."""
    return memory_plan(
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
    plan = plan_for(inp, tp, pp, util, seqs, mbt)
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
