"""The autoscaling must-show on a bursty synthetic trace: tidal meets >= 99 % SLO attainment with
GPU-hours <= 1.15x the perfect-foresight clairvoyant, and no baseline beats it on both attainment and
GPU-hours. Every policy is the real policy object of tidal.scaling.policies running in virtual time."""

from __future__ import annotations

import pytest

from tidal.scaling.policies import POLICY_NAMES
from tidal.sim import EngineLimits, SimConfig, load_step_model, synthetic
from tidal.sim.runner import compare


@pytest.mark.slow
def test_tidal_on_bursty_trace_against_clairvoyant_and_baselines() -> None:
    trace = synthetic("gamma", 150, 1200, seed=1, cv=3.0)  # gamma inter-arrivals, CV 3
    # The recommender's performance model and engine limits, as `tidal simulate` uses them.
    loaded = load_step_model("llama-3.1-8b", "h100")
    assert "recommender" in loaded.source and loaded.limits != EngineLimits()
    cfg = SimConfig(model=loaded.model, limits=loaded.limits)
    c = compare(trace, cfg, POLICY_NAMES)
    by = c.by_name()
    tidal, clairvoyant = by["tidal"], by["clairvoyant"]
    table = "\n".join(str(r.summary()) for r in c.results)
    # The clairvoyant is a reference: it meets the SLO itself (with its cold starts).
    assert clairvoyant.slo_attainment >= 0.99, table
    assert tidal.slo_attainment >= 0.99, table
    assert tidal.gpu_hours <= 1.15 * clairvoyant.gpu_hours, table
    for name, r in by.items():
        if name in ("tidal", "clairvoyant"):
            continue
        beats = r.slo_attainment > tidal.slo_attainment and r.gpu_hours < tidal.gpu_hours
        assert not beats, (name, table)
