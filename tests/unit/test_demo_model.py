"""The demo's queueing model of one replica (``tidal.demo.model``): a queue builds no faster than a real one.

The end-to-end demo test failed in CI (2026-12-07) because a replica offered just under its capacity jumped
straight to the steady queue of ``rho^4 / (1 - rho)`` (5,000 requests at ``rho = 0.9995``) in one tick; the
backlog then took longer than the demo to drain and it never scaled down. The queue now settles over the
M/M/1 relaxation time.
"""

from __future__ import annotations

import pytest

from tidal.demo.model import ReplicaModel, ReplicaState


@pytest.fixture(scope="module")
def replica() -> ReplicaModel:
    return ReplicaModel.for_model()


def _run(replica: ReplicaModel, rho: float, seconds: int, state: ReplicaState | None = None) -> ReplicaState:
    state = state or ReplicaState()
    for _ in range(seconds):
        replica.advance(state, rho * replica.capacity_rps, 1.0)
    return state


def test_just_under_capacity_the_queue_builds_over_minutes_not_one_tick(replica: ReplicaModel) -> None:
    state = _run(replica, 0.9995, 10)
    assert replica.steady_waiting(0.9995) > 1000  # the steady state the old model jumped to
    assert state.waiting < 10 * replica.capacity_rps  # never faster than requests arrive
    assert state.waiting < 50


def test_below_capacity_the_queue_settles_at_its_steady_value(replica: ReplicaModel) -> None:
    state = _run(replica, 0.8, 120)
    assert state.waiting == pytest.approx(replica.steady_waiting(0.8), rel=0.01)
    assert state.served_rps == pytest.approx(0.8 * replica.capacity_rps)


def test_over_capacity_the_queue_grows_by_the_excess_and_drains_at_spare_rate(replica: ReplicaModel) -> None:
    mu = replica.capacity_rps
    state = _run(replica, 1.5, 10)
    assert state.waiting == pytest.approx(replica.steady_waiting(0.95) + 0.5 * mu * 10, rel=0.01)
    peak = state.waiting
    _run(replica, 0.5, 5, state)
    assert state.waiting == pytest.approx(peak - 0.5 * mu * 5, rel=0.01)
    assert state.served_rps == pytest.approx(mu)


def test_relaxation_time_grows_without_bound_near_capacity(replica: ReplicaModel) -> None:
    times = [replica.relaxation_seconds(r) for r in (0.2, 0.5, 0.8, 0.95, 0.999)]
    assert times == sorted(times)
    assert replica.relaxation_seconds(1.0) == float("inf")
