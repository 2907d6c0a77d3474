"""A failing autoscaler pass never stops pod reconciliation (issue 16): the reconciler catches it, the
deployment still gets its pods, ``ScalingActive=False`` with reason ``AutoscalerFailed`` names the error
(its transition is a Warning Event), one log line says so, and the replicas are held."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.plan import ObjectRef
from tidal.shell import autoscale
from tidal.shell.reconciler import Reconciler

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


class FakeKube:
    """Records the reconciler's writes."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def apply(self, obj: dict[str, Any]) -> None:
        self.applied.append(obj)

    def delete(self, ref: ObjectRef) -> bool:
        return True

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status.append(status)

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.events.append(body)


def test_a_pass_that_raises_still_reconciles_the_pods(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"] |= {"namespace": "ns", "uid": "u-1", "generation": 1}
    doc["spec"]["replicas"] = 2

    def broken(*_: Any, **__: Any) -> Any:
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(autoscale, "autoscale_pass", broken)
    kube = FakeKube()
    rec = Reconciler(kube=kube)  # type: ignore[arg-type]
    key = ("ns", "llama-3-1-8b")
    indexes: dict[str, Any] = {
        "llmd_index": {key: [doc]},
        "pod_index": {},
        "service_index": {},
        "pdb_index": {},
        "node_index": {},
    }

    async def run() -> None:
        await rec.reconcile(key, indexes, force=True)
        await asyncio.sleep(0.2)  # Events are posted in the background

    with caplog.at_level(logging.WARNING, logger="tidal.shell.autoscale"):
        asyncio.run(run())
    pods = [o for o in kube.applied if o["kind"] == "Pod"]
    assert len(pods) == 2  # spec.replicas, held
    (status,) = kube.status
    scaling = next(c for c in status["conditions"] if c["type"] == "ScalingActive")
    assert (scaling["status"], scaling["reason"]) == ("False", "AutoscalerFailed")
    assert "ZeroDivisionError: float division by zero" in scaling["message"]
    assert "replicas held at 2" in scaling["message"]
    warnings = [e for e in kube.events if e["reason"] == "AutoscalerFailed"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning", kube.events
    lines = [r for r in caplog.records if "autoscaler pass failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None  # one line, no traceback
    assert rec.states[key].errors == 0  # the reconcile itself succeeded: no backoff
