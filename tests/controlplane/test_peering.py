"""Two operators in one kopf peering never act at once, timers included: when a higher-priority operator
joins, the first one pauses (kopf) and its own in-memory timers (here the autoscaler's pass every 2 s) stop
reconciling too; when the other one leaves, it acts again and catches up. Both run under the operator's RBAC
identity, on the real API server.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.support.cluster import ControlPlane
from tests.support.operator import OperatorProcess, install_crds, operator_kubeconfig, wait_for
from tidal.shell.peering import peering_object

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"
RECONCILES = "tidal_reconcile_total"


def _steady(op: OperatorProcess, seconds: float) -> float | None:
    """The reconcile count when it did not change for ``seconds`` (else ``None``)."""
    before = op.metric(RECONCILES)
    time.sleep(seconds)
    after = op.metric(RECONCILES)
    return after if after == before else None


def test_a_paused_operator_stops_its_own_timers(control_plane: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane
    install_crds(cp)
    kubeconfig = operator_kubeconfig(cp, tmp_path / "operator.kubeconfig")
    custom = client.CustomObjectsApi(cp.api_client)
    peering = f"peer-{uuid.uuid4().hex[:6]}"
    custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering_object(peering))
    ns = cp.create_namespace("peer")
    env = {"TIDAL_AUTOSCALER_INTERVAL_SECONDS": "2"}
    first = OperatorProcess(kubeconfig, tmp_path / "first.log", ["--priority=1"], env, peering=peering)
    second = OperatorProcess(kubeconfig, tmp_path / "second.log", ["--priority=2"], env, peering=peering)
    first.start()
    try:
        doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
        doc["metadata"] = {"name": "peered", "namespace": ns}
        doc["spec"]["autoscaling"]["enabled"] = True
        doc["spec"]["autoscaling"]["prometheus"] = {"url": "http://127.0.0.1:9"}  # refused: metrics held
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)
        start = first.metric(RECONCILES)
        wait_for(lambda: first.metric(RECONCILES) >= start + 3, timeout=60, what="autoscaler passes")

        second.start()
        wait_for(lambda: second.metric(RECONCILES) > 0, timeout=60, what="the second operator acting")
        # kopf pauses at once; Tidal's gate reads the peering every 5 s and says so in one line.
        wait_for(
            lambda: "reconciles deferred" in first.logs(200), timeout=30, what="the first operator paused"
        )
        paused_at = wait_for(lambda: _steady(first, 3.0), timeout=30, what="in-flight reconciles finished")
        time.sleep(15)  # ~7 autoscaler intervals
        assert first.metric(RECONCILES) == paused_at, "a paused operator reconciled from its own timers"

        second.kill(signal.SIGTERM)  # kopf leaves the peering on a clean exit
        wait_for(lambda: first.metric(RECONCILES) > paused_at, timeout=90, what="the first operator again")
        assert "acting again" in first.logs(200)
    finally:
        second.kill(signal.SIGTERM)
        first.kill(signal.SIGTERM)
        print(f"\nfirst operator log:\n{first.logs(30)}\nsecond operator log:\n{second.logs(30)}")
        cp.core.delete_namespace(ns)
        custom.delete_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
