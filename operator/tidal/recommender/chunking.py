"""``max_num_batched_tokens`` (the per-step chunk budget) from the TPOT target and the expected prompt mix.

Each vLLM engine step runs the batch's decodes plus up to ``max_num_batched_tokens`` of prefill. When long
prompts are waiting the scheduler fills that budget, so one step carries a whole chunk, and every request
decoding in that step sees the chunk's time as its inter-token gap. vLLM's default (8,192 on large GPUs)
ignores the latency target; this module picks the largest chunk whose *worst* step (the decodes plus the
largest prefill the prompt mix can put in one step) the step model (:mod:`tidal.recommender.perf`) predicts
within the TPOT target, without going below what keeps the batch full (``batch + batch x input / output``
tokens a step) and without exceeding vLLM's default unless the steady state needs more; when the decode step
alone already misses the target no chunk can help and vLLM's default stays. It exists apart from
``recommend`` so the choice, its reason and its bounds can be tested on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tidal.recommender.perf import PerformanceModel

CHUNK_GRANULE = 256
"""Chunk sizes are multiples of this (tokens)."""
LONG_PROMPT_FACTOR = 2
"""Without a given tail, the mix's long prompts are taken as this multiple of the mean prompt."""


@dataclass(frozen=True)
class ChunkChoice:
    """The chosen budget and the numbers behind it."""

    tokens: int
    worst_step_seconds: float
    """Predicted step with the batch's decodes and the largest prefill the mix puts in one step."""
    steady_tokens: int
    """Tokens a step needs to keep the batch full (decodes + average prefill)."""
    meets_tpot: bool
    reason: str


def steady_tokens(batch: int, input_tokens: int, output_tokens: int) -> int:
    """Decodes plus the average prefill per step that keeps ``batch`` sequences running."""
    return batch + math.ceil(batch * max(1, input_tokens) / max(1, output_tokens))


def choose_chunk(
    pm: PerformanceModel,
    *,
    batch: int,
    input_tokens: int,
    output_tokens: int,
    tpot_target_s: float,
    default_tokens: int,
    long_input_tokens: int | None = None,
) -> ChunkChoice:
    """The largest chunk (multiple of CHUNK_GRANULE) whose worst step meets ``tpot_target_s`` (see module)."""
    batch = max(1, batch)
    steady = steady_tokens(batch, input_tokens, output_tokens)
    longest = long_input_tokens or LONG_PROMPT_FACTOR * max(1, input_tokens)
    kv = batch * (input_tokens + output_tokens // 2)
    floor = _round_up(max(steady, batch, CHUNK_GRANULE))
    cap = max(floor, default_tokens)

    def worst(chunk: int) -> float:
        prefill = min(chunk - batch, max(longest, steady - batch))
        return pm.step_seconds(prefill, batch, kv)

    decode_only = pm.step_seconds(0, batch, kv)
    if decode_only > tpot_target_s:
        return ChunkChoice(
            cap,
            worst(cap),
            steady,
            False,
            f"the decode step alone ({decode_only * 1e3:.1f} ms) misses the {tpot_target_s * 1e3:g} ms TPOT "
            "target, so no chunk size can meet it: vLLM's default kept",
        )
    best = floor
    for chunk in range(floor, cap + 1, CHUNK_GRANULE):
        if worst(chunk) > tpot_target_s:
            break  # the step time grows with the chunk
        best = chunk
    step = worst(best)
    meets = step <= tpot_target_s
    target_ms = tpot_target_s * 1e3
    if not meets:
        why = (
            f"even the smallest chunk that keeps the batch full ({floor:,} tokens) makes a "
            f"{step * 1e3:.1f} ms step, over the {target_ms:g} ms TPOT target"
        )
    elif best == cap:
        why = f"a full chunk's step {step * 1e3:.1f} ms meets the {target_ms:g} ms TPOT target at vLLM's cap"
    else:
        why = (
            f"the largest chunk whose step (decodes + {min(best - batch, max(longest, steady - batch)):,} "
            f"prefill tokens) stays within the {target_ms:g} ms TPOT target: {step * 1e3:.1f} ms; "
            f"{best + CHUNK_GRANULE:,} would take {worst(best + CHUNK_GRANULE) * 1e3:.1f} ms"
        )
    return ChunkChoice(best, step, steady, meets, why)


def _round_up(n: int) -> int:
    return math.ceil(n / CHUNK_GRANULE) * CHUNK_GRANULE
