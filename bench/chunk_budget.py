"""The chunk budget on a long-prompt trace at a fixed replica count (issue 15 must-show 4; the tables in
docs/recommender.md, "The chunk budget in the simulator").

Llama-3.1-8B on one H100, 4 replicas (``static:4``), default SLO (TTFT <= 2 s, TPOT <= 100 ms), Poisson
arrivals with the ``long-prompt`` length mix, 600 s per run. The recommendation is sized for the mix's means
(7,250 prompt / 72 output tokens), as a deployment with those ``expectedInputTokens``/``expectedOutputTokens``
gets it. Table 1: the recommended budget against 8,192 given explicitly (``max_num_seqs`` is then the
recommender's choice for each, 24 both), per seed and load. Table 2: every budget with ``max_num_seqs``
held at 24, so only the chunk differs; misses split into TTFT and TPOT.

.venv/bin/python bench/chunk_budget.py [--seeds 0,1,2,3] [--duration 600]
"""

from __future__ import annotations

import argparse

import numpy as np

from tidal.sim import SimConfig, load_step_model, simulate, synthetic
from tidal.sim.baselines import StaticPolicy

REPLICAS = 4
RATES = (8, 12, 16)
"""Requests/s: the prompts' compute is about 40 %, 60 % and 80 % of the fleet's FLOP budget at this mix."""
CHUNKS = (512, 1024, 2048, 3072, 4096, 8192)
MIX = {"input_tokens": 7250, "output_tokens": 72, "slo_ttft_seconds": 2.0, "slo_tpot_seconds": 0.1}


def run(rate: int, seed: int, duration: float, **fixed: int | None) -> tuple[int, int, float, float, float]:
    """(budget, max_num_seqs, attainment, TTFT-miss share, TPOT-miss share) of one run."""
    loaded = load_step_model("llama-3.1-8b", "h100", **MIX, **fixed)
    cfg = SimConfig(model=loaded.model, limits=loaded.limits, initial_replicas=REPLICAS, record_requests=True)
    res = simulate(
        synthetic("poisson", rate, duration, seed=seed, lengths="long-prompt"), StaticPolicy(REPLICAS), cfg
    )
    log = res.request_log or []
    ttft = np.array([r[1] for r in log])
    tpot = np.array([r[2] for r in log])
    lim = loaded.limits
    return (
        lim.max_num_batched_tokens,
        lim.max_num_seqs,
        res.slo_attainment,
        float(np.mean(ttft > cfg.slo_ttft_s)),
        float(np.mean(tpot > cfg.slo_tpot_s)),
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--duration", type=float, default=600.0)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| req/s | seed | recommended budget (seqs) | attainment | 8,192 (seqs) | attainment | gain |")
    print("|---|---|---|---|---|---|---|")
    for rate in RATES:
        for seed in seeds:
            rb, rs, ra, _, _ = run(rate, seed, args.duration)
            db, ds, da, _, _ = run(rate, seed, args.duration, max_num_batched_tokens=8192)
            print(
                f"| {rate} | {seed} | {rb:,} ({rs}) | {ra:.2%} | {db:,} ({ds}) | {da:.2%} | "
                f"{(ra - da) * 100:+.2f} pt |"
            )
    print("\n| req/s | budget | attainment | TTFT > 2 s | TPOT > 100 ms |  (max_num_seqs 24, mean of seeds)")
    print("|---|---|---|---|---|")
    for rate in RATES:
        for chunk in CHUNKS:
            rows = [run(rate, s, args.duration, max_num_batched_tokens=chunk, max_num_seqs=24) for s in seeds]
            att, tt, tp = (float(np.mean([r[i] for r in rows])) for i in (2, 3, 4))
            print(f"| {rate} | {chunk:,} | {att:.2%} | {tt:.2%} | {tp:.2%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
