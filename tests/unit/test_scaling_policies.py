"""Every policy implements the ScalingPolicy protocol and behaves like its published rules."""

from __future__ import annotations

from typing import Any

import pytest

from tidal.scaling import CapacityView, FleetObservation, Reason, ScalingConfig
from tidal.scaling.policies import ScalingPolicy, TidalPolicy
from tidal.sim.baselines import (
    ApaPolicy,
    EnovaPolicy,
    HpaPolicy,
    KpaPolicy,
    QueueThresholdPolicy,
    SchedulePolicy,
    StaticPolicy,
)


def cap(n: int, **kw: int) -> CapacityView:
    return CapacityView(current=n, ready=kw.pop("ready", n), **kw)


def o(t: float, **kw: Any) -> FleetObservation:
    return FleetObservation(time=t, **kw)


ALL: list[ScalingPolicy] = [
    TidalPolicy(ScalingConfig()),
    HpaPolicy(50),
    KpaPolicy(50),
    ApaPolicy(50),
    QueueThresholdPolicy(),
    EnovaPolicy(50),
    StaticPolicy(3),
    SchedulePolicy([(0, 2), (100, 5)]),
]


@pytest.mark.parametrize("policy", ALL, ids=[p.name for p in ALL])
def test_protocol_and_reason(policy: ScalingPolicy) -> None:
    assert isinstance(policy, ScalingPolicy)
    d = policy.decide(o(0.0, ttft_p95=0.5, running=60, waiting=0), cap(2), 1.0)
    assert d.message and isinstance(d.reason, Reason)


@pytest.mark.parametrize(
    "policy", [HpaPolicy(50), KpaPolicy(50), ApaPolicy(50), QueueThresholdPolicy(), EnovaPolicy(50)]
)
def test_baselines_hold_on_stale_metrics(policy: ScalingPolicy) -> None:
    d = policy.decide(o(0.0, running=1000, waiting=500), cap(3), 500.0)
    assert d.desired == 3 and d.reason is Reason.METRICS_STALE and not d.metrics_available


def test_hpa_tolerance_scale_up_and_down_stabilisation() -> None:
    hpa = HpaPolicy(50, max_replicas=20)
    assert hpa.decide(o(0, running=210), cap(4), 0).desired == 4  # 52.5/50 within 10 %
    assert hpa.decide(o(15, running=400), cap(4), 15).desired == 8
    # Load drops: the 300 s window keeps 8.
    assert hpa.decide(o(30, running=100), cap(8), 30).desired == 8
    assert hpa.decide(o(330, running=100), cap(8), 330).desired == 2


def test_hpa_starts_its_window_at_the_current_count() -> None:
    # As the HPA controller does for a new autoscaler: no immediate scale-in on the first low reading.
    hpa = HpaPolicy(50, max_replicas=20)
    assert hpa.decide(o(0, running=0), cap(7), 0).desired == 7
    assert hpa.decide(o(15, running=0), cap(7), 15).desired == 7
    assert hpa.decide(o(301, running=0), cap(7), 301).desired == 1


def test_kpa_panics_on_a_burst_and_does_not_scale_down_while_panicking() -> None:
    kpa = KpaPolicy(10, max_replicas=50)
    for t in range(0, 60, 2):
        kpa.decide(o(t, running=20), cap(2), t)
    d = kpa.decide(o(60, running=200), cap(2), 60)
    assert d.desired == 7 and d.reason is Reason.SCALED_UP  # 6 s window: (20+20+20+200)/4/10, panic (>= 2x)
    for t in (62, 64, 66):
        d = kpa.decide(o(t, running=200), cap(d.desired), t)
    assert d.desired == 20  # the panic window now only sees the burst
    d = kpa.decide(o(68, running=20), cap(20), 68)
    assert d.desired == 20  # no scale-down in panic


def test_apa_tolerances_and_rate_limit() -> None:
    apa = ApaPolicy(10, max_replicas=50)
    assert apa.decide(o(0, running=21), cap(2), 0).desired == 2  # +5 % within up tolerance
    apa2 = ApaPolicy(10, max_replicas=50)
    assert apa2.decide(o(0, running=100), cap(2), 0).desired == 4  # capped at 2x
    apa3 = ApaPolicy(10, max_replicas=50)
    assert apa3.decide(o(0, running=5), cap(8), 0).desired == 4  # floor(8 / 2)


def test_queue_threshold() -> None:
    q = QueueThresholdPolicy(max_replicas=9)
    assert q.decide(o(0, waiting=30, running=10), cap(3), 0).desired == 4
    assert q.decide(o(15, waiting=0, running=10), cap(4), 15).desired == 4
    assert q.decide(o(320, waiting=0, running=10), cap(4), 320).desired == 3


def test_enova_scales_on_anomaly_and_releases_after_calm() -> None:
    e = EnovaPolicy(50, max_replicas=20)
    assert e.decide(o(0, ttft_p95=5.0, running=400, waiting=100), cap(4), 0).desired == 10
    assert e.decide(o(100, ttft_p95=0.3, running=100, waiting=0), cap(10), 100).desired == 10
    assert e.decide(o(320, ttft_p95=0.3, running=100, waiting=0), cap(10), 320).desired == 9


def test_schedule_and_static() -> None:
    s = SchedulePolicy([(0, 2), (100, 5)])
    assert s.decide(None, cap(1), 50).desired == 2
    assert s.decide(None, cap(2), 150).desired == 5
    assert StaticPolicy(7).decide(None, cap(1), 0).desired == 7


def test_baselines_respect_free_gpus() -> None:
    d = HpaPolicy(10, max_replicas=50).decide(
        o(0, running=400), CapacityView(current=2, ready=2, free_gpus=3), 0
    )
    assert d.desired == 5 and d.reason is Reason.INSUFFICIENT_GPU
