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


def api_error(status: int, reason: str) -> Exception:
    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=status, reason=reason)
    exc.headers = {"Audit-Id": "0f0f", "Content-Type": "application/json"}  # what str(exc) would dump
    exc.body = '{"kind":"Status","message":"the server could not find the requested resource"}'
    return exc


def test_an_absent_peering_pauses_with_one_line_and_no_header_dump(caplog: pytest.LogCaptureFixture) -> None:
    custom = FakeCustom(api_error(404, "Not Found"))
    gate = PeeringGate(FakeKube(custom), "tidal", [], "me", 1)  # type: ignore[arg-type]
    with caplog.at_level("DEBUG", logger="tidal.operator"):
        for _ in range(5):
            assert gate.poll(NOW) is False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "ClusterKopfPeering 'tidal'" in lines[0] and "404 Not Found" in lines[0]
    assert "Audit-Id" not in lines[0] and "HTTP response" not in lines[0] and "\n" not in lines[0]
    custom.status = {"me": peer(1)}  # created: acting again, said once
    with caplog.at_level("DEBUG", logger="tidal.operator"):
        assert gate.poll(NOW) is True
    assert "acting again" in caplog.records[-1].getMessage()


def test_a_failing_read_is_logged_once_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    custom = FakeCustom(api_error(500, "Internal Server Error"))
    gate = PeeringGate(FakeKube(custom), "tidal", [], "me", 1)  # type: ignore[arg-type]
    with caplog.at_level("DEBUG", logger="tidal.operator"):
        for _ in range(4):
            assert gate.poll(NOW) is True  # keeps the last answer
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "500 Internal Server Error" in warnings[0].getMessage()
    assert all("Audit-Id" not in r.getMessage() for r in caplog.records)


class PeeringLookup:
    """``get_*_custom_object`` answering from a set of (namespace, name) that exist, else ``error``."""

    def __init__(self, present: set[tuple[str | None, str]], error: Exception | None = None) -> None:
        self.present, self.error = present, error

    def get_cluster_custom_object(self, _g: str, _v: str, _p: str, name: str) -> dict[str, Any]:
        return self._get(None, name)

    def get_namespaced_custom_object(self, _g: str, _v: str, ns: str, _p: str, name: str) -> dict[str, Any]:
        return self._get(ns, name)

    def _get(self, ns: str | None, name: str) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        if (ns, name) not in self.present:
            raise api_error(404, "Not Found")
        return {}


@pytest.mark.parametrize(
    ("explicit", "present", "namespaces", "error", "joined"),
    [
        (None, set(), [], None, None),  # only the LLMDeployment CRD: standalone
        (None, {(None, "tidal")}, [], None, "tidal"),
        (None, {("b", "tidal")}, ["a", "b"], None, "tidal"),
        (None, {(None, "tidal")}, ["a"], None, None),  # namespaced operators use KopfPeering objects
        ("mine", set(), [], None, "mine"),  # named: joined even when absent (paused until created)
        (None, set(), [], "forbidden", "tidal"),  # cannot tell: never risk two acting operators
    ],
)
def test_resolve_peering(
    explicit: str | None,
    present: set[tuple[str | None, str]],
    namespaces: list[str],
    error: str | None,
    joined: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tidal.shell.peering import resolve_peering

    kube = FakeKube(PeeringLookup(present, api_error(403, "Forbidden") if error else None))  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="tidal.operator"):
        assert resolve_peering(kube, explicit, namespaces) == joined  # type: ignore[arg-type]
    assert len(caplog.records) <= 1 and all("\n" not in r.getMessage() for r in caplog.records)
    if joined is None:
        assert "standalone" in caplog.records[0].getMessage()
