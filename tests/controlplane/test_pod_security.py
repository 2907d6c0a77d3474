"""Worker pods under Pod Security admission on the real API server (issue 16, must-show 3): in a namespace
that enforces ``restricted``, the running operator turns ``examples/llama-3.1-8b.yaml`` into a worker pod that
is admitted and runs on a KWOK GPU node, with the defaults the builder sets (non-root, no privilege
escalation, no capabilities, RuntimeDefault seccomp, no ServiceAccount token, requests and a size-limited
cache). The namespace really enforces: a pod without those settings, and a worker pod with a ``hostPath``
model cache (documented as needing a ``privileged`` namespace), are refused there.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import ControlPlane
from tests.support.operator import OperatorProcess, operator_process, wait_for  # noqa: F401
from tidal.api import LLMDeployment
from tidal.builders.engine import recommend_for_spec, resolve_engine
from tidal.builders.pods import ReplicaInputs, build_replica_pods
from tidal.devcluster import GPUNodeSpec

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def _restricted_namespace(cp: ControlPlane) -> str:
    ns = cp.create_namespace("psa")
    cp.core.patch_namespace(ns, {"metadata": {"labels": RESTRICTED}})
    cp.core.create_namespaced_secret(ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": "x"}})
    return ns


def _example(ns: str, tag: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"]["namespace"] = ns
    doc["spec"]["resources"]["nodeSelector"] = {"tidal-test": tag}
    return doc


def _pods(cp: ControlPlane, ns: str, name: str) -> list[Any]:
    return list(cp.core.list_namespaced_pod(ns, label_selector=f"tidal.dev/deployment={name}").items)


def test_worker_pod_is_admitted_and_runs_under_restricted(
    control_plane: ControlPlane,
    operator_process: OperatorProcess,  # noqa: F811
) -> None:
    cp = control_plane
    tag = uuid.uuid4().hex[:6]
    cp.create_gpu_nodes(1, GPUNodeSpec(gpus=8), prefix="psa", labels={"tidal-test": tag})
    ns = _restricted_namespace(cp)
    doc = _example(ns, tag)
    name = doc["metadata"]["name"]
    client.CustomObjectsApi(cp.api_client).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)

    pod = wait_for(
        lambda: next((p for p in _pods(cp, ns, name) if p.status.phase == "Running"), None),
        timeout=90,
        what="the worker pod Running in the restricted namespace",
    )
    spec = pod.spec
    sc = spec.containers[0].security_context
    assert sc.allow_privilege_escalation is False and sc.capabilities.drop == ["ALL"]
    assert sc.run_as_non_root is True and sc.run_as_user == 1000
    assert spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert spec.automount_service_account_token is False
    requests = spec.containers[0].resources.requests
    assert {"cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"} <= set(requests)
    cache = next(v for v in spec.volumes if v.name == "model-cache")
    assert cache.empty_dir is not None and cache.empty_dir.size_limit
    # No token volume was injected (the ServiceAccount admission honours automount false).
    assert not any(v.projected is not None for v in spec.volumes)


def _worker_pod(doc: dict[str, Any]) -> dict[str, Any]:
    """The builder's serving pod for ``doc``, ready for the typed client (quantities as strings)."""
    dep = LLMDeployment.model_validate(doc)
    inp = ReplicaInputs(dep, resolve_engine(dep.spec, recommend_for_spec(dep.spec, 1)))
    pod = build_replica_pods(inp, 0, "h")[0]
    pod["metadata"].pop("ownerReferences")
    for section in pod["spec"]["containers"][0]["resources"].values():
        section.update({k: str(v) for k, v in section.items()})
    return pod


def test_restricted_namespace_refuses_what_it_should(control_plane: ControlPlane) -> None:
    """The enforcement is real (so the test above can fail): a bare pod, and a worker pod with a hostPath
    cache, are refused with the offending fields named."""
    cp = control_plane
    ns = _restricted_namespace(cp)
    bare = {
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "vllm/vllm-openai:v0.32.0"}]},
    }
    with pytest.raises(ApiException) as refused:
        cp.core.create_namespaced_pod(ns, bare)
    assert refused.value.status == 403 and "restricted" in str(refused.value.body)
    assert "allowPrivilegeEscalation" in str(refused.value.body)

    doc = copy.deepcopy(_example(ns, "none"))
    doc["metadata"]["uid"] = "u"
    doc["spec"]["model"]["cache"] = {"hostPath": "/var/lib/tidal/models"}
    pod = _worker_pod(doc)
    with pytest.raises(ApiException) as host_path:
        cp.core.create_namespaced_pod(ns, pod)
    assert host_path.value.status == 403 and "hostPath" in str(host_path.value.body)
    # The same builder without the hostPath cache is admitted: only that field made the difference.
    del doc["spec"]["model"]["cache"]
    pod = _worker_pod(doc)
    cp.core.create_namespaced_pod(ns, pod)
