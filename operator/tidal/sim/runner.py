"""Run several policies on one trace with shared setup; the entry point of the CLI, bench and tests.

Besides the named policies, every comparison carries the two references issue 14 asks for beside every
result: the right-sized static (the cheapest ``static:N`` reaching the SLO-attainment target on this
trace, found by bisection over N, every ``static:N`` run kept and reused) and, when asked for, the
clairvoyant (:mod:`tidal.sim.clairvoyant`, verified to reach the target).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from tidal.scaling.policies import POLICY_NAMES, static_count
from tidal.sim.baselines import StaticPolicy
from tidal.sim.clairvoyant import ClairvoyantResult, clairvoyant
from tidal.sim.fleet import PolicyResult, SimConfig, simulate
from tidal.sim.oracle import PolicySetup, make_policy, setup_policies
from tidal.sim.traces import Trace

DEFAULT_TARGET = 0.99


@dataclass
class Comparison:
    """All policies' results on one trace, plus the shared setup and the references."""

    trace: Trace
    setup: PolicySetup
    results: list[PolicyResult]
    wall_seconds: dict[str, float]
    target: float = DEFAULT_TARGET
    statics: dict[int, PolicyResult] = field(default_factory=dict)
    """Every ``static:N`` run made on this trace, by N."""
    right_sized: int | None = None
    """The cheapest N whose static fleet reaches ``target``; None if not searched or none up to the max."""
    clairvoyant: ClairvoyantResult | None = None

    def by_name(self) -> dict[str, PolicyResult]:
        return {r.policy: r for r in self.results}

    @property
    def right_sized_result(self) -> PolicyResult | None:
        return self.statics.get(self.right_sized) if self.right_sized is not None else None


class _Statics:
    """``static:N`` runs on one trace, each simulated once."""

    def __init__(self, trace: Trace, cfg: SimConfig, out: dict[int, PolicyResult]):
        self.trace, self.cfg, self.runs = trace, cfg, out

    def run(self, n: int, name: str | None = None) -> PolicyResult:
        if n not in self.runs:
            cfg = replace(self.cfg, initial_replicas=n)
            self.runs[n] = simulate(self.trace, StaticPolicy(n, name=f"static:{n}"), cfg)
        res = self.runs[n]
        return res if name is None or name == res.policy else replace(res, policy=name)


def right_size(
    attainment: Callable[[int], float], target: float, start: int, max_replicas: int
) -> int | None:
    """Smallest N in [1, max_replicas] whose static fleet's ``attainment(N)`` >= ``target``, by doubling
    from ``start`` until one reaches it, then bisection (attainment is taken to rise with N: more
    identical replicas never serve worse); None if even ``max_replicas`` misses."""

    def ok(n: int) -> bool:
        return attainment(n) >= target

    hi = max(1, min(start, max_replicas))
    lo = 0  # the largest N known to miss the target (0: none tried)
    while not ok(hi):
        if hi >= max_replicas:
            return None
        lo, hi = hi, min(max_replicas, hi * 2)
    # The right size is usually at or just below static-peak: probe hi - 1 before bisecting.
    if hi - 1 <= lo or not ok(hi - 1):
        return hi
    hi -= 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def compare(
    trace: Trace,
    cfg: SimConfig,
    policies: Sequence[str] = POLICY_NAMES,
    min_replicas: int = 1,
    max_replicas: int = 64,
    progress: Callable[[str, float], None] | None = None,
    target: float = DEFAULT_TARGET,
    right_sized: bool = True,
    tidal_settings: Mapping[str, float] | None = None,
) -> Comparison:
    """Simulate every named policy on ``trace`` (metric-driven ones from the same initial fleet), then
    the right-sized static search unless ``right_sized`` is False."""
    if not 0 < target <= 1:
        raise ValueError(f"the SLO-attainment target must be in (0, 1], got {target}")
    setup = setup_policies(trace, cfg, min_replicas, max_replicas)
    results: list[PolicyResult] = []
    walls: dict[str, float] = {}
    statics: dict[int, PolicyResult] = {}
    runs = _Statics(trace, cfg, statics)
    cv: ClairvoyantResult | None = None
    for name in policies:
        t0 = time.perf_counter()
        cb = (lambda f, n=name: progress(n, f)) if progress is not None else None
        n_static = setup.static_peak if name == "static-peak" else static_count(name)
        if n_static is not None:
            results.append(runs.run(n_static, name))
        elif name == "clairvoyant":
            cv = clairvoyant(trace, cfg, setup.measured_rps, target, min_replicas, max_replicas, progress=cb)
            results.append(cv.result)
        else:
            policy = make_policy(name, setup, cfg, min_replicas, max_replicas, tidal_settings)
            results.append(simulate(trace, policy, replace(cfg, initial_replicas=setup.initial), cb))
        walls[name] = time.perf_counter() - t0
    rs = None
    if right_sized:
        t0 = time.perf_counter()
        rs = right_size(lambda n: runs.run(n).slo_attainment, target, setup.static_peak, max_replicas)
        walls["right-sized static"] = time.perf_counter() - t0
    return Comparison(trace, setup, results, walls, target, statics, rs, cv)
