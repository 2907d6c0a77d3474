"""The real scheduler places GPU pods on KWOK fake GPU nodes by `nvidia.com/gpu` capacity.

Two nodes of 8 GPUs fit four pods asking for 4 GPUs each; the fifth stays Pending and the scheduler says
why ("Insufficient nvidia.com/gpu"). This is the behaviour the operator's capacity handling relies on.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

from tests.support.cluster import ControlPlane
from tidal.devcluster import GPU_PRODUCT_LABEL, GPUNodeSpec


def _deployment(name: str, pool: str, replicas: int, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"tidal.dev/test-pool": pool},
                    "containers": [
                        {
                            "name": "worker",
                            "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def test_gpu_capacity_binds_four_pods_and_leaves_one_pending(control_plane: ControlPlane) -> None:
    pool = uuid.uuid4().hex[:8]
    nodes = control_plane.create_gpu_nodes(
        2, GPUNodeSpec(gpus=8), prefix="sched", labels={"tidal.dev/test-pool": pool}
    )
    ns = control_plane.create_namespace("sched")
    try:
        node = control_plane.core.read_node(nodes[0])
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert node.metadata.labels[GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"

        control_plane.apps.create_namespaced_deployment(ns, _deployment("llm", pool, replicas=5, gpus=4))

        deadline = time.monotonic() + 90
        running: list[Any] = []
        pending: list[Any] = []
        message = ""
        while time.monotonic() < deadline:
            pods = control_plane.core.list_namespaced_pod(ns, label_selector="app=llm").items
            running = [p for p in pods if p.status.phase == "Running"]
            pending = [p for p in pods if p.status.phase == "Pending"]
            if len(pods) == 5 and len(running) == 4 and len(pending) == 1:
                events = control_plane.core.list_namespaced_event(
                    ns, field_selector=f"involvedObject.name={pending[0].metadata.name}"
                ).items
                messages = [e.message or "" for e in events if e.reason == "FailedScheduling"]
                message = next((m for m in messages if "Insufficient nvidia.com/gpu" in m), "")
                if message:
                    break
            time.sleep(0.5)
        phases = Counter(p.status.phase for p in running + pending)
        assert len(running) == 4, f"expected 4 Running pods, got {phases}"
        assert len(pending) == 1, f"expected 1 Pending pod, got {phases}"
        assert "Insufficient nvidia.com/gpu" in message, "no FailedScheduling event naming nvidia.com/gpu"
        # Each 8-GPU node holds exactly two 4-GPU pods; the pending one is not bound anywhere.
        assert Counter(p.spec.node_name for p in running) == {nodes[0]: 2, nodes[1]: 2}
        assert pending[0].spec.node_name is None
        print(f"FailedScheduling: {message}")
    finally:
        control_plane.core.delete_namespace(ns)
        control_plane.delete_nodes(nodes)
