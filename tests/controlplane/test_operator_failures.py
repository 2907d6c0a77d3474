"""The operator when the API server refuses its writes (issue 6 follow-up): a ValidatingAdmissionPolicy (CEL)
denies the worker pod of one deployment. The user is told (``Degraded=True`` with reason ``ApplyFailed``
naming the pod and quoting the API server, one Warning Event however often the reconcile retries), the
retries back off (a bounded number of API requests over 30 s, counted by the operator itself), and once the
policy is removed the deployment converges and ``Degraded`` clears.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import ControlPlane
from tests.support.operator import OperatorProcess, install_crds, operator_kubeconfig, wait_for
from tidal.devcluster import GPUNodeSpec

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"
BACKOFF_CAP_S = 20
"""The operator's retry cap in this module (``TIDAL_ERROR_BACKOFF_MAX_SECONDS``; default 300)."""


@pytest.fixture(scope="module")
def failing_operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_crds(control_plane)
    work = tmp_path_factory.mktemp("operator-failures")
    op = OperatorProcess(
        operator_kubeconfig(control_plane, work / "operator.kubeconfig"),
        work / "operator.log",
        env={"TIDAL_ERROR_BACKOFF_MAX_SECONDS": str(BACKOFF_CAP_S)},
    )
    op.start()
    try:
        yield op
    finally:
        op.kill(signal.SIGTERM)
        print(f"\noperator log: {op.log_path}\n{op.logs(30)}")


def _deny_policy(ns: str, deployment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A policy refusing pods labelled ``tidal.dev/deployment=<deployment>`` and its binding to ``ns``."""
    name = f"deny-{ns}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": (
                        "!has(object.metadata.labels) || "
                        "!('tidal.dev/deployment' in object.metadata.labels) || "
                        f"object.metadata.labels['tidal.dev/deployment'] != '{deployment}'"
                    ),
                    "message": f"test policy: no pods for {deployment}",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        },
    }
    return policy, binding


def _condition(custom: Any, ns: str, name: str, ctype: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def _apply_failed_events(cp: ControlPlane, ns: str, name: str) -> list[Any]:
    items = cp.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [e for e in items if e.reason == "ApplyFailed"]


def test_refused_pod_degrades_backs_off_and_recovers(
    control_plane: ControlPlane, failing_operator: OperatorProcess
) -> None:
    cp = control_plane
    ns = cp.create_namespace("fail")
    tag = ns[-6:]
    nodes = cp.create_gpu_nodes(1, GPUNodeSpec(gpus=8), prefix="fail", labels={"tidal-test": tag})
    admission = client.AdmissionregistrationV1Api(cp.api_client)
    custom = client.CustomObjectsApi(cp.api_client)
    cp.core.create_namespaced_secret(ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": "x"}})
    name = "refused"
    policy, binding = _deny_policy(ns, name)
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    try:
        probe = {
            "metadata": {"generateName": "probe-", "labels": {"tidal.dev/deployment": name}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }

        def policy_active() -> bool:
            try:
                cp.core.create_namespaced_pod(ns, probe, dry_run="All")
            except ApiException as exc:
                return bool(exc.status == 422)
            return False

        wait_for(policy_active, timeout=30, what="the admission policy in force")

        doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
        doc["metadata"] = {"name": name, "namespace": ns}
        doc["spec"]["autoscaling"]["enabled"] = False
        doc["spec"]["replicas"] = 2  # two replicas: the batch with the refused pods also holds the PDB
        doc["spec"].setdefault("resources", {})["nodeSelector"] = {"tidal-test": tag}
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)

        degraded = wait_for(
            lambda: (c := _condition(custom, ns, name, "Degraded")).get("reason") == "ApplyFailed" and c,
            timeout=60,
            what="Degraded=True/ApplyFailed",
        )
        assert degraded["status"] == "True"
        assert f"Pod {ns}/{name}-r0 refused (422)" in degraded["message"]
        assert f"test policy: no pods for {name}" in degraded["message"]
        events = wait_for(lambda: _apply_failed_events(cp, ns, name), timeout=30, what="ApplyFailed Event")
        assert any(e.type == "Warning" and f"{name}-r0" in e.message for e in events), events
        # The other writes of the same batch were still made.
        policy_v1 = client.PolicyV1Api(cp.api_client)
        assert policy_v1.read_namespaced_pod_disruption_budget(name, ns).metadata.name == name

        # Retries back off: 30 s cost a handful of requests (a retry is two pod applies), never a loop.
        before = failing_operator.api_requests(ns)
        time.sleep(30)
        spent = failing_operator.api_requests(ns) - before
        assert 2 <= spent <= 12, f"{spent} API requests in 30 s while refused"
        assert len(_apply_failed_events(cp, ns, name)) == 1, "one Event per distinct refusal, not per retry"
        assert _condition(custom, ns, name, "Degraded")["message"] == degraded["message"]
        assert cp.core.list_namespaced_pod(ns).items == []

        # Remove the obstacle: the next retry (at most the backoff cap later) converges and Degraded clears.
        admission.delete_validating_admission_policy_binding(binding["metadata"]["name"])
        admission.delete_validating_admission_policy(policy["metadata"]["name"])

        def recovered() -> bool:
            deg = _condition(custom, ns, name, "Degraded")
            ready = _condition(custom, ns, name, "Ready")
            return deg.get("status") == "False" and ready.get("status") == "True"

        wait_for(recovered, timeout=BACKOFF_CAP_S + 60, what="Ready=True and Degraded=False")
        assert _condition(custom, ns, name, "Degraded")["reason"] == "WorkersHealthy"
        assert len(cp.core.list_namespaced_pod(ns).items) == 2
        assert len(_apply_failed_events(cp, ns, name)) == 1
    finally:
        for call in (
            lambda: admission.delete_validating_admission_policy_binding(binding["metadata"]["name"]),
            lambda: admission.delete_validating_admission_policy(policy["metadata"]["name"]),
        ):
            try:
                call()
            except ApiException as exc:
                if exc.status != 404:
                    raise
        cp.core.delete_namespace(ns)
        cp.delete_nodes(nodes)
