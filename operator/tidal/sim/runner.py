"""Run several policies on one trace with shared setup; the entry point of the CLI, bench and tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tidal.scaling.policies import POLICY_NAMES
from tidal.sim.fleet import PolicyResult, SimConfig, simulate
from tidal.sim.oracle import PolicySetup, make_policy, setup_policies
from tidal.sim.traces import Trace


@dataclass
class Comparison:
    """All policies' results on one trace, plus the shared setup."""

    trace: Trace
    setup: PolicySetup
    results: list[PolicyResult]
    wall_seconds: dict[str, float]

    def by_name(self) -> dict[str, PolicyResult]:
        return {r.policy: r for r in self.results}


def compare(
    trace: Trace,
    cfg: SimConfig,
    policies: Sequence[str] = POLICY_NAMES,
    min_replicas: int = 1,
    max_replicas: int = 64,
    progress: Callable[[str, float], None] | None = None,
) -> Comparison:
    """Simulate every named policy on ``trace`` from the same initial fleet (the oracle's first count)."""
    setup = setup_policies(trace, cfg, min_replicas, max_replicas)
    results: list[PolicyResult] = []
    walls: dict[str, float] = {}
    for name in policies:
        policy = make_policy(name, setup, cfg, min_replicas, max_replicas)
        start = setup.static_peak if name == "static-peak" else setup.initial
        run_cfg = replace(cfg, initial_replicas=start)
        t0 = time.perf_counter()
        cb = (lambda f, n=name: progress(n, f)) if progress is not None else None
        results.append(simulate(trace, policy, run_cfg, cb))
        walls[name] = time.perf_counter() - t0
    return Comparison(trace, setup, results, walls)
