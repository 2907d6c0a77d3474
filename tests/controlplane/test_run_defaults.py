"""``tidal run`` as a new user starts it: no peering flags, on a cluster that has the LLMDeployment CRD but
not kopf's peering CRDs. It runs standalone (one warning line, no HTTP header dump) and brings the example
to Ready; a deployment naming a Prometheus outside the operator's allowlist is held with a condition that
says why, and a listener at that URL counts zero connections while the autoscaler passes go on.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import ControlPlane
from tests.support.listener import CountingListener
from tests.support.operator import (
    CRD_PATH,
    TIDAL,
    OperatorProcess,
    operator_kubeconfig,
    spawn_until_healthy,
    wait_for,
)
from tidal.devcluster.cluster import free_port
from tidal.shell.peering import PEERING_CRDS

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"


def _only_the_llmdeployment_crd(cp: ControlPlane) -> None:
    """Install the LLMDeployment CRD and remove kopf's peering CRDs (other modules reinstall them)."""
    ext = client.ApiextensionsV1Api(cp.api_client)
    for crd in PEERING_CRDS:
        try:
            ext.delete_custom_resource_definition(crd["metadata"]["name"])
        except ApiException as exc:
            if exc.status != 404:
                raise

    def gone() -> bool:
        names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
        return not names & {c["metadata"]["name"] for c in PEERING_CRDS}

    wait_for(gone, timeout=60, what="kopf's peering CRDs removed")
    for doc in (d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d):
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
        crd = doc["metadata"]["name"]
        wait_for(
            lambda crd=crd: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(crd).status.conditions or []
            ),
            timeout=30,
            what="LLMDeployment CRD established",
        )


@dataclass
class Rig:
    cp: ControlPlane
    ns: str
    tag: str
    op: OperatorProcess
    listener: CountingListener
    custom: Any

    def create(self, name: str, **autoscaling: Any) -> None:
        doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
        doc["metadata"] = {"name": name, "namespace": self.ns}
        doc["spec"]["resources"]["nodeSelector"] = {"tidal-test": self.tag}
        if autoscaling:
            doc["spec"]["autoscaling"] = {**doc["spec"].get("autoscaling", {}), **autoscaling}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, doc)

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        conds = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == ctype), {})


@pytest.fixture(scope="module")
def rig(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    cp = control_plane
    _only_the_llmdeployment_crd(cp)
    work = tmp_path_factory.mktemp("run-defaults")
    kubeconfig = operator_kubeconfig(cp, work / "operator.kubeconfig")
    tag = uuid.uuid4().hex[:6]
    nodes = cp.create_gpu_nodes(2, labels={"tidal-test": tag})
    ns = cp.create_namespace("run-defaults")
    listener = CountingListener()
    # No --peering/--standalone and no --prometheus-allow: only the ports, which a shared test machine needs.
    op = OperatorProcess(kubeconfig, work / "operator.log", env={"TIDAL_AUTOSCALER_INTERVAL_SECONDS": "1"})
    op.metrics_port, op.health_port = free_port(), free_port()
    argv = [
        str(TIDAL),
        "run",
        f"--kubeconfig={kubeconfig}",
        f"--metrics-port={op.metrics_port}",
        "--metrics-address=127.0.0.1",
        f"--liveness=http://127.0.0.1:{op.health_port}/healthz",
    ]
    op.proc = spawn_until_healthy(argv, op.env, op.log_path, op.health_port, "=== start: ", 60)
    try:
        yield Rig(cp, ns, tag, op, listener, client.CustomObjectsApi(cp.api_client))
    finally:
        op.kill(signal.SIGTERM)
        print(f"\noperator log: {op.log_path}\n{op.logs(40)}")
        listener.close()
        cp.core.delete_namespace(ns)
        cp.delete_nodes(nodes)


def test_no_flags_and_no_peering_crds_runs_standalone_to_ready(rig: Rig) -> None:
    rig.create("plain")
    wait_for(
        lambda: rig.condition("plain", "Ready").get("status") == "True",
        timeout=90,
        what=f"Ready; operator log:\n{rig.op.logs(20)}",
    )
    log = rig.op.log_path.read_text(errors="replace")
    standalone = [line for line in log.splitlines() if "running standalone" in line]
    assert len(standalone) == 1 and "WARNING" in standalone[0], standalone
    assert "HTTP response headers" not in log and "Audit-Id" not in log, log[-2000:]
    assert "could not read the kopf peering" not in log and "reconciles deferred" not in log


def test_prometheus_outside_the_allowlist_is_held_and_never_fetched(rig: Rig) -> None:
    passes = rig.op.metric("tidal_autoscaler_decisions_total")
    rig.create("outside", enabled=True, prometheus={"url": rig.listener.url})
    held = wait_for(
        lambda: (c := rig.condition("outside", "MetricsAvailable")).get("status") == "False" and c,
        timeout=60,
        what="MetricsAvailable=False",
    )
    assert "not in the operator's allowlist" in held["message"], held
    assert rig.condition("outside", "ScalingActive").get("status") == "False"
    # Several autoscaler passes later (one a second), still not one connection to the refused URL.
    wait_for(
        lambda: rig.op.metric("tidal_autoscaler_decisions_total") >= passes + 5,
        timeout=60,
        what="5 more autoscaler passes",
    )
    assert rig.listener.connections == 0
    refusals = [
        line
        for line in rig.op.log_path.read_text().splitlines()
        if "not in the operator's allowlist" in line and f"{rig.ns}/outside:" in line
    ]  # this deployment's lines only: the operator watches every namespace, and other tests refuse URLs too
    assert len(refusals) == 1, refusals  # logged once per URL, not every pass
