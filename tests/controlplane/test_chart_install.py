"""The Helm chart installed on the local control plane, and the operator it describes reconciling an example.

A real ``helm install`` (Helm v4's library through ``helm-python-sdk``) puts the chart on the real
kube-apiserver: the CRDs (LLMDeployment and kopf's peering) become Established, the ServiceAccount,
ClusterRole (exactly ``files/operator-rbac-rules.yaml``), ClusterRoleBinding, Deployment, Service, PDB and
ClusterKopfPeering exist, and the release is ``deployed``. The Deployment's pod cannot run on KWOK nodes,
so the operator runs here with the installed container's arguments (peering on: leader election through the
chart's ClusterKopfPeering) and a TokenRequest token of the chart's ServiceAccount. It reconciles
``examples/llama-3.1-8b.yaml`` into a Ready worker pod; requests outside the chart's RBAC get 403 from the
API server; ``helm uninstall`` removes the RBAC again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import ControlPlane
from tests.support.helm import (
    ROOT,
    ChartOperator,
    chart_operator,
    install_chart,
    release_status,
    uninstall_chart,
)
from tidal.api import GROUP, PLURAL, VERSION
from tidal.builders.names import deployment_selector, selector_string
from tidal.demo.identity import admin_server_and_ca, request_token, token_kubeconfig

RELEASE = "tidal-chart"  # fullname "tidal-chart": distinct from the operator fixture's "tidal-operator"
NAMESPACE = "tidal-chart-system"
PEERING = "tidal-chart"
EXAMPLE = ROOT / "examples" / "llama-3.1-8b.yaml"
RULES = ROOT / "helm" / "tidal" / "files" / "operator-rbac-rules.yaml"
CRDS = ("llmdeployments.tidal.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


@dataclass
class Installed:
    cp: ControlPlane
    release: dict[str, Any]
    kubeconfig: Path
    """The chart ServiceAccount's token kubeconfig."""
    operator: ChartOperator
    sa_client: Any


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("chart")
    release = install_chart(
        control_plane.kubeconfig, RELEASE, NAMESPACE, {"operator": {"peering": {"name": PEERING}}}
    )
    operator: ChartOperator | None = None
    try:
        apps = client.AppsV1Api(control_plane.api_client)
        deployment = apps.read_namespaced_deployment(RELEASE, NAMESPACE)
        pod_spec = deployment.spec.template.spec
        container = control_plane.api_client.sanitize_for_serialization(pod_spec.containers[0])
        token = request_token(control_plane.api_client, NAMESPACE, pod_spec.service_account_name)
        server, ca = admin_server_and_ca(control_plane.kubeconfig)
        account = f"system:serviceaccount:{NAMESPACE}:{pod_spec.service_account_name}"
        kubeconfig = token_kubeconfig(work / "sa.kubeconfig", server, ca, account, token)
        operator = chart_operator(container, kubeconfig, work / "operator.log", priority=0x5EED)
        operator.start()
        sa_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        yield Installed(control_plane, release, kubeconfig, operator, sa_client)
    finally:
        if operator is not None:
            operator.stop()
            print(f"\noperator log ({operator.log_path}):\n{operator.logs(40)}")
        uninstall_chart(control_plane.kubeconfig, RELEASE, NAMESPACE)


def test_helm_install_creates_the_chart_objects(installed: Installed) -> None:
    cp = installed.cp
    assert installed.release["name"] == RELEASE and installed.release["status"] == "deployed"
    assert f'kopf peering "{PEERING}"' in installed.release["notes"]
    status = release_status(cp.kubeconfig, RELEASE, NAMESPACE)
    assert (status["status"], status["revision"], status["chart_name"]) == ("deployed", 1, "tidal")
    ext = client.ApiextensionsV1Api(cp.api_client)
    for name in CRDS:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        assert any(c.type == "Established" and c.status == "True" for c in conditions), name
    sa = cp.core.read_namespaced_service_account(RELEASE, NAMESPACE)
    assert sa.metadata.labels["app.kubernetes.io/instance"] == RELEASE
    rbac = client.RbacAuthorizationV1Api(cp.api_client)
    role = rbac.read_cluster_role(f"{RELEASE}-operator")
    installed_rules = cp.api_client.sanitize_for_serialization(role.rules)
    assert _normalise(installed_rules) == _normalise(yaml.safe_load(RULES.read_text()))
    binding = rbac.read_cluster_role_binding(f"{RELEASE}-operator")
    assert binding.role_ref.name == role.metadata.name
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", RELEASE, NAMESPACE)
    ]
    deployment = client.AppsV1Api(cp.api_client).read_namespaced_deployment(RELEASE, NAMESPACE)
    pod_spec = deployment.spec.template.spec
    assert pod_spec.service_account_name == RELEASE
    container = pod_spec.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    assert container.args[0] == "run" and f"--peering={PEERING}" in container.args
    assert cp.core.read_namespaced_service(f"{RELEASE}-metrics", NAMESPACE).spec.ports[0].port == 9090
    assert client.PolicyV1Api(cp.api_client).read_namespaced_pod_disruption_budget(RELEASE, NAMESPACE)
    peering = client.CustomObjectsApi(cp.api_client).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", PEERING
    )
    assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def _normalise(rules: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (
            tuple(r.get("apiGroups") or []),
            tuple(r.get("resources") or []),
            tuple(sorted(r.get("verbs") or [])),
        )
        for r in rules
    )


