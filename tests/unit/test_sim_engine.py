"""Simulator physics: determinism, the physical floor, preemption when KV runs out, cold start,
trace parsing."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from tidal.sim import (
    EngineLimits,
    LinearStepModel,
    SimConfig,
    Trace,
    load_azure_csv,
    load_step_model,
    simulate,
    synthetic,
)
from tidal.sim.baselines import KpaPolicy, SchedulePolicy, StaticPolicy
from tidal.sim.fleet import histogram_quantile
from tidal.sim.runner import compare

MODEL = load_step_model("llama-3.1-8b", "h100").model
CFG = SimConfig(model=MODEL, limits=EngineLimits())


def test_same_seed_same_result() -> None:
    tr = synthetic("gamma", 20, 240, seed=7)
    a = compare(tr, CFG, ["tidal", "hpa"])
    b = compare(synthetic("gamma", 20, 240, seed=7), CFG, ["tidal", "hpa"])
    assert [r.summary() for r in a.results] == [r.summary() for r in b.results]
    assert [r.events for r in a.results] == [r.events for r in b.results]
    c = compare(synthetic("gamma", 20, 240, seed=8), CFG, ["tidal"])
    assert c.results[0].summary() != a.results[0].summary()


@dataclass(frozen=True)
class TooFast:
    """A model that claims impossible speed: the engine must clamp it to the floor."""

    inner: LinearStepModel = LinearStepModel()  # noqa: RUF009

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        return 1e-5

    def physical_floor_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        return self.inner.physical_floor_seconds(prefill_tokens, decode_seqs, kv_tokens)


@pytest.mark.parametrize("model", [MODEL, TooFast()], ids=["model", "too-fast-model"])
def test_no_step_faster_than_the_physical_floor(model: object) -> None:
    cfg = replace(CFG, model=model, record_steps=True, initial_replicas=2)  # type: ignore[arg-type]
    res = simulate(synthetic("gamma", 30, 120, seed=1), StaticPolicy(2), cfg)
    assert res.steps and len(res.steps) > 1000
    floor = model.physical_floor_seconds  # type: ignore[attr-defined]
    macro = 0
    for prefill, dec, kv0, k, dt in res.steps:
        # k identical-shape decode steps: each reads more KV than the one before.
        bound = sum(floor(prefill, dec, kv0 + i * dec) for i in range(k))
        assert dt >= bound * (1 - 1e-9), (prefill, dec, kv0, k, dt, bound)
        macro += k > 1
    assert macro > 0  # the macro-step path was exercised too


def test_preemption_when_kv_runs_out() -> None:
    tr = synthetic("poisson", 5, 60, seed=2, output_mean=600)
    small = replace(CFG, limits=replace(CFG.limits, kv_cache_tokens=20_000))
    res = simulate(tr, StaticPolicy(1), small)
    assert res.preemptions > 0
    assert res.requests == len(tr)
    big = simulate(tr, StaticPolicy(1), CFG)
    assert big.preemptions == 0
    assert big.p95_ttft_seconds < res.p95_ttft_seconds


def test_cold_start_delays_capacity() -> None:
    tr = synthetic("poisson", 60, 300, seed=3)
    cfg = replace(CFG, cold_start_s=120.0, initial_replicas=1)
    res = simulate(tr, SchedulePolicy([(0.0, 4)]), cfg)
    early = [s for s in res.timeline if 0 < s.time < 119]
    late = [s for s in res.timeline if s.time > 121]
    assert early and all(s.ready == 1 and s.total == 4 for s in early)
    assert all(s.ready == 4 for s in late)
    warm = simulate(tr, StaticPolicy(4), replace(cfg, initial_replicas=4))
    assert res.slo_attainment < warm.slo_attainment
    assert res.gpu_hours >= warm.gpu_hours  # starting replicas hold their GPUs while they start
    # Four replicas from t=0 until the last request finishes: GPU time is charged creation -> release.
    assert warm.gpu_hours == pytest.approx(4 * warm.duration_s / 3600)
    assert res.gpu_hours == pytest.approx(4 * res.duration_s / 3600)
    assert res.duration_s > warm.duration_s  # the cold-start backlog finishes later


def test_metric_driven_policies_start_after_one_metrics_window() -> None:
    # The simulated fleet starts idle; a decision on the t=0 scrape (no traffic seen yet) would scale
    # every metric-driven policy in to its minimum. Schedules act from t=0.
    tr = synthetic("poisson", 60, 120, seed=5)
    cfg = replace(CFG, initial_replicas=4)
    kpa = simulate(tr, KpaPolicy(50.0), cfg)
    assert kpa.events and min(t for t, *_ in kpa.events) >= cfg.window_s
    oracle = simulate(tr, SchedulePolicy([(0.0, 2)]), cfg)
    assert oracle.events[0][:3] == (0.0, 4, 2)


def test_gpu_hours_do_not_depend_on_the_sync_period() -> None:
    # Regression: the fleet used to be released at the last popped event (a policy's next sync after
    # the trace), so a static policy syncing every 60 s was charged up to a minute more than one
    # syncing every second, for identical service.
    tr = synthetic("poisson", 20, 200, seed=4)
    cfg = replace(CFG, initial_replicas=2)
    slow = simulate(tr, StaticPolicy(2, sync_period_s=60.0), cfg)
    fast = simulate(tr, StaticPolicy(2, sync_period_s=1.0), cfg)
    assert slow.slo_attainment == fast.slo_attainment
    assert slow.gpu_hours == pytest.approx(fast.gpu_hours)
    assert slow.duration_s < tr.duration + 60  # released when the last request finished


def test_azure_csv_and_time_scale(tmp_path: Path) -> None:
    p = tmp_path / "trace.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.1234560,879,34\n"
    )
    tr = load_azure_csv(p)
    assert len(tr) == 3 and tr.arrivals[0] == 0.0
    assert tr.arrivals[1] == pytest.approx(4.314579, abs=1e-5)
    assert list(tr.prompt) == [374, 396, 879] and list(tr.output) == [44, 109, 34]
    fast = load_azure_csv(p, time_scale=2.0)
    assert fast.arrivals[1] == pytest.approx(tr.arrivals[1] / 2)


@pytest.mark.parametrize("kind", ["poisson", "gamma", "step", "spike", "diurnal"])
def test_synthetic_rates(kind: str) -> None:
    tr = synthetic(kind, 10, 1200, seed=0)
    assert np.all(np.diff(tr.arrivals) >= 0)
    mean = len(tr) / 1200
    expected = {"poisson": 10, "gamma": 10, "step": 30, "spike": 10.5, "diurnal": 10}[kind]
    assert mean == pytest.approx(expected, rel=0.2)
    if kind == "step":
        r = tr.rate_series(400)
        assert r[2] / r[0] == pytest.approx(4, rel=0.25)


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    buckets = (0.1, 0.5, 1.0, 2.5)
    assert histogram_quantile(0.95, [], buckets) is None
    vals = [0.05] * 50 + [0.7] * 50  # rank 95 falls in (0.5, 1.0] with 50 observations
    assert histogram_quantile(0.95, vals, buckets) == pytest.approx(0.5 + 0.5 * 45 / 50)
    assert histogram_quantile(0.95, [9.0] * 10, buckets) == 2.5


@pytest.mark.parametrize("overhead", [0.0, 0.004])
def test_an_arrival_during_pure_decode_waits_at_most_one_step(overhead: float) -> None:
    """A request arriving while another one decodes is scheduled at the next step boundary, as vLLM does,
    not at the end of a simulator macro step (which may span 50 ms of decode steps)."""
    cfg = replace(CFG, record_requests=True, request_overhead_s=overhead, drain_tail_s=60.0)
    arrivals = np.array([0.0, 0.2337])
    tr = Trace("two", arrivals, np.array([64, 64], dtype=np.int64), np.array([4000, 4], dtype=np.int64))
    res = simulate(tr, StaticPolicy(1), cfg)
    assert res.request_log is not None
    by_arrival = {round(a, 4): ttft for a, ttft, _tpot, _fin, _out in res.request_log}
    lone = by_arrival[0.0]
    decode_step = MODEL.step_seconds(0, 1, 4000 + 64)
    mixed_step = MODEL.step_seconds(64, 1, 4000 + 128)
    # At most: the overhead, the rest of the decode step in progress, then one mixed step.
    assert by_arrival[0.2337] <= overhead + decode_step + mixed_step + 1e-9
    assert by_arrival[0.2337] >= overhead + mixed_step - 1e-9
    assert lone < by_arrival[0.2337] + decode_step
