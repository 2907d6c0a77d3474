"""Fake GPU nodes for the development cluster.

KWOK plays the kubelet of every node carrying the `kwok.x-k8s.io/node: fake` annotation: it marks the node
Ready, keeps its heartbeat, and runs the pods bound to it (no containers). Capacity is whatever the Node
object says, so a node created here with `nvidia.com/gpu: 8` lets the real scheduler place GPU pods exactly
as it would on a GPU node, and leave the rest Pending with "Insufficient nvidia.com/gpu".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# Memory per GPU in MiB as NVIDIA GPU feature discovery labels it (nvidia.com/gpu.memory).
GPU_MEMORY_MIB: dict[str, int] = {
    "NVIDIA-H100-80GB-HBM3": 81559,
    "NVIDIA-H200": 143771,
    "NVIDIA-A100-SXM4-80GB": 81920,
    "NVIDIA-A100-SXM4-40GB": 40960,
    "NVIDIA-L40S": 46068,
    "NVIDIA-L4": 23034,
}


@dataclass(frozen=True)
class GPUNodeSpec:
    """Shape of one fake GPU node."""

    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    """Value of the `nvidia.com/gpu.product` label (GPU feature discovery spelling)."""
    gpus: int = 8
    """`nvidia.com/gpu` capacity and allocatable."""
    cpu: str = "96"
    """CPU capacity (Kubernetes quantity)."""
    memory: str = "1Ti"
    """Memory capacity (Kubernetes quantity)."""
    pods: int = 110
    """Pod capacity."""
    extra_labels: tuple[tuple[str, str], ...] = ()
    """Additional node labels, e.g. a zone."""


def gpu_node_manifest(name: str, spec: GPUNodeSpec) -> dict[str, Any]:
    """The Node object for a KWOK-managed fake GPU node called `name`."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        GPU_PRODUCT_LABEL: spec.gpu_product,
        "nvidia.com/gpu.count": str(spec.gpus),
        "nvidia.com/gpu.present": "true",
    }
    memory_mib = GPU_MEMORY_MIB.get(spec.gpu_product)
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    labels.update(dict(spec.extra_labels))
    resources = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "pods": str(spec.pods),
        # A DGX H100's local NVMe (8 x 3.84 TB): worker pods request their size-limited model cache.
        "ephemeral-storage": "28Ti",
        GPU_RESOURCE: str(spec.gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": dict(resources),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "kwok",
                "kernelVersion": "",
                "osImage": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }
