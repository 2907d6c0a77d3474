"""Worker pod defaults from tidal.builders.podparts through build_pod: security contexts, requests derived
from the model's checkpoint size, the size-limited or persistent model cache, HOME for a non-root user,
env valueFrom, and the termination grace derived from the drain settings (no constant)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from tests.support.malformed import VALID

from tidal.api import LLMDeployment
from tidal.builders import podparts
from tidal.builders.engine import checkpoint_bytes, recommend_for_spec, resolve_engine
from tidal.builders.pods import BuilderConfig, ReplicaInputs, build_replica_pods

pytestmark = pytest.mark.unit

GIB = 1024**3


def deployment(**spec: Any) -> LLMDeployment:
    d = copy.deepcopy(VALID)
    d["metadata"].update(namespace="ns", uid="u")
    for key, value in spec.items():
        d["spec"][key] = value
    return LLMDeployment.model_validate(d)


def pods(dep: LLMDeployment, config: BuilderConfig | None = None) -> list[dict[str, Any]]:
    inp = ReplicaInputs(
        dep, resolve_engine(dep.spec, recommend_for_spec(dep.spec, 1)), config or BuilderConfig()
    )
    return build_replica_pods(inp, 0, "h")


def test_default_security_contexts_pass_restricted() -> None:
    pod = pods(deployment())[0]
    c = pod["spec"]["containers"][0]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
    }
    assert pod["spec"]["securityContext"]["fsGroup"] == 1000
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod["spec"]
    # A non-root user gets a writable HOME (the vLLM image's /root is not).
    env = {e["name"]: e for e in c["env"]}
    assert env["HOME"]["value"] == podparts.HOME_DIR
    assert {"name": "home", "mountPath": podparts.HOME_DIR} in c["volumeMounts"]


def test_pod_security_is_configurable() -> None:
    dep = deployment(
        podSecurity={
            "runAsNonRoot": False,
            "runAsUser": 0,
            "addCapabilities": ["IPC_LOCK"],
            "automountServiceAccountToken": True,
            "serviceAccountName": "gpu-workers",
        }
    )
    pod = pods(dep)[0]
    c = pod["spec"]["containers"][0]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert c["securityContext"]["runAsUser"] == 0 and c["securityContext"]["runAsNonRoot"] is False
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert pod["spec"]["serviceAccountName"] == "gpu-workers"
    assert "HOME" not in {e["name"] for e in c["env"]}, "root keeps the image's HOME"


def test_requests_follow_the_checkpoint_size() -> None:
    dep = deployment()  # Llama-3.1-8B-Instruct, a catalogue model, one GPU
    weights = checkpoint_bytes(dep.spec.model)
    assert weights is not None and 14 * GIB < weights < 17 * GIB  # ~8.0 B params in bf16
    c = pods(dep)[0]["spec"]["containers"][0]
    req = c["resources"]["requests"]
    assert req["cpu"] == "4"  # 2 + 2 per GPU
    assert req["memory"] == f"{math.ceil(weights / GIB) + 4 + 2}Gi"
    limit = math.ceil(weights * 2 / GIB) + 5
    assert req["ephemeral-storage"] == f"{10 + limit}Gi"
    vols = {v["name"]: v for v in pods(dep)[0]["spec"]["volumes"]}
    assert vols["model-cache"]["emptyDir"] == {"sizeLimit": f"{limit}Gi"}


def test_multinode_pods_request_their_share_of_the_weights() -> None:
    dep = deployment(
        model={
            "uri": "pvc://w/405b",
            "architecture": {"catalogName": "Llama-3.1-405B", "quantization": "fbgemm_fp8"},
        },
        engine={"tensorParallelSize": 8, "pipelineParallelSize": 2},
    )
    weights = checkpoint_bytes(dep.spec.model)
    assert weights is not None and 370 * GIB < weights < 420 * GIB  # FP8: ~1 byte per parameter
    group = pods(dep)
    assert len(group) == 2
    for pod in group:
        req = pod["spec"]["containers"][0]["resources"]["requests"]
        assert req["memory"] == f"{math.ceil(weights / 2 / GIB) + 4 + 16}Gi"
        assert req["cpu"] == "18"
        assert req["ephemeral-storage"] == "10Gi", "a pvc:// model has no download cache"
        assert "model-cache" not in {v["name"] for v in pod["spec"]["volumes"]}


def test_unknown_model_gets_the_floor_and_an_unlimited_cache() -> None:
    dep = deployment(model={"uri": "hf://someone/private-model"})
    assert checkpoint_bytes(dep.spec.model) is None
    pod = pods(dep)[0]
    req = pod["spec"]["containers"][0]["resources"]["requests"]
    assert req["memory"] == f"{16 + 4 + 2}Gi" and req["ephemeral-storage"] == "10Gi"
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["model-cache"]["emptyDir"] == {}


def test_explicit_resources_and_cache_limit_win() -> None:
    dep = deployment(
        model={"uri": "hf://org/m", "cache": {"sizeLimit": "300Gi"}},
        resources={"gpuType": "H100-80GB", "cpu": "12", "memory": "100Gi", "ephemeralStorage": "50Gi"},
    )
    pod = pods(dep)[0]
    req = pod["spec"]["containers"][0]["resources"]["requests"]
    assert (req["cpu"], req["memory"], req["ephemeral-storage"]) == ("12", "100Gi", "50Gi")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["model-cache"]["emptyDir"] == {"sizeLimit": "300Gi"}


@pytest.mark.parametrize(
    ("cache", "volume"),
    [
        ({"persistentVolumeClaim": "hf-cache"}, {"persistentVolumeClaim": {"claimName": "hf-cache"}}),
        (
            {"hostPath": "/var/lib/tidal/models"},
            {"hostPath": {"path": "/var/lib/tidal/models", "type": "DirectoryOrCreate"}},
        ),
    ],
)
def test_persistent_caches_are_mounted_at_the_worker_cache_dir(
    cache: dict[str, Any], volume: dict[str, Any]
) -> None:
    dep = deployment(model={"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "cache": cache})
    pod = pods(dep)[0]
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["model-cache"] == {"name": "model-cache", **volume}
    c = pod["spec"]["containers"][0]
    assert {"name": "model-cache", "mountPath": BuilderConfig().model_cache_dir} in c["volumeMounts"]
    assert c["resources"]["requests"]["ephemeral-storage"] == "10Gi", "the cache is not ephemeral storage"


def test_env_value_from_reaches_the_container_and_reserved_names_stay_tidals() -> None:
    ref = {"secretKeyRef": {"name": "keys", "key": "api"}}
    dep = deployment(
        engine={"env": [{"name": "MY_KEY", "valueFrom": ref}, {"name": "TIDAL_ROLE", "value": "x"}]}
    )
    env = pods(dep)[0]["spec"]["containers"][0]["env"]
    assert {"name": "MY_KEY", "valueFrom": ref} in env
    assert [e["value"] for e in env if e["name"] == "TIDAL_ROLE"] == ["single"]


@pytest.mark.parametrize("drain", [30.0, 120.0, 600.0])
def test_grace_period_follows_the_drain_setting(drain: float) -> None:
    cfg = BuilderConfig(drain_grace_seconds=drain, engine_stop_timeout_seconds=10.0, pre_stop_sleep_seconds=5)
    single = pods(deployment(), cfg)[0]
    assert single["spec"]["terminationGracePeriodSeconds"] == math.ceil(drain + 10 + 5) + 5
    dep = deployment(
        model={"uri": "pvc://w/405b", "architecture": {"catalogName": "Llama-3.1-405B"}},
        engine={"tensorParallelSize": 8, "pipelineParallelSize": 2},
    )
    head, worker = pods(dep, cfg)
    assert head["spec"]["terminationGracePeriodSeconds"] == math.ceil(drain + 10 + 5) + 5
    # A Ray worker does not drain (its worker gets no drain setting): the contract's floor for its role.
    assert worker["spec"]["terminationGracePeriodSeconds"] == 30 + 10 + 5
