"""Worker pods of one replica: a single pod when TP x PP fits a node, else a Ray group (a head plus workers
on distinct nodes) that is created, restarted and deleted as one unit.

Each pod requests ``nvidia.com/gpu`` for its share of the replica, gets a memory-backed ``/dev/shm`` (NCCL),
a model volume (the claim of a ``pvc://`` model, or a node-local cache for downloads), the Hugging Face token
through a ``secretKeyRef`` (the operator never reads Secrets), probes from the worker contract (a startup
probe that tolerates long model loads), a preStop pause plus a termination grace period long enough for the
worker's drain, node placement by GPU product label, GPU tolerations, and spreading across nodes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from tidal.api import LLMDeployment
from tidal.builders import podparts
from tidal.builders.contract import DEFAULT_PORT, DEFAULT_PVC_ROOT, WorkerEnvInput, worker_env
from tidal.builders.engine import EffectiveEngine, ReplicaShape, replica_shape
from tidal.builders.gpus import GPU_PRODUCT_LABEL, GPU_RESOURCE, product_labels
from tidal.builders.names import (
    COMPONENT_LABEL,
    DEPLOYMENT_LABEL,
    GROUP_SIZE_LABEL,
    MEMBER_LABEL,
    REPLICA_LABEL,
    ROLE_LABEL,
    ROLE_RAY_HEAD,
    ROLE_RAY_WORKER,
    ROLE_SINGLE,
    SERVING_LABEL,
    SPEC_HASH_LABEL,
    deployment_labels,
    deployment_selector,
    group_service_name,
    label_value,
    pod_name,
)
from tidal.builders.workercode import WorkerCode, code_mount

CONTAINER = "worker"
PORT_NAME = "http"
RAY_GCS_PORT = 6379


@dataclass(frozen=True)
class BuilderConfig:
    """Operator-wide defaults of the pods (not per-deployment API fields)."""

    drain_grace_seconds: float = 120.0
    """How long in-flight requests may finish after SIGTERM (TIDAL_DRAIN_GRACE_SECONDS)."""
    engine_stop_timeout_seconds: float = 10.0
    pre_stop_sleep_seconds: int = 5
    """preStop pause before SIGTERM so endpoints stop routing to the pod before it refuses requests."""
    startup_timeout_seconds: float = 1800.0
    """Single-node replicas: time to download and load the model."""
    multinode_startup_timeout_seconds: float = 3600.0
    """Ray groups: larger models, plus the group join."""
    ray_join_timeout_seconds: float = 900.0
    model_cache_dir: str = "/cache/models"
    startup_probe_period_seconds: int = 10
    device: str = "cuda"
    worker_code: WorkerCode | None = None
    """The worker's code the pods mount from the deployment's ConfigMap (``tidal run`` loads it from the
    installed package); ``None``: the image must already contain ``tidal_worker``."""


@dataclass(frozen=True)
class ReplicaInputs:
    """Everything pod building needs besides the replica index."""

    deployment: LLMDeployment
    engine: EffectiveEngine
    config: BuilderConfig = BuilderConfig()

    @property
    def name(self) -> str:
        return self.deployment.metadata.name or ""

    @property
    def namespace(self) -> str:
        return self.deployment.metadata.namespace or "default"

    @property
    def shape(self) -> ReplicaShape:
        return replica_shape(self.engine.world_size, self.deployment.spec.resources.gpus_per_node)


def owner_reference(deployment: LLMDeployment) -> dict[str, Any]:
    """The controller reference that makes the garbage collector delete a child with its deployment."""
    return {
        "apiVersion": deployment.api_version,
        "kind": deployment.kind,
        "name": deployment.metadata.name,
        "uid": deployment.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _role(shape: ReplicaShape, member: int) -> str:
    if not shape.multi_node:
        return ROLE_SINGLE
    return ROLE_RAY_HEAD if member == 0 else ROLE_RAY_WORKER


def _volumes(inp: ReplicaInputs) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = inp.deployment.spec
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.resources.shm_size)}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    uri = spec.model.uri
    if not podparts.uses_download_cache(inp.deployment):
        claim = uri[len("pvc://") :].split("/", 1)[0]
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": f"{DEFAULT_PVC_ROOT}/{claim}", "readOnly": True})
    else:
        # The download cache: a size-limited emptyDir (lives as long as the pod; a container restart keeps
        # it), or spec.model.cache's PVC or hostPath, which outlive the pod.
        volumes.append(podparts.cache_volume(inp.deployment))
        mounts.append({"name": "model-cache", "mountPath": inp.config.model_cache_dir})
    if podparts.needs_home(inp.deployment):
        volumes.append({"name": "home", "emptyDir": {}})
        mounts.append({"name": "home", "mountPath": podparts.HOME_DIR})
    return volumes, mounts


def _contract_input(inp: ReplicaInputs, role: str, replica: int) -> WorkerEnvInput:
    spec = inp.deployment.spec
    shape = inp.shape
    cfg = inp.config
    head = ""
    if shape.multi_node:
        head = f"{group_service_name(inp.name, replica)}.{inp.namespace}.svc"
    return WorkerEnvInput(
        role=role,
        model_uri=spec.model.uri,
        served_model_name=spec.model.effective_served_model_name,
        engine=inp.engine,
        expected_gpus=shape.world_size,
        group_size=shape.group_size,
        ray_head_address=head,
        model_cache_dir=cfg.model_cache_dir,
        drain_grace_seconds=cfg.drain_grace_seconds,
        engine_stop_timeout_seconds=cfg.engine_stop_timeout_seconds,
        startup_timeout_seconds=(
            cfg.multinode_startup_timeout_seconds if shape.multi_node else cfg.startup_timeout_seconds
        ),
        ray_join_timeout_seconds=cfg.ray_join_timeout_seconds,
        device=cfg.device,
    )


def _env(inp: ReplicaInputs, contract_input: WorkerEnvInput) -> list[dict[str, Any]]:
    spec = inp.deployment.spec
    contract = worker_env(contract_input)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in contract.items()]
    ref = spec.model.token_secret_ref
    if ref is not None and spec.model.uri.startswith("hf://"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if podparts.needs_home(inp.deployment):
        env.append({"name": "HOME", "value": podparts.HOME_DIR})
    reserved = {e["name"] for e in env}
    env.extend(v.to_k8s() for v in spec.engine.env if v.name not in reserved)
    return env


def _probes(inp: ReplicaInputs) -> dict[str, Any]:
    cfg = inp.config
    timeout = cfg.multinode_startup_timeout_seconds if inp.shape.multi_node else cfg.startup_timeout_seconds
    period = cfg.startup_probe_period_seconds
    return {
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": 5,
            # The worker itself exits after its startup timeout; the probe only has to outlast it.
            "failureThreshold": math.ceil(timeout / period) + 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }


def _affinity(inp: ReplicaInputs, replica: int) -> dict[str, Any]:
    spec = inp.deployment.spec
    node_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {
                            "key": GPU_PRODUCT_LABEL,
                            "operator": "In",
                            "values": list(product_labels(spec.resources.gpu_type)),
                        }
                    ]
                }
            ]
        }
    }
    spread = {
        "weight": 100,
        "podAffinityTerm": {
            "labelSelector": {"matchLabels": deployment_selector(inp.name)},
            "topologyKey": "kubernetes.io/hostname",
        },
    }
    anti: dict[str, Any] = {"preferredDuringSchedulingIgnoredDuringExecution": [spread]}
    if inp.shape.multi_node:
        # Members of one Ray group must sit on distinct nodes: each holds a whole node's share of GPUs.
        anti["requiredDuringSchedulingIgnoredDuringExecution"] = [
            {
                "labelSelector": {
                    "matchLabels": {
                        DEPLOYMENT_LABEL: label_value(inp.name),
                        REPLICA_LABEL: str(replica),
                    }
                },
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    return {"nodeAffinity": node_affinity, "podAntiAffinity": anti}


def _tolerations(inp: ReplicaInputs) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    for t in inp.deployment.spec.resources.tolerations:
        item = t.to_dict()
        if item not in out:
            out.append(item)
    return out


def build_pod(inp: ReplicaInputs, replica: int, member: int, spec_hash: str) -> dict[str, Any]:
    """One worker pod: member ``member`` (0 = the serving pod) of replica ``replica``."""
    spec = inp.deployment.spec
    shape = inp.shape
    role = _role(shape, member)
    serving = role != ROLE_RAY_WORKER
    labels = {
        **deployment_labels(inp.name),
        COMPONENT_LABEL: "worker",
        REPLICA_LABEL: str(replica),
        MEMBER_LABEL: str(member),
        GROUP_SIZE_LABEL: str(shape.group_size),
        ROLE_LABEL: role,
        SPEC_HASH_LABEL: spec_hash,
        SERVING_LABEL: "true" if serving else "false",
    }
    volumes, mounts = _volumes(inp)
    requests: dict[str, Any] = {
        GPU_RESOURCE: shape.gpus_per_pod,
        **podparts.requests(inp.deployment, shape.gpus_per_pod, shape.group_size),
    }
    contract_input = _contract_input(inp, role, replica)
    ports: list[dict[str, Any]] = [{"name": PORT_NAME, "containerPort": DEFAULT_PORT, "protocol": "TCP"}]
    if role == ROLE_RAY_HEAD:
        ports.append({"name": "ray-gcs", "containerPort": RAY_GCS_PORT, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.engine.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "tidal_worker"],
        "env": _env(inp, contract_input),
        "ports": ports,
        "resources": {"requests": requests, "limits": {GPU_RESOURCE: shape.gpus_per_pod}},
        "volumeMounts": mounts,
        "securityContext": podparts.container_security_context(inp.deployment),
    }
    cfg = inp.config
    if serving:
        container.update(_probes(inp))
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": cfg.pre_stop_sleep_seconds}}}
    # The contract's floor (drain + engine stop + 5 s; a Ray worker does not drain) plus the preStop pause.
    grace = contract_input.min_termination_grace_seconds + (cfg.pre_stop_sleep_seconds if serving else 0)
    annotations = (
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(DEFAULT_PORT),
            "prometheus.io/path": "/metrics",
        }
        if serving
        else {}
    )
    _add_worker_code(inp, container, volumes, annotations)
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": grace,
        "enableServiceLinks": False,
        **podparts.pod_security_fields(inp.deployment),
        "affinity": _affinity(inp, replica),
        "tolerations": _tolerations(inp),
    }
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.resources.node_selector.items()))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(inp.name, replica, member, shape.group_size),
            "namespace": inp.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(inp.deployment)],
        },
        "spec": pod_spec,
    }


def _add_worker_code(
    inp: ReplicaInputs, container: dict[str, Any], volumes: list[dict[str, Any]], annotations: dict[str, str]
) -> None:
    """Mount the worker's code from the namespace's ConfigMap of that code, first on PYTHONPATH (a
    ``PYTHONPATH`` from ``spec.engine.env`` follows it); its hash annotation puts the code in the spec
    hash."""
    code = inp.config.worker_code
    if code is None:
        return
    parts = code_mount(code)
    volumes.append(parts.volume)
    container["volumeMounts"].append(parts.mount)
    env: list[dict[str, Any]] = container["env"]
    user = next((e.get("value") for e in env if e["name"] == "PYTHONPATH"), None)
    container["env"] = [*(e for e in env if e["name"] != "PYTHONPATH"), parts.env(user)]
    annotations.update(parts.annotations)


def build_replica_pods(inp: ReplicaInputs, replica: int, spec_hash: str) -> list[dict[str, Any]]:
    """Every pod of one replica, head first."""
    return [build_pod(inp, replica, m, spec_hash) for m in range(inp.shape.group_size)]


def compute_spec_hash(inp: ReplicaInputs) -> str:
    """Hash of everything that shapes a replica's pods (a template replica with the hash label left out):
    any change to it rolls the replicas; ``spec.replicas`` and the autoscaling settings do not."""
    template = build_replica_pods(inp, 0, "")
    for pod in template:
        del pod["metadata"]["labels"][SPEC_HASH_LABEL]
        del pod["metadata"]["ownerReferences"]
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]