def test_operator_as_the_chart_account_reconciles_the_example(installed: Installed) -> None:
    cp = installed.cp
    nodes = cp.create_gpu_nodes(1, prefix="chart")
    ns = cp.create_namespace("chart")
    custom = client.CustomObjectsApi(cp.api_client)
    doc = yaml.safe_load(EXAMPLE.read_text())
    name = doc["metadata"]["name"]
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)
        selector = selector_string(deployment_selector(name))

        def running_pods() -> list[str]:
            pods = cp.core.list_namespaced_pod(ns, label_selector=selector).items
            return [p.metadata.name for p in pods if p.status.phase == "Running"]

        assert wait_for(running_pods, 90, "worker pod Running") == [f"{name}-r0"]

        def ready() -> dict[str, Any] | None:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            status = obj.get("status") or {}
            conds = {c["type"]: c for c in status.get("conditions") or []}
            ok = conds.get("Ready", {}).get("status") == "True" and status.get("readyReplicas") == 1
            return obj if ok else None

        obj = wait_for(ready, 90, "LLMDeployment Ready")
        assert obj["status"]["conditions"]
        # Written by the chart's ServiceAccount (server-side apply, field manager tidal-operator).
        pod = cp.core.read_namespaced_pod(f"{name}-r0", ns)
        assert any(m.manager == "tidal-operator" for m in pod.metadata.managed_fields or [])
        # Leader election went through the chart's ClusterKopfPeering.
        peering = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", PEERING)
        assert peering.get("status"), f"no operator registered in the peering: {peering}"
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        wait_for(lambda: not cp.core.list_namespaced_pod(ns).items, 60, "worker pods deleted")
        cp.core.delete_namespace(ns)
        cp.delete_nodes(nodes)


def test_requests_outside_the_chart_rbac_are_refused(installed: Installed) -> None:
    sa = installed.sa_client
    core = client.CoreV1Api(sa)
    apps = client.AppsV1Api(sa)
    assert core.list_namespaced_pod("default").items is not None  # inside the rules: allowed
    refused = {
        "list secrets": lambda: core.list_namespaced_secret("default"),
        "read a secret": lambda: core.read_namespaced_secret("anything", NAMESPACE),
        "create a Deployment": lambda: apps.create_namespaced_deployment(
            "default",
            {
                "metadata": {"name": "not-allowed"},
                "spec": {
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                    },
                },
            },
        ),
        "update (PUT) a node": lambda: core.replace_node(
            "nonexistent", {"metadata": {"name": "nonexistent"}}
        ),
        "delete a namespace": lambda: core.delete_namespace(NAMESPACE),
        "create a ClusterRole": lambda: client.RbacAuthorizationV1Api(sa).create_cluster_role(
            {"metadata": {"name": "escalate"}, "rules": []}
        ),
    }
    statuses = {}
    for what, call in refused.items():
        try:
            call()
            statuses[what] = 200
        except ApiException as exc:
            statuses[what] = exc.status
    assert statuses == dict.fromkeys(refused, 403)


def test_uninstall_removes_the_rbac(control_plane: ControlPlane, tmp_path: Path) -> None:
    """A second release installs and uninstalls cleanly (CRDs stay, as Helm keeps CRDs)."""
    release, namespace = "tidal-chart-2", "tidal-chart-2-system"
    install_chart(
        control_plane.kubeconfig,
        release,
        namespace,
        {"replicaCount": 1, "operator": {"peering": {"name": "tidal-chart-2", "priority": 1}}},
    )
    rbac = client.RbacAuthorizationV1Api(control_plane.api_client)
    assert rbac.read_cluster_role(f"{release}-operator")
    uninstall_chart(control_plane.kubeconfig, release, namespace)

    def gone() -> bool:
        try:
            rbac.read_cluster_role(f"{release}-operator")
        except ApiException as exc:
            return exc.status == 404
        return False

    assert wait_for(gone, 30, "ClusterRole removed by helm uninstall")
    ext = client.ApiextensionsV1Api(control_plane.api_client)
    assert ext.read_custom_resource_definition("llmdeployments.tidal.dev")
