"""Steps 3 and 4 of a recommendation: ``max_model_len`` from the KV capacity, ``max_num_seqs`` from the
latency targets and ``max_num_batched_tokens`` from the TPOT target and the prompt mix (see
:mod:`tidal.recommender.recommend`).

Its own module because these choices read only the KV capacity and the performance model, not the memory
plan: the online check (:mod:`tidal.recommender.kvcheck`) re-runs them with the engine's measured capacity.
"""

from __future__ import annotations

from tidal.recommender.chunking import ChunkChoice, choose_chunk
from tidal.recommender.perf import LatencyPrediction, PerformanceModel, predict
from tidal.recommender.recommendation import (
    LEN_HEADROOM,
    MAX_SEQS_CAP,
    RecommendInput,
    expected_len,
    slo_targets,
)


def _round_len(n: int) -> int:
    return n if n < 1024 else n // 1024 * 1024


def choose_max_model_len(inp: RecommendInput, kv_tokens: int) -> tuple[int, str]:
    """The given ``max_model_len``, else the model's maximum capped so that one sequence uses at most
    ``1/LEN_HEADROOM`` of ``kv_tokens``, with the reason."""
    model_max = inp.model.max_position_embeddings
    if inp.max_model_len is not None:
        return inp.max_model_len, f"max_model_len {inp.max_model_len:,} (given)"
    cap = _round_len(kv_tokens // LEN_HEADROOM)
    if cap >= model_max:
        return model_max, f"max_model_len {model_max:,}: the model's maximum (KV holds {kv_tokens:,})"
    length = max(cap, min(model_max, expected_len(inp)))
    return length, (
        f"max_model_len {length:,}: KV holds {kv_tokens:,} tokens; one sequence may use at most "
        f"1/{LEN_HEADROOM} of it (model maximum {model_max:,})"
    )


def _batch_candidates(limit: int) -> list[int]:
    small = [b for b in (1, 2, 4, 8) if b <= limit]
    return small + list(range(16, limit + 1, 8))


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


def choose_batch(
    inp: RecommendInput, pm: PerformanceModel, kv_tokens: int, mbt_default: int
) -> tuple[int, int, LatencyPrediction, bool, list[str]]:
    """(max_num_seqs, max_num_batched_tokens, prediction at that batch, targets met, reason lines): the
    given ``max_num_seqs``, else the largest batch the KV holds whose predicted latency meets the targets."""
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
