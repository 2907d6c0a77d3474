"""The baselines run with their published defaults, rate limits included (issue 14, Build 3): Knative
KPA (max-scale-up-rate 1000, max-scale-down-rate 2, 1 s metrics, 2 s ticks), the KEDA queue rule
(HPA AverageValue 5 on waiting requests), ENOVA's 30 s detect interval. Table-driven."""

from __future__ import annotations

import pytest

from tidal.scaling.types import CapacityView, FleetObservation
from tidal.sim.baselines import EnovaPolicy, HpaPolicy, KedaPolicy, KpaPolicy

pytestmark = pytest.mark.unit


def _obs(t: float, running: float = 0.0, waiting: float = 0.0) -> FleetObservation:
    return FleetObservation(time=t, running=running, waiting=waiting, ttft_p95=0.1, request_rate=1.0)


def _cap(current: int, ready: int | None = None) -> CapacityView:
    r = current if ready is None else ready
    return CapacityView(current=current, ready=r, starting=current - r, free_gpus=1000, gpus_per_replica=1)


def test_published_defaults() -> None:
    kpa = KpaPolicy(10)
    assert (kpa.stable, kpa.panic_w, kpa.panic_threshold) == (60.0, 6.0, 2.0)
    assert (kpa.up_rate, kpa.down_rate, kpa.metric_interval_s, kpa.sync_period_s) == (1000.0, 2.0, 1.0, 2.0)
    hpa = HpaPolicy(10)
    assert (hpa.sync_period_s, hpa.tolerance, hpa.window) == (15.0, 0.1, 300.0)
    keda = KedaPolicy()
    assert (keda.target, keda.sync_period_s, keda.tolerance, keda.window) == (5.0, 15.0, 0.1, 300.0)
    assert EnovaPolicy(10).sync_period_s == 30.0


@pytest.mark.parametrize(
    ("ready", "concurrency", "expected"),
    [
        (8, 0.0, 4),  # idle: at most halves per decision (max-scale-down-rate 2)
        (9, 0.0, 4),  # floor(9 / 2)
        (8, 35.0, 4),  # a stable demand of 4 pods is allowed
        (8, 55.0, 6),
        (1, 50_000.0, 1000),  # up to 1000x the ready pods in one decision (max is far above)
    ],
)
def test_kpa_rate_limits(ready: int, concurrency: float, expected: int) -> None:
    kpa = KpaPolicy(10, max_replicas=5000)
    d = kpa.decide(_obs(100.0, running=concurrency), _cap(ready), 100.0)
    assert d.desired == expected


@pytest.mark.parametrize(
    ("current", "waiting", "expected"),
    [
        (2, 0.0, 2),  # HPA's 300 s window starts at the current count: no immediate scale-down
        (2, 10.0, 2),  # 10 / (5 x 2) = 1: within tolerance
        (2, 10.9, 2),  # ratio 1.09: still within 10 %
        (2, 30.0, 6),  # ceil(30 / 5)
        (2, 100.0, 6),  # scale-up limited to max(2x, +4) per sync
        (10, 400.0, 20),
    ],
)
def test_keda_queue_rule(current: int, waiting: float, expected: int) -> None:
    keda = KedaPolicy(5.0, max_replicas=100)
    assert keda.decide(_obs(50.0, waiting=waiting), _cap(current), 50.0).desired == expected


def test_keda_scales_down_after_the_stabilisation_window() -> None:
    keda = KedaPolicy(5.0, max_replicas=100)
    desired = [keda.decide(_obs(t, waiting=0.0), _cap(4), t).desired for t in range(0, 331, 15)]
    assert desired[0] == 4 and desired[-1] == 1  # the window starts at 4; 300 s later, min replicas
    assert all(d == 4 for d in desired[:20])
