"""The trace suite (issue 14, Build 3): every family is >= 2 h, needs 1-10 replicas of Llama-3.1-8B on one
H100, has the shape its name promises, is reproducible, and the test seeds are apart from the tuning
seeds. The seed values themselves are pinned here: changing them after tuning must fail a test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tidal.sim import suite
from tidal.sim.suite import FAMILIES, TEST_SEEDS, TUNE_SEEDS, azure_replay, family_traces, load_suite
from tidal.sim.traces import Trace

pytestmark = pytest.mark.unit

REPLICA_RPS = 20.0  # one H100 replica's measured capacity with the suite's lengths (about 20 req/s)
AZURE = suite.AZURE_TRACE


def test_seeds_are_fixed_and_disjoint() -> None:
    assert TUNE_SEEDS == (11, 12) and TEST_SEEDS == (101, 102)  # fixed before tuning: do not edit
    assert not set(TUNE_SEEDS) & set(TEST_SEEDS)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "azure"])
def test_every_family_is_two_hours_and_one_to_ten_replicas(family: str) -> None:
    for seed in (*TUNE_SEEDS, *TEST_SEEDS):
        (st,) = family_traces(family, seed)
        rates = st.trace.rate_series(60.0)
        assert st.trace.duration >= 7190, (family, seed)
        assert rates.mean() / REPLICA_RPS >= 0.5 and rates.max() / REPLICA_RPS <= 10, (family, rates.max())
        assert np.all(np.diff(st.trace.arrivals) >= 0)
        assert float(np.mean(st.trace.prompt)) == pytest.approx(suite.PROMPT_MEAN, rel=0.05)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "azure"])
def test_same_seed_same_trace_and_seeds_differ(family: str) -> None:
    a, b, c = (family_traces(family, s, 1800.0)[0].trace for s in (11, 11, 12))
    assert np.array_equal(a.arrivals, b.arrivals) and np.array_equal(a.prompt, b.prompt)
    assert not np.array_equal(a.arrivals[:100], c.arrivals[:100])


@pytest.mark.parametrize(
    ("family", "low", "high"),
    [
        ("step2x", 12.0, 24.0),
        ("step4x", 12.0, 48.0),
    ],
)
def test_steps_go_from_one_replicas_load_to_the_factor(family: str, low: float, high: float) -> None:
    tr = family_traces(family, 101)[0].trace
    r = tr.rate_series(300.0)
    assert r[:4].mean() == pytest.approx(low, rel=0.1)  # the first 20 min: one replica's load
    assert r[8:13].mean() == pytest.approx(high, rel=0.1)  # 40-65 min: inside the step
    assert r[-3:].mean() == pytest.approx(low, rel=0.1)  # and back


@pytest.mark.parametrize(
    ("family", "min_ratio", "max_ratio"),
    [
        ("bursts", 2.5, 5.0),  # 3-4x bursts over a 12-20 base
        ("spikes", 1.6, 3.5),  # 2-3x, 10-40 s
        ("diurnal", 3.0, 8.0),  # 4 -> 40 -> 4 (median about 22) plus 2.5x flash crowds
    ],
)
def test_peaks_over_the_typical_rate(family: str, min_ratio: float, max_ratio: float) -> None:
    tr = family_traces(family, 102)[0].trace
    r = tr.rate_series(10.0)
    assert min_ratio <= np.percentile(r, 99.9) / np.median(r) <= max_ratio


def test_diurnal_has_flash_crowds_every_25_minutes() -> None:
    tr = family_traces("diurnal", 101)[0].trace
    r = tr.rate_series(15.0)
    smooth = np.convolve(r, np.ones(20) / 20, mode="same")
    inside = np.arange(r.size)
    crowd = np.flatnonzero((r > 1.8 * smooth) & (inside >= 10) & (inside < r.size - 10))  # not the edges
    starts = crowd[np.insert(np.diff(crowd) > 4, 0, True)] * 15.0
    assert len(starts) >= 4
    assert np.allclose(np.diff(starts), 1500.0, atol=45.0)


def test_gamma_steps_through_cv_one_to_four() -> None:
    tr = family_traces("gamma", 101)[0].trace
    q = tr.duration / 4
    cvs = []
    for k in range(4):
        seg = tr.arrivals[(tr.arrivals >= k * q) & (tr.arrivals < (k + 1) * q)]
        gaps = np.diff(seg)
        cvs.append(float(gaps.std() / gaps.mean()))
    assert sorted(round(c) for c in cvs) == [1, 2, 3, 4], cvs
    assert "cv" in tr.name


def test_azure_replay_keeps_order_rate_and_lengths() -> None:
    base = Trace("b", np.array([0.0, 1.0, 2.0, 9.0]), np.array([10, 20, 30, 40]), np.array([1, 2, 3, 4]))
    out = azure_replay(base, 2.0, seed=3, duration=40.0)
    period = 9.0 / 2 + 0.5
    assert out.duration < 40.0 and len(out) == 4 * 8  # 8 periods of 5 s
    assert np.all(np.diff(out.arrivals) >= 0)
    assert sorted(out.prompt[:4].tolist()) == [10, 20, 30, 40]
    assert np.array_equal(out.prompt[:4], out.prompt[4:8])  # each copy is the same rotation
    assert np.allclose(out.arrivals[4:8] - out.arrivals[:4], period)


def test_the_shared_azure_trace_at_several_speeds() -> None:
    assert AZURE.is_file(), f"the shared trace must be at {AZURE}"
    traces = family_traces("azure", 101)
    assert [t.family for t in traces] == [f"azure-x{s:g}" for s in suite.AZURE_SPEEDS]
    means = [t.trace.rate_series(60.0).mean() for t in traces]
    for st, speed, mean in zip(traces, suite.AZURE_SPEEDS, means, strict=True):
        assert st.trace.duration >= 7190
        assert mean == pytest.approx(5.47 * speed, rel=0.05)  # the file's 5.47 req/s, sped up
        assert st.trace.rate_series(60.0).max() / REPLICA_RPS <= 10


def test_quick_and_seed_sets() -> None:
    quick = load_suite(["bursts", "step4x"], "tune", quick=True)
    assert [(s.family, s.seed) for s in quick] == [("bursts", 11), ("step4x", 11)]
    assert all(s.trace.duration <= 1800 for s in quick)
    full = load_suite(["spikes"], "test")
    assert [s.seed for s in full] == list(TEST_SEEDS)


@pytest.mark.parametrize(
    ("families", "seeds", "error"), [(["nope"], "test", "unknown family"), (["bursts"], "all", "tune")]
)
def test_bad_suite_requests_fail(families: list[str], seeds: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        load_suite(families, seeds)


def test_a_missing_azure_trace_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Azure"):
        family_traces("azure", 101, 600.0, azure_path=tmp_path / "absent.csv")
