"""Sick-replica detection and engine advice: a slow replica at normal load is flagged and does not by
itself cause a scale-out; a slow replica that is simply busier is not flagged."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tidal.scaling import (
    AutoscalerState,
    CapacityView,
    FleetObservation,
    Reason,
    ReplicaStats,
    ScalingConfig,
    compute_desired_replicas,
)
from tidal.scaling.detection import detect_sick_replicas, engine_advice

NOW = 1000.0
CFG = ScalingConfig(min_replicas=1, max_replicas=10, max_num_seqs=256)


def rep(name: str, ttft: float, tpot: float = 0.03, running: float = 20, waiting: float = 0) -> ReplicaStats:
    return ReplicaStats(replica=name, ttft_p95=ttft, tpot_p95=tpot, running=running, waiting=waiting)


@dataclass
class Case:
    name: str
    replicas: tuple[ReplicaStats, ...]
    flagged: tuple[str, ...]


CASES = [
    Case("healthy fleet", (rep("a", 0.5), rep("b", 0.6), rep("c", 0.55)), ()),
    Case("slow ttft at same load", (rep("a", 0.5), rep("b", 6.0), rep("c", 0.55)), ("b",)),
    Case("slow tpot at same load", (rep("a", 0.5), rep("b", 0.5, tpot=0.4), rep("c", 0.5)), ("b",)),
    Case("slow because busier", (rep("a", 0.5), rep("b", 6.0, running=60, waiting=20), rep("c", 0.55)), ()),
    Case("fast in absolute terms", (rep("a", 0.01), rep("b", 0.2), rep("c", 0.01)), ()),
    Case("two replicas", (rep("a", 0.4), rep("b", 5.0)), ("b",)),
    Case("single replica", (rep("a", 9.0),), ()),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_detection_table(case: Case) -> None:
    obs = FleetObservation(time=NOW, replicas=case.replicas)
    assert tuple(s.replica for s in detect_sick_replicas(CFG, obs)) == case.flagged


def test_sick_replica_does_not_cause_scale_out() -> None:
    """Fleet p95 is dominated by one bad replica (6 s > 2 s target); its peers are fine."""
    reps = (rep("a", 0.5), rep("b", 6.0), rep("c", 0.6), rep("d", 0.55))
    obs = FleetObservation(time=NOW - 5, ttft_p95=5.8, tpot_p95=0.03, waiting=0, running=80, replicas=reps)
    d = compute_desired_replicas(CFG, obs, CapacityView(current=4, ready=4), AutoscalerState(), NOW)
    assert d.desired <= 4, d.message
    assert [s.replica for s in d.sick_replicas] == ["b"]
    assert "degraded: b" in d.message
    assert d.ratios["ttft"] == pytest.approx(0.6 / 2.0)
    # Without detection data (no per-replica stats) the same fleet value does scale out.
    plain = FleetObservation(time=NOW - 5, ttft_p95=5.8, tpot_p95=0.03, waiting=0, running=80)
    d2 = compute_desired_replicas(CFG, plain, CapacityView(current=4, ready=4), AutoscalerState(), NOW)
    assert d2.desired > 4 and d2.reason is Reason.SCALED_UP


def test_engine_advice() -> None:
    kv_full = FleetObservation(time=NOW, kv_cache_usage=0.97, running=30)
    advice = engine_advice(CFG, kv_full, ready=2)
    assert [a.setting for a in advice] == ["gpuMemoryUtilization"]
    assert "max_model_len" in advice[0].message
    preempting = FleetObservation(time=NOW, kv_cache_usage=0.97, running=400, preemption_rate=1.0)
    advice = engine_advice(CFG, preempting, ready=2)
    assert [a.setting for a in advice] == ["maxNumSeqs"]
    assert advice[0].direction == "decrease" and advice[0].suggested == 160
    calm = FleetObservation(time=NOW, kv_cache_usage=0.4, running=100, preemption_rate=0.0)
    assert engine_advice(CFG, calm, ready=2) == ()


def aged(name: str, ttft: float, age: float | None = None, rate: float | None = None) -> ReplicaStats:
    return ReplicaStats(
        replica=name, ttft_p95=ttft, tpot_p95=0.03, running=20, waiting=0, age_s=age, request_rate=rate
    )


WARMUP_CASES = [
    # Right after a panic scale-up: the new replicas are slow on cold caches and few requests.
    Case("fresh replicas are not judged", (aged("a", 0.5, 600), aged("b", 0.5, 600), aged("c", 6.0, 20)), ()),
    Case("warm enough is judged", (aged("a", 0.5, 600), aged("b", 0.5, 600), aged("c", 6.0, 60)), ("c",)),
    Case(
        "too few requests is not judged",
        (aged("a", 0.5, rate=2), aged("b", 0.5, rate=2), aged("c", 6.0, rate=0.01)),
        (),
    ),
    Case(
        "busy enough is judged",
        (aged("a", 0.5, rate=2), aged("b", 0.5, rate=2), aged("c", 6.0, rate=0.05)),
        ("c",),
    ),
    # Fresh replicas are no peers either: a cold one cannot make a warm one look healthy or sick.
    Case(
        "fresh replicas are no peers",
        (aged("a", 0.5, 600), aged("b", 6.0, 600), aged("c", 9.0, 5), aged("d", 9.0, 5)),
        ("b",),
    ),
    Case("one warm replica has no peers", (aged("a", 6.0, 600), aged("b", 0.5, 5), aged("c", 0.5, 5)), ()),
    Case("unknown age and rate are judged", (aged("a", 0.5), aged("b", 0.5), aged("c", 6.0)), ("c",)),
]


@pytest.mark.parametrize("case", WARMUP_CASES, ids=[c.name for c in WARMUP_CASES])
def test_detection_ignores_replicas_still_warming_up(case: Case) -> None:
    obs = FleetObservation(time=NOW, replicas=case.replicas)
    assert tuple(s.replica for s in detect_sick_replicas(CFG, obs)) == case.flagged


def test_panic_scale_up_does_not_flag_the_new_replicas() -> None:
    """Two saturated replicas panic the fleet to four; the two new ones are slow on their first requests."""
    reps = (
        aged("a", 3.0, 900, 4.0),
        aged("b", 3.2, 900, 4.0),
        aged("c", 12.0, 10, 0.2),
        aged("d", 11.0, 10, 0.2),
    )
    obs = FleetObservation(time=NOW - 5, ttft_p95=11.0, tpot_p95=0.03, waiting=0, running=80, replicas=reps)
    d = compute_desired_replicas(CFG, obs, CapacityView(current=4, ready=4), AutoscalerState(), NOW)
    assert d.sick_replicas == ()
    assert "degraded" not in d.message
