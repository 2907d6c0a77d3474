"""Simulator speed: simulated seconds per wall second, one hour of trace at ~5 req/s per policy.

.venv/bin/python bench/sim_speed.py [--rate 5] [--duration 3600]
"""

from __future__ import annotations

import argparse
import time

from tidal.scaling.policies import POLICY_NAMES
from tidal.sim import SimConfig, load_step_model, synthetic
from tidal.sim.runner import compare


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--kind", default="gamma")
    args = ap.parse_args()
    loaded = load_step_model("llama-3.1-8b", "h100")
    cfg = SimConfig(model=loaded.model, limits=loaded.limits)
    tr = synthetic(args.kind, args.rate, args.duration, seed=0)
    t0 = time.perf_counter()
    c = compare(tr, cfg, POLICY_NAMES)
    total = time.perf_counter() - t0
    setup = total - sum(c.wall_seconds.values())
    print(f"# {tr.name}: {len(tr)} requests, {tr.duration:.0f}s simulated; setup {setup:.1f}s")
    print(f"{'policy':16s} {'wall s':>7s} {'sim s / wall s':>15s} {'< 60 s':>7s}")
    for r in c.results:
        w = c.wall_seconds[r.policy]
        print(f"{r.policy:16s} {w:7.2f} {tr.duration / w:15.0f} {'yes' if w < 60 else 'NO':>7s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
