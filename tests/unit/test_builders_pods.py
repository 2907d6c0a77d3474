"""Builders: each example's pods (GPU requests, placement, shm, probes, drain), the multi-node group shape,
the Services and PodDisruptionBudget, the spec hash, and the worker env contract against the golden files
that the worker tests too (tests/golden/worker-contract-*.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import LLMDeployment
from tidal.builders.contract import WorkerEnvInput, worker_env
from tidal.builders.engine import EffectiveEngine, recommend_for_spec, replica_shape, resolve_engine
from tidal.builders.gpus import product_labels
from tidal.builders.names import dns_label, label_value, pod_name
from tidal.builders.pods import ReplicaInputs, build_replica_pods, compute_spec_hash
from tidal.builders.services import build_api_service, build_group_service, build_pdb

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/*.yaml"))
GOLDEN = {
    p.stem: json.loads(p.read_text()) for p in (ROOT / "tests" / "golden").glob("worker-contract-*.json")
}

pytestmark = pytest.mark.unit


def load(path: Path, **spec_overrides: Any) -> LLMDeployment:
    doc = yaml.safe_load(path.read_text())
    doc["metadata"].update(namespace="serving", uid="uid-1", generation=1)
    doc["spec"].update(spec_overrides)
    return LLMDeployment.model_validate(doc)


def inputs(dep: LLMDeployment) -> ReplicaInputs:
    return ReplicaInputs(dep, resolve_engine(dep.spec, recommend_for_spec(dep.spec, 1)))


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_pods(path: Path) -> None:
    dep = load(path)
    inp = inputs(dep)
    pods = build_replica_pods(inp, 0, "abc")
    spec = dep.spec
    world = inp.engine.world_size
    assert world == spec.gpus_per_replica
    per_pod = world // len(pods)
    for member, pod in enumerate(pods):
        c = pod["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == per_pod
        assert c["resources"]["requests"]["nvidia.com/gpu"] == per_pod
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": spec.resources.shm_size}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        expr = terms["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert expr["key"] == "nvidia.com/gpu.product" and "NVIDIA-H100-80GB-HBM3" in expr["values"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
            "tolerations"
        ]
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tidal-worker"
        assert labels["app.kubernetes.io/instance"] == dep.metadata.name
        assert labels["tidal.dev/deployment"] == dep.metadata.name
        assert labels["tidal.dev/replica"] == "0" and labels["tidal.dev/spec-hash"] == "abc"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert pod["metadata"]["ownerReferences"][0]["controller"] is True
        env = env_of(pod)
        assert env["TIDAL_MODEL_URI"] == spec.model.uri
        assert env["TIDAL_EXPECTED_GPUS"] == str(world)
        if member == 0:
            # Serving pod: probes from the contract, startup probe outlasting the worker's startup timeout.
            assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
            assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
            sp = c["startupProbe"]
            timeout = float(env.get("TIDAL_STARTUP_TIMEOUT_SECONDS", 1800))
            assert sp["periodSeconds"] * sp["failureThreshold"] > timeout
            assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
            grace = float(env["TIDAL_DRAIN_GRACE_SECONDS"]) + 10 + 5
            assert (
                pod["spec"]["terminationGracePeriodSeconds"]
                >= grace + c["lifecycle"]["preStop"]["sleep"]["seconds"]
            )
            assert labels["tidal.dev/serving"] == "true"
        else:
            assert "readinessProbe" not in c and "startupProbe" not in c
            assert labels["tidal.dev/serving"] == "false"
        if spec.model.token_secret_ref is not None:
            ref = env["HF_TOKEN"]["secretKeyRef"]
            assert ref == {"name": spec.model.token_secret_ref.name, "key": spec.model.token_secret_ref.key}
        if spec.model.uri.startswith("pvc://"):
            claim = spec.model.uri[6:].split("/")[0]
            assert vols["model"]["persistentVolumeClaim"]["claimName"] == claim
            assert {"name": "model", "mountPath": f"/models/{claim}", "readOnly": True} in c["volumeMounts"]
        elif spec.model.cache.persistent_volume_claim is not None:
            claim_ref = vols["model-cache"]["persistentVolumeClaim"]
            assert claim_ref == {"claimName": spec.model.cache.persistent_volume_claim}
        else:
            assert "sizeLimit" in vols["model-cache"]["emptyDir"], "catalogue models get a size-limited cache"
        # Pod Security restricted: every example's pods pass it by default.
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert {"cpu", "memory", "ephemeral-storage"} <= set(c["resources"]["requests"])


def test_single_node_example_is_one_pod_with_tp_gpus() -> None:
    dep = load(ROOT / "examples" / "llama-3.3-70b-fp8-tp2.yaml")
    pods = build_replica_pods(inputs(dep), 3, "h")
    assert [p["metadata"]["name"] for p in pods] == ["llama-3-3-70b-fp8-r3"]
    env = env_of(pods[0])
    assert env["TIDAL_ROLE"] == "single" and env["TIDAL_TP"] == "2"
    assert env["TIDAL_QUANTIZATION"] == "fp8" and env["TIDAL_KV_CACHE_DTYPE"] == "fp8"
    anti = pods[0]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti  # replicas only prefer to spread
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname"
    )


def test_multinode_group_shape() -> None:
    dep = load(ROOT / "examples" / "llama-3.1-405b-multinode.yaml")
    inp = inputs(dep)
    pods = build_replica_pods(inp, 1, "h")
    assert [p["metadata"]["name"] for p in pods] == ["llama-3-1-405b-r1-0", "llama-3-1-405b-r1-1"]
    head, worker = (env_of(p) for p in pods)
    assert head["TIDAL_ROLE"] == "ray-head" and worker["TIDAL_ROLE"] == "ray-worker"
    assert head["TIDAL_GROUP_SIZE"] == worker["TIDAL_GROUP_SIZE"] == "2"
    assert (
        head["TIDAL_RAY_HEAD_ADDRESS"]
        == worker["TIDAL_RAY_HEAD_ADDRESS"]
        == "llama-3-1-405b-r1-head.serving.svc"
    )
    assert "TIDAL_MAX_MODEL_LEN" in head and "TIDAL_MAX_MODEL_LEN" not in worker
    for pod in pods:
        req = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert req[0]["labelSelector"]["matchLabels"] == {
            "tidal.dev/deployment": "llama-3-1-405b",
            "tidal.dev/replica": "1",
        }
        assert req[0]["topologyKey"] == "kubernetes.io/hostname"
        assert pod["metadata"]["labels"]["tidal.dev/group-size"] == "2"
    assert pods[0]["spec"]["containers"][0]["ports"][1]["containerPort"] == 6379
    svc = build_group_service(dep, 1)
    assert svc["metadata"]["name"] == "llama-3-1-405b-r1-head"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"]["tidal.dev/role"] == "ray-head"
    assert svc["spec"]["selector"]["tidal.dev/replica"] == "1"
    # A worker on a pod with a ray-head label set would not match; the selector is exact.
    assert pods[0]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
    assert not pods[1]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()


def test_api_service_and_pdb() -> None:
    dep = load(ROOT / "examples" / "llama-3.1-8b.yaml")
    svc = build_api_service(dep)
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8000, "metrics": 9090}
    pod = build_replica_pods(inputs(dep), 0, "h")[0]
    assert pod["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
    assert build_pdb(dep, 1, 1)["spec"]["minAvailable"] == 0
    assert build_pdb(dep, 3, 1)["spec"]["minAvailable"] == 2
    assert build_pdb(dep, 3, 2)["spec"]["minAvailable"] == 4
    assert (
        pod["metadata"]["labels"].items() >= build_pdb(dep, 3, 1)["spec"]["selector"]["matchLabels"].items()
    )


def test_spec_hash_tracks_pod_shape_not_replicas() -> None:
    path = ROOT / "examples" / "llama-3.1-8b.yaml"
    base = compute_spec_hash(inputs(load(path)))
    assert base == compute_spec_hash(inputs(load(path)))
    assert base == compute_spec_hash(inputs(load(path, replicas=3, maxReplicas=4)))
    changed = load(path)
    changed.spec.engine.max_model_len = 4096
    assert compute_spec_hash(inputs(changed)) != base


def test_apply_mode_feeds_recommendation_into_pods_and_advise_does_not() -> None:
    path = ROOT / "examples" / "llama-3.1-8b.yaml"
    applied = load(path)
    assert applied.spec.recommendation.mode == "Apply"
    env = env_of(build_replica_pods(inputs(applied), 0, "h")[0])
    rec = recommend_for_spec(applied.spec, 1)
    assert rec is not None and rec.status.applied
    assert env["TIDAL_MAX_NUM_SEQS"] == str(rec.status.values.max_num_seqs)
    advised = load(path, recommendation={"mode": "Advise"})
    env = env_of(build_replica_pods(inputs(advised), 0, "h")[0])
    assert "TIDAL_MAX_NUM_SEQS" not in env  # left to vLLM
    assert compute_spec_hash(inputs(applied)) != compute_spec_hash(inputs(advised))
    # Explicit values always win, and the difference is reported.
    assert env["TIDAL_MAX_MODEL_LEN"] == "8192"
    assert any("maxModelLen" in d for d in rec.status.differences)


def test_auto_parallelism_in_apply_mode_uses_recommended_tp() -> None:
    path = ROOT / "examples" / "llama-3.3-70b-fp8-tp2.yaml"
    dep = load(path, recommendation={"mode": "Apply"})
    dep.spec.engine.tensor_parallel_size = "auto"
    dep.spec.engine.pipeline_parallel_size = "auto"
    inp = inputs(dep)
    rec = recommend_for_spec(dep.spec, 1)
    assert rec is not None and rec.status.values.tensor_parallel_size == inp.engine.tensor_parallel_size
    assert "tensor_parallel_size" in inp.engine.applied


def test_replica_shape() -> None:
    assert replica_shape(2, 8) == replica_shape(2, 8)
    assert (replica_shape(2, 8).group_size, replica_shape(2, 8).gpus_per_pod) == (1, 2)
    assert (replica_shape(16, 8).group_size, replica_shape(16, 8).gpus_per_pod) == (2, 8)
    assert (replica_shape(32, 8).group_size, replica_shape(32, 8).gpus_per_pod) == (4, 8)
    assert (replica_shape(12, 8).group_size, replica_shape(12, 8).gpus_per_pod) == (2, 6)


def test_names_are_valid() -> None:
    long = "a" * 80
    assert len(label_value(long)) <= 63 and label_value("short") == "short"
    assert len(dns_label(long, "-r12-head")) <= 63 and dns_label(long, "-r12-head").endswith("-r12-head")
    assert dns_label("1.bad.name")[0].isalpha() and "." not in dns_label("1.bad.name")
    assert dns_label("fine") == "fine"
    assert pod_name("x", 2, 0, 1) == "x-r2" and pod_name("x", 2, 1, 2) == "x-r2-1"
    assert product_labels("h100-80gb") == product_labels("H100-80GB")
    assert product_labels("MyCustomGPU") == ("MyCustomGPU",)


# ------------------------------------------------------------------------------- golden worker contract


def _engine_from_contract(c: dict[str, Any]) -> EffectiveEngine:
    return EffectiveEngine(
        tensor_parallel_size=c["tensor_parallel_size"],
        pipeline_parallel_size=c["pipeline_parallel_size"],
        gpu_memory_utilization=c["gpu_memory_utilization"],
        max_num_seqs=c["max_num_seqs"],
        max_model_len=c["max_model_len"],
        max_num_batched_tokens=c["max_num_batched_tokens"],
        dtype=c["dtype"],
        quantization=c["quantization"],
        kv_cache_dtype=c["kv_cache_dtype"],
        enable_prefix_caching=c["enable_prefix_caching"],
        extra_args=tuple(c["extra_args"]),
    )


@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_worker_env_matches_golden(stem: str) -> None:
    golden = GOLDEN[stem]
    c = golden["contract"]
    head = GOLDEN["worker-contract-ray-head"]["contract"]
    engine = _engine_from_contract(head if c["role"] == "ray-worker" else c)
    env = worker_env(
        WorkerEnvInput(
            role=c["role"],
            model_uri=c["model_uri"],
            served_model_name=c["served_model_name"],
            engine=engine,
            expected_gpus=c["expected_gpus"],
            group_size=c["group_size"],
            ray_head_address=c["ray_head_address"],
            model_cache_dir=c["model_cache_dir"],
            pvc_root=c["pvc_root"],
            drain_grace_seconds=head["drain_grace_seconds"]
            if c["role"] == "ray-worker"
            else c["drain_grace_seconds"],
            engine_stop_timeout_seconds=c["engine_stop_timeout_seconds"],
            startup_timeout_seconds=(
                head["startup_timeout_seconds"] if c["role"] == "ray-worker" else c["startup_timeout_seconds"]
            ),
            ray_join_timeout_seconds=c["ray_join_timeout_seconds"],
        )
    )
    assert env == golden["env"]
    grace = WorkerEnvInput(
        role=c["role"],
        model_uri="",
        served_model_name="",
        engine=engine,
        expected_gpus=1,
        drain_grace_seconds=c["drain_grace_seconds"],
    ).min_termination_grace_seconds
    assert grace == golden["pod"]["min_termination_grace_period_seconds"]


def test_builder_pods_carry_the_golden_env_shape() -> None:
    """The pod builder writes exactly what worker_env renders, plus HF_TOKEN by reference and user env."""
    dep = load(ROOT / "examples" / "llama-3.1-405b-multinode.yaml")
    inp = inputs(dep)
    pods = build_replica_pods(inp, 0, "h")
    for pod in pods:
        tidal = {k: v for k, v in env_of(pod).items() if k.startswith("TIDAL_")}
        assert set(tidal) <= set().union(*(g["env"] for g in GOLDEN.values())) | {
            "TIDAL_STARTUP_TIMEOUT_SECONDS"
        }
    assert env_of(pods[0])["NCCL_DEBUG"] == "WARN"
