"""Autoscaling benchmark: every policy on several synthetic traces and seeds, one run, ratios printed.

For each (trace, seed): GPU-hours relative to static peak and to the oracle, SLO attainment, flaps per
hour; for the ``step`` trace also the reaction time after the 4x step (seconds from the step until the
policy's replicas first reach the oracle's post-step count). Usage:

    .venv/bin/python bench/autoscaling.py [--traces gamma,diurnal,step,spike] [--seeds 1,2] [--rate 150]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from tidal.scaling.policies import POLICY_NAMES
from tidal.sim import SimConfig, load_step_model, synthetic
from tidal.sim.fleet import PolicyResult
from tidal.sim.runner import compare


def reaction_time(r: PolicyResult, step_at: float, target: int) -> float | None:
    for s in r.timeline:
        if s.time >= step_at and s.ready >= target:
            return s.time - step_at
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default="gamma,diurnal,step,spike")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--duration", type=float, default=1800.0)
    ap.add_argument("--policies", default=",".join(POLICY_NAMES))
    args = ap.parse_args()
    loaded = load_step_model("llama-3.1-8b", "h100")
    cfg = SimConfig(model=loaded.model, limits=loaded.limits)
    print(
        f"# step model: {loaded.source}; cold start {cfg.cold_start_s:.0f}s; SLO p95 TTFT "
        f"{cfg.slo_ttft_s}s / TPOT {cfg.slo_tpot_s}s"
    )
    agg: dict[tuple[str, str], list[tuple[float, float, float, float, float | None]]] = {}
    for kind in args.traces.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            rate = args.rate / 4 if kind == "step" else args.rate
            tr = synthetic(kind, rate, args.duration, seed=seed, cv=3.0)
            c = compare(tr, cfg, args.policies.split(","))
            by = c.by_name()
            oracle, static = by.get("oracle"), by.get("static-peak")
            step_at = args.duration / 3
            post = max((n for t, n in c.setup.schedule if t <= step_at + 300), default=0)
            print(
                f"\n## {tr.name}: {len(tr)} requests; capacity/replica modelled "
                f"{c.setup.modelled.requests_per_s:.1f} measured {c.setup.measured_rps:.1f} req/s"
            )
            print(
                f"{'policy':16s} {'GPU-h':>7s} {'xstatic':>7s} {'xoracle':>7s} {'SLO att':>8s} "
                f"{'flaps/h':>7s} {'react s':>7s} {'wall s':>6s}"
            )
            for r in c.results:
                xs = r.gpu_hours / static.gpu_hours if static else float("nan")
                xo = r.gpu_hours / oracle.gpu_hours if oracle else float("nan")
                react = reaction_time(r, step_at, post) if kind == "step" else None
                agg.setdefault((kind, r.policy), []).append((r.gpu_hours, xs, xo, r.slo_attainment, react))
                rt = f"{react:7.0f}" if react is not None else f"{'-':>7s}"
                print(
                    f"{r.policy:16s} {r.gpu_hours:7.3f} {xs:7.2f} {xo:7.2f} {r.slo_attainment:8.2%} "
                    f"{r.flaps_per_hour:7.1f} {rt} {c.wall_seconds[r.policy]:6.1f}"
                )
            sys.stdout.flush()
    print("\n## mean over seeds")
    print(f"{'trace':8s} {'policy':16s} {'xstatic':>7s} {'xoracle':>7s} {'SLO att':>8s}")
    for (kind, pol), rows in agg.items():
        print(
            f"{kind:8s} {pol:16s} {statistics.mean(r[1] for r in rows):7.2f} "
            f"{statistics.mean(r[2] for r in rows):7.2f} {statistics.mean(r[3] for r in rows):8.2%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
