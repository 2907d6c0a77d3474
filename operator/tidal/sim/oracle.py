"""Per-replica capacities and the policy set: what each policy is given, and what only references know.

* :func:`modelled_capacity` (from :mod:`tidal.sim.capacity`, re-exported) — what one replica sustains
  within the TPOT target from the NOMINAL step-time model (``SimConfig.model``) alone. It is all the
  policies are given: Tidal's ``load`` signal and the baselines' concurrency targets. With a capacity
  error the simulated engine differs from it (``SimConfig.engine``), as a real engine differs from the
  recommender's model.
* :func:`measured_capacity` — the highest Poisson rate at which one simulated replica (the TRUE engine,
  capacity error included) still meets the SLO for 99 % of requests with the trace's own request mix
  (bisection on short simulations). Only references use it: the clairvoyant
  (:mod:`tidal.sim.clairvoyant`) and the ``static-peak`` count.
* :func:`make_policy` — a fresh policy object by name, ``static:N`` included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tidal.scaling.policies import ScalingPolicy, TidalPolicy, static_count
from tidal.scaling.types import ScalingConfig
from tidal.sim.baselines import (
    ApaPolicy,
    EnovaPolicy,
    HpaPolicy,
    KedaPolicy,
    KpaPolicy,
    QueueThresholdPolicy,
    StaticPolicy,
)
from tidal.sim.capacity import Capacity, concurrency_at, modelled_capacity
from tidal.sim.clairvoyant import INTERVAL_S, initial_need
from tidal.sim.fleet import SimConfig, simulate
from tidal.sim.traces import Trace


def _resample(trace: Trace, rate: float, duration: float, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, int(rate * duration * 1.2) + 20)
    arr = np.cumsum(gaps)
    arr = arr[arr < duration]
    idx = rng.integers(0, len(trace), arr.size)
    return Trace("calibration", arr, trace.prompt[idx], trace.output[idx])


def measured_capacity(
    trace: Trace, cfg: SimConfig, guess: float, duration_s: float = 240.0, seed: int = 0, target: float = 0.99
) -> float:
    """Highest Poisson rate one replica serves with ≥ ``target`` SLO attainment, for the trace's mix."""
    one = replace(cfg, initial_replicas=1, record_steps=False, drain_tail_s=120.0)
    hold = StaticPolicy(1, name="calibration")

    def ok(rate: float) -> bool:
        return simulate(_resample(trace, rate, duration_s, seed), hold, one).slo_attainment >= target

    lo, hi = guess * 0.3, guess * 1.5
    while not ok(lo) and lo > 1e-3:
        lo /= 2
    while ok(hi):
        lo, hi = hi, hi * 1.5
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@dataclass
class PolicySetup:
    """Inputs shared by all policies on one trace."""

    modelled: Capacity
    measured_rps: float
    static_peak: int
    initial: int
    """The fleet every metric-driven policy starts with: what the trace's first cold start needs."""
    concurrency_target: float
    concurrency_full: float


def setup_policies(
    trace: Trace, cfg: SimConfig, min_replicas: int = 1, max_replicas: int = 64
) -> PolicySetup:
    """Capacities, the starting fleet and the static-peak count for a trace."""
    modelled = modelled_capacity(
        cfg.model, cfg.limits, float(np.mean(trace.prompt)), float(np.mean(trace.output)), cfg.slo_tpot_s
    )
    measured = measured_capacity(trace, cfg, modelled.requests_per_s)
    need = initial_need(trace, measured, min_replicas)
    initial = min(max_replicas, max(need[: int(cfg.cold_start_s // INTERVAL_S) + 1]))
    peak = float(np.max(trace.rate_series(INTERVAL_S)))
    static = min(max_replicas, max(min_replicas, math.ceil(peak / measured)))
    pm, om = float(np.mean(trace.prompt)), float(np.mean(trace.output))
    c70 = concurrency_at(cfg.model, cfg.limits, pm, om, 0.7 * modelled.requests_per_s)
    c90 = concurrency_at(cfg.model, cfg.limits, pm, om, 0.9 * modelled.requests_per_s)
    return PolicySetup(modelled, measured, static, initial, c70, c90)


def make_policy(
    name: str,
    setup: PolicySetup,
    cfg: SimConfig,
    min_replicas: int = 1,
    max_replicas: int = 64,
    tidal_settings: Mapping[str, float] | None = None,
) -> ScalingPolicy:
    """A fresh policy object by name (see tidal.sim.baselines for the rules). ``tidal_settings``:
    :class:`ScalingConfig` fields the deployment sets for Tidal's own policy (its SLO-attainment target,
    headroom prior and bound), so the policy simulated is the policy the operator would run."""
    cap = setup.modelled
    # The concurrency-driven baselines target the modelled requests in flight per replica at 70 % of
    # its modelled capacity (KPA's default target utilisation), so none is handicapped by a naive target.
    conc = max(1.0, setup.concurrency_target)
    if name == "tidal":
        overrides: dict[str, Any] = dict(tidal_settings or {})
        return TidalPolicy(
            replace(
                ScalingConfig(
                    ttft_p95_s=cfg.slo_ttft_s,
                    tpot_p95_s=cfg.slo_tpot_s,
                    prefill_tokens_per_replica_s=cap.prefill_tokens_per_s,
                    decode_tokens_per_replica_s=cap.decode_tokens_per_s,
                    decode_step_s=cap.decode_step_s,
                    decode_step_per_seq_s=cap.decode_step_per_seq_s,
                    min_replicas=min_replicas,
                    max_replicas=max_replicas,
                    cold_start_s=cfg.cold_start_s,
                    max_num_seqs=cfg.limits.max_num_seqs,
                ),
                **overrides,
            )
        )
    if name == "static-peak":
        return StaticPolicy(setup.static_peak)
    n = static_count(name)
    if n is not None:
        return StaticPolicy(n, name=name)
    if name == "hpa":
        return HpaPolicy(conc, min_replicas, max_replicas)
    if name == "kpa":
        return KpaPolicy(conc, min_replicas, max_replicas)
    if name == "apa":
        return ApaPolicy(conc, min_replicas, max_replicas)
    if name == "queue-threshold":
        return QueueThresholdPolicy(5.0, min_replicas, max_replicas)
    if name == "keda":
        return KedaPolicy(5.0, min_replicas, max_replicas)
    if name == "enova":
        return EnovaPolicy(setup.concurrency_full, cfg.slo_ttft_s, cfg.slo_tpot_s, min_replicas, max_replicas)
    raise ValueError(f"unknown policy {name!r} (the clairvoyant is built by tidal.sim.clairvoyant)")
