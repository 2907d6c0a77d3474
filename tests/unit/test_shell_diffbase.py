"""Spec changes are detected from ``metadata.generation``, not from kopf's diff base: the storage keeps and
writes nothing, and only a generation or label change forces a reconcile."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from tidal.shell import handlers
from tidal.shell.diffbase import NoDiffBaseStorage
from tidal.shell.reconciler import Reconciler

pytestmark = pytest.mark.unit


def body(generation: int = 1, labels: dict[str, str] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tidal.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "generation": generation,
            "labels": labels or {},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"replicas": 1},
        "status": dict(status),
    }


def test_storage_keeps_and_writes_nothing() -> None:
    storage = NoDiffBaseStorage()
    live = kopf.Body(body(readyReplicas=1))  # type: ignore[arg-type]
    assert storage.build(body=live) == {}
    assert storage.fetch(body=live) is None
    patch = kopf.Patch()
    storage.store(body=live, patch=patch, essence=storage.build(body=live))
    assert not patch, "no last-handled-configuration annotation is written"


def test_only_generation_or_label_changes_force_a_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    forced: list[tuple[str, str]] = []

    async def quiet(key: tuple[str, str], indexes: Any, force: bool = False) -> None:
        assert force
        forced.append(key)

    rec = Reconciler()
    monkeypatch.setattr(rec, "quiet", quiet)
    monkeypatch.setattr(handlers, "RECONCILER", rec)
    indexes = {k: None for k in ("llmd_index", "pod_index", "service_index", "pdb_index", "node_index")}

    def event(kind: str | None, doc: dict[str, Any]) -> None:
        handler: Any = handlers.on_deployment_event  # kopf's decorator types it as WatchingFn

        async def deliver() -> None:
            await handler(type=kind, namespace="ns", name="m", meta=doc["metadata"], **indexes)
            await asyncio.gather(*rec.tasks)  # the reconcile runs in the background

        asyncio.run(deliver())

    event(None, body())  # the operator's initial listing: reconcile (what on.resume did)
    event("MODIFIED", body(readyReplicas=1))  # our own status write
    event("MODIFIED", body(readyReplicas=1) | {"metadata": body()["metadata"] | {"finalizers": ["x"]}})
    assert forced == [("ns", "m")]
    event("MODIFIED", body(generation=2))  # a spec change
    event("MODIFIED", body(generation=2, labels={"team": "a"}))  # a label change
    assert len(forced) == 3
    event("DELETED", body(generation=2, labels={"team": "a"}))
    assert ("ns", "m") not in rec.states
    event(None, body(generation=2, labels={"team": "a"}))  # recreated with the same name
    assert len(forced) == 4
