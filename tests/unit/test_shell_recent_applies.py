"""The reconcile shell does not repeat a Service/PDB apply that the watch has not shown yet (the second
reconcile of a burst would otherwise write it again), and applies again as soon as the content differs,
the watch has shown the object (from then on the planner compares with what it observed), or the memory
expired."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tidal.plan import Observed
from tidal.shell.writer import RECENT_APPLY_SECONDS, RecentWrites, not_recently_applied

pytestmark = pytest.mark.unit


def service(name: str, port: int = 8000) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns"}, "spec": {"ports": [port]}}


def pod(name: str) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "ns"}, "spec": {}}


def remember(state: RecentWrites, obj: dict[str, Any], age: float = 0.0) -> None:
    """What the shell records after a successful apply (``age`` seconds ago)."""
    state.applied[f"{obj['kind']}/{obj['metadata']['name']}"] = (
        json.dumps(obj, sort_keys=True),
        time.monotonic() - age,
    )


def test_recent_apply_skipped_until_shown_changed_or_expired() -> None:
    state = RecentWrites()
    svc = service("api")
    assert not_recently_applied(state, [svc, pod("p0")], Observed()) == [svc, pod("p0")]
    remember(state, svc)
    remember(state, pod("p0"))
    # Same content, not shown yet: skipped (pods are never skipped).
    assert not_recently_applied(state, [svc, pod("p0")], Observed()) == [pod("p0")]
    # Other content: applied.
    assert not_recently_applied(state, [service("api", 9000)], Observed()) == [service("api", 9000)]
    # Expired: applied again.
    remember(state, svc, age=RECENT_APPLY_SECONDS + 1)
    assert not_recently_applied(state, [svc], Observed()) == [svc]
    # Shown by the watch: forgotten, so a later plan that wants it (deleted since) applies it.
    remember(state, svc)
    assert not_recently_applied(state, [svc], Observed(services=[svc])) == [svc]
    assert "Service/api" not in state.applied
