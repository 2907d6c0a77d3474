"""kopf's peering rule for the reconcile's own timers: who blocks whom, reconciles deferred while another
operator acts, and caught up when this one acts again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tidal.shell.leadership import PeeringGate, blocking_peer
from tidal.shell.reconciler import Reconciler

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: float = 5.0, lifetime: int = 60) -> dict[str, Any]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat(),
    }


@pytest.mark.parametrize(
    ("others", "blocked"),
    [
        ({}, False),
        ({"b": peer(5)}, False),  # lower priority: we act, it pauses
        ({"b": peer(20)}, True),  # higher priority
        ({"b": peer(10)}, True),  # the same priority: kopf pauses both
        ({"b": peer(20, seen_ago=61)}, False),  # dead: lastseen + lifetime is past
        ({"b": peer(20, seen_ago=100, lifetime=120)}, True),  # its own lifetime counts
        ({"b": {"priority": 20}}, False),  # no lastseen: not a peer record
        ({"b": peer(5), "c": peer(11)}, True),
    ],
)
def test_blocking_peer_follows_kopfs_rule(others: dict[str, Any], blocked: bool) -> None:
    status = {"me": peer(10), **others}
    found = blocking_peer(status, "me", 10, NOW)
    assert (found is not None) == blocked
    if found is not None:
        assert "priority" in found and "ours 10" in found


def test_kopfs_own_timestamp_format_parses() -> None:
    status = {"other": {"priority": 1, "lifetime": 60, "lastseen": "2026-12-05T02:59:30.123456+00:00"}}
    assert blocking_peer(status, "me", 0, NOW) is not None


class FakeCustom:
    def __init__(self, status: dict[str, Any] | Exception) -> None:
        self.status = status

    def get_cluster_custom_object(self, *_: Any) -> dict[str, Any]:
        if isinstance(self.status, Exception):
            raise self.status
        return {"status": self.status}


class FakeKube:
    def __init__(self, custom: FakeCustom) -> None:
        self.custom = custom


def test_gate_reads_the_peering_and_keeps_its_answer_when_the_read_fails() -> None:
    custom = FakeCustom({"me": peer(1), "new-pod": peer(2)})
    gate = PeeringGate(FakeKube(custom), "tidal", [], "me", 1)  # type: ignore[arg-type]
    assert gate.poll(NOW) is False and gate.blocked_by is not None
    custom.status = RuntimeError("connection refused")
    assert gate.poll(NOW) is False
    custom.status = {"me": peer(1)}
    assert gate.poll(NOW) is True and gate.blocked_by is None


def test_reconciles_wait_while_paused_and_catch_up(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, str]] = []

    async def run_once(key: tuple[str, str], indexes: Any) -> None:
        ran.append(key)

    class Gate:
        answers = [True]

        def poll(self, now: datetime) -> bool:
            return self.answers[-1]

    runtime = Reconciler(acting=False)
    monkeypatch.setattr(runtime, "run_once", run_once)
    indexes = {"llmd_index": None}

    async def scenario() -> None:
        await runtime.reconcile(("ns", "a"), indexes, force=True)
        await runtime.reconcile(("ns", "b"), indexes)
        assert ran == [] and runtime.deferred == {("ns", "a"), ("ns", "b")}
        follower = asyncio.create_task(runtime.follow_peering(Gate(), 0.01))  # type: ignore[arg-type]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(ran) == 2:
                break
        follower.cancel()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert sorted(ran) == [("ns", "a"), ("ns", "b")]
    assert runtime.acting and not runtime.deferred
