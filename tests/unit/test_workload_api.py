"""The pod-facing API rules (tidal.api.workload and the spec rules beside them), on the models: minReplicas 0
with autoscaling, extraArgs that set managed flags, EnvVar.valueFrom, the model cache, podSecurity and a
quantization that conflicts with the checkpoint's. The same documents go to the real API server through
tests/support/malformed.py (tests/controlplane/test_crd.py).

The managed-flag list is checked against the worker's own argv builder: every flag ``build_vllm_argv`` emits
for a contract the operator writes (all engine fields set, prefix caching on and off) must be in
``MANAGED_ENGINE_FLAGS``, so a flag added to the builder cannot be left out of the admission rule.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError
from tests.support.malformed import VALID

from tidal.api import MANAGED_ENGINE_FLAGS, LLMDeployment, managed_flags_in
from tidal.builders.contract import WorkerEnvInput, worker_env
from tidal.builders.engine import EffectiveEngine, resolve_engine
from tidal.builders.names import ROLE_RAY_HEAD
from tidal_worker.contract import WorkerContract
from tidal_worker.engine_args import build_vllm_argv

pytestmark = pytest.mark.unit


def doc(**spec: Any) -> dict[str, Any]:
    d = copy.deepcopy(VALID)
    for key, value in spec.items():
        d["spec"][key] = value
    return d


def rejected(d: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        LLMDeployment.model_validate(d)
    return str(err.value)


def test_min_replicas_zero_with_autoscaling_is_refused_with_the_reason() -> None:
    msg = rejected(doc(minReplicas=0, autoscaling={"enabled": True}))
    assert "spec.minReplicas must be at least 1" in msg and "nothing holds requests" in msg
    # Without autoscaling, scaling to zero by hand stays possible.
    ok = LLMDeployment.model_validate(doc(minReplicas=0, replicas=0, autoscaling={"enabled": False}))
    assert ok.spec.replicas == 0


def _flags_the_worker_emits(prefix_caching: bool) -> set[str]:
    engine = EffectiveEngine(
        tensor_parallel_size=8,
        pipeline_parallel_size=2,
        gpu_memory_utilization=0.9,
        max_num_seqs=64,
        max_model_len=8192,
        max_num_batched_tokens=4096,
        dtype="bfloat16",
        quantization="fp8",
        kv_cache_dtype="fp8",
        enable_prefix_caching=prefix_caching,
        extra_args=("--sentinel",),
    )
    env = worker_env(
        WorkerEnvInput(
            role=ROLE_RAY_HEAD,
            model_uri="hf://org/m",
            served_model_name="m",
            engine=engine,
            expected_gpus=16,
            group_size=2,
            ray_head_address="head.ns.svc",
        )
    )
    argv = build_vllm_argv(WorkerContract.from_env(env), "/models/m")
    assert argv[1:3] == ("-m", "vllm.entrypoints.openai.api_server")
    managed_part = argv[3 : argv.index("--sentinel")]
    return {a for a in managed_part if a.startswith("-")}


def test_managed_flags_cover_everything_the_worker_builder_sets() -> None:
    emitted = _flags_the_worker_emits(True) | _flags_the_worker_emits(False)
    assert "--port" in emitted and "--tensor-parallel-size" in emitted  # the derivation sees real flags
    missing = emitted - set(MANAGED_ENGINE_FLAGS)
    assert not missing, f"the worker sets {sorted(missing)}; add them to MANAGED_ENGINE_FLAGS"
    # The operator's own managed flag (from speculativeDecoding) is in the list too.
    spec = LLMDeployment.model_validate(
        doc(engine={"speculativeDecoding": {"method": "ngram"}})
    ).spec  # fmt: skip
    assert resolve_engine(spec, None).extra_args[0] in MANAGED_ENGINE_FLAGS


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--port", "9000"], "--port"),
        (["--enforce-eager", "--tensor-parallel-size=4"], "--tensor-parallel-size=4"),
        (["--tensor_parallel_size", "4"], "--tensor_parallel_size"),
        (["-tp", "2"], "-tp"),
        (["--model=other"], "--model=other"),
        (["--served-model-name", "x"], "--served-model-name"),
        (["--host", "127.0.0.1"], "--host"),
        (["--quantization", "awq"], "--quantization"),
    ],
)
def test_extra_args_that_set_a_managed_flag_are_refused_naming_it(args: list[str], flag: str) -> None:
    msg = rejected(doc(engine={"extraArgs": args}))
    assert f"spec.engine.extraArgs sets {flag}," in msg


def test_unmanaged_extra_args_are_accepted() -> None:
    args = ["--enforce-eager", "--trust-remote-code", "--max-logprobs", "5", "--portfolio", "x"]
    dep = LLMDeployment.model_validate(doc(engine={"extraArgs": args}))
    assert list(dep.spec.engine.extra_args) == args
    assert managed_flags_in(args) == []


def test_env_value_from_secret_and_exclusivity() -> None:
    secret = {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}
    dep = LLMDeployment.model_validate(
        doc(engine={"env": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": secret}]})
    )
    assert dep.spec.engine.env[0].to_k8s() == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": secret}
    msg = rejected(doc(engine={"env": [{"name": "X", "value": "v", "valueFrom": secret}]}))
    assert "value and spec.engine.env[].valueFrom are mutually exclusive" in msg
    both = {**secret, "configMapKeyRef": {"name": "c", "key": "k"}}
    assert "exactly one of" in rejected(doc(engine={"env": [{"name": "X", "valueFrom": both}]}))
    assert "exactly one of" in rejected(doc(engine={"env": [{"name": "X", "valueFrom": {}}]}))


def test_model_cache_rules() -> None:
    model = {"uri": "hf://org/m", "cache": {"persistentVolumeClaim": "c", "hostPath": "/var/cache"}}
    assert "mutually exclusive" in rejected(doc(model=model))
    pvc_model = {"uri": "pvc://weights/m", "cache": {"hostPath": "/var/cache"}}
    assert "spec.model.cache is only used with hf://" in rejected(doc(model=pvc_model))
    assert "hostPath" in rejected(doc(model={"uri": "hf://org/m", "cache": {"hostPath": "relative"}}))


def test_pod_security_rules() -> None:
    msg = rejected(doc(podSecurity={"runAsUser": 0}))
    assert "spec.podSecurity.runAsUser must not be 0" in msg
    root = LLMDeployment.model_validate(doc(podSecurity={"runAsNonRoot": False, "runAsUser": 0}))
    assert root.spec.pod_security.run_as_user == 0
    assert "addCapabilities" in rejected(doc(podSecurity={"addCapabilities": ["ipc_lock"]}))


def test_quantization_that_conflicts_with_the_checkpoint_is_refused() -> None:
    model = {
        "uri": "pvc://w/405b",
        "architecture": {"catalogName": "Llama-3.1-405B", "quantization": "fbgemm_fp8"},
    }
    msg = rejected(doc(model=model, engine={"quantization": "fp8"}))
    assert "spec.engine.quantization conflicts" in msg
    ok = LLMDeployment.model_validate(doc(model=model))
    assert ok.spec.engine.quantization == "none"
