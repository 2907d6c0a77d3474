"""The running operator (its production RBAC plus the chart's one-ConfigMap Role) with a custom GPU catalogue
ConfigMap and a model outside the catalogue served by an in-process Hub (tests/support/hubserver.py, private:
the token is a file, ``HF_TOKEN_PATH``, as the chart mounts it). A 70B-shaped ``hf://`` model in Apply mode
with TP/PP ``"auto"`` is sized from its fetched ``config.json`` on a GPU only the ConfigMap knows, and its
pods land on nodes carrying that GPU's custom product label; a model of an unsupported architecture gets
``ModelResolved=False`` naming it, with a Warning Event. At c41f3b9 the first ran at TP = 1 (no catalogue
entry, no fetch) and the GPU was unknown to the recommender."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support.cluster import ControlPlane
from tests.support.hubserver import FakeHub, fake_hub
from tests.support.operator import (
    ACCOUNT,
    SYSTEM_NS,
    OperatorProcess,
    install_crds,
    operator_kubeconfig,
    wait_for,
)
from tests.unit.test_gpu_catalog_configmap import CATALOG
from tests.unit.test_model_resolved import BIG
from tidal.devcluster import GPUNodeSpec

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"
CATALOG_CM = "gpu-catalog-hubtest"
LABEL = "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"
TOKEN = "hf_controlplane_token"


def _grant_configmap(cp: ControlPlane) -> None:
    """What the chart's gpu-catalog Role gives: ``get`` on that one ConfigMap."""
    rbac = client.RbacAuthorizationV1Api(cp.api_client)
    meta = {"name": CATALOG_CM, "namespace": SYSTEM_NS}
    rule = {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CATALOG_CM], "verbs": ["get"]}
    rbac.create_namespaced_role(SYSTEM_NS, {"metadata": meta, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        SYSTEM_NS,
        {
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CATALOG_CM},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": SYSTEM_NS}],
        },
    )


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with fake_hub() as h:
        h.add("acme/house-llama-70b", {"config.json": BIG}, token=TOKEN)
        h.add("acme/mamba", {"config.json": {**BIG, "architectures": ["MambaForCausalLM"]}}, token=TOKEN)
        yield h


@pytest.fixture(scope="module")
def hub_operator(
    control_plane: ControlPlane, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_crds(control_plane)
    work = tmp_path_factory.mktemp("operator-hub")
    kubeconfig = operator_kubeconfig(control_plane, work / "operator.kubeconfig")
    control_plane.core.create_namespaced_config_map(
        SYSTEM_NS, {"metadata": {"name": CATALOG_CM}, "data": {"gpus.yaml": CATALOG}}
    )
    _grant_configmap(control_plane)
    token = work / "token"
    token.write_text(TOKEN + "\n")
    env = {
        "POD_NAMESPACE": SYSTEM_NS,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN_PATH": str(token),
        "HF_HUB_CACHE": str(work / "hf-cache"),
    }
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE"):
        env[var] = ""
    op = OperatorProcess(kubeconfig, work / "operator.log", [f"--gpu-catalog-configmap={CATALOG_CM}"], env)
    op.start()
    try:
        yield op
    finally:
        op.kill(signal.SIGTERM)
        print(f"\noperator log: {op.log_path}\n{op.logs(30)}")


def _doc(name: str, ns: str, uri: str, tag: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": ns}
    spec = doc["spec"]
    spec["model"] = {"uri": uri, "servedModelName": name}
    spec["engine"] = {"tensorParallelSize": "auto", "pipelineParallelSize": "auto", "maxModelLen": 8192}
    spec["resources"] = {"gpuType": "RTX-PRO-6000", "gpusPerNode": 8, "nodeSelector": {"tidal-test": tag}}
    spec["autoscaling"]["enabled"] = False
    spec["recommendation"] = {"mode": "Apply"}
    return dict(doc)


def _condition(custom: Any, ns: str, name: str, ctype: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return next(
        (dict(c) for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {}
    )


def test_hub_model_sized_on_a_configmap_gpu(
    control_plane: ControlPlane, hub: FakeHub, hub_operator: OperatorProcess
) -> None:
    cp = control_plane
    ns = cp.create_namespace("hub")
    tag = ns[-6:]
    nodes = cp.create_gpu_nodes(
        1, GPUNodeSpec(gpu_product=LABEL, gpus=8), prefix="rtx", labels={"tidal-test": tag}
    )
    custom = client.CustomObjectsApi(cp.api_client)
    try:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, _doc("big", ns, "hf://acme/house-llama-70b", tag)
        )
        wait_for(
            lambda: _condition(custom, ns, "big", "Ready").get("status") == "True",
            timeout=90,
            what="big Ready",
        )
        resolved = _condition(custom, ns, "big", "ModelResolved")
        assert resolved["status"] == "True" and "config.json of acme/house-llama-70b" in resolved["message"]
        status = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "big")["status"]
        assert status["gpusPerReplica"] >= 2, status[
            "recommendation"
        ]  # 141 GB of weights: not one 95 GiB GPU
        pods = cp.core.list_namespaced_pod(ns).items
        assert pods and {p.spec.node_name for p in pods} <= set(nodes)
        terms = pods[0].spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        exprs = [e for t in terms.node_selector_terms for e in t.match_expressions]
        assert any(e.key == "nvidia.com/gpu.product" and e.values == [LABEL] for e in exprs)
        assert any(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)

        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, _doc("mamba", ns, "hf://acme/mamba", tag)
        )
        cond = wait_for(
            lambda: (c := _condition(custom, ns, "mamba", "ModelResolved")).get("status") == "False" and c,
            timeout=60,
            what="ModelResolved=False",
        )
        assert cond["reason"] == "UnsupportedArchitecture" and "MambaForCausalLM" in cond["message"]
        wait_for(
            lambda: any(
                e.reason == "UnsupportedArchitecture" and e.type == "Warning"
                for e in cp.core.list_namespaced_event(ns, field_selector="involvedObject.name=mamba").items
            ),
            timeout=30,
            what="UnsupportedArchitecture Event",
        )
    finally:
        cp.core.delete_namespace(ns)
        cp.delete_nodes(nodes)
