"""Tidal on a bursty synthetic trace: it meets >= 99 % SLO attainment, the clairvoyant reference meets it
too, and no baseline beats tidal on both attainment and GPU-hours. Every policy is the real policy object
of tidal.scaling.policies and tidal.sim.baselines running in virtual time.

This test no longer bounds tidal's GPU-hours by 1.15x the clairvoyant: that threshold was tuned on this
very trace (issue 14), and on a 20-minute trace started without history the documented conservative
headroom prior (3.0 while the demand history is short since 2026-12-07, 2.0 before; docs/autoscaling.md)
legitimately holds two to three times the fleet. The cost claim is issue 14's must-show on the suite's
TEST seeds (GPU-hours <= the right-sized static, <= 0.7x on diurnal, not dominated), with thresholds
fixed before tuning in ``bench/autoscaling.py`` (``must_show``, ``--check``;
tests/unit/test_bench_autoscaling.py)."""

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
    for name, r in by.items():
        if name in ("tidal", "clairvoyant"):
            continue
        beats = r.slo_attainment > tidal.slo_attainment and r.gpu_hours < tidal.gpu_hours
        assert not beats, (name, table)
