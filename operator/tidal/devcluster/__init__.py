"""A real local Kubernetes control plane for tests and the demo.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK (fake GPU nodes), built from the Go
module proxy by `make controlplane` and run on loopback by this package. Unlike the pure core of Tidal,
this package does I/O (processes, files, sockets) by design; nothing in the operator imports it.

    with DevCluster(ClusterConfig(work_dir=tmp, gpu_nodes=2)) as cluster:
        cluster.core_v1().list_node()

From a shell: `python -m tidal.devcluster up|down|status` (or `make cluster-up` / `make cluster-down`).
"""

from tidal.devcluster.binaries import ControlPlaneNotBuiltError, find_bin_dir
from tidal.devcluster.cluster import ClusterConfig, ClusterStartError, DevCluster
from tidal.devcluster.nodes import GPU_PRODUCT_LABEL, GPU_RESOURCE, GPUNodeSpec, gpu_node_manifest

__all__ = [
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "ClusterConfig",
    "ClusterStartError",
    "ControlPlaneNotBuiltError",
    "DevCluster",
    "GPUNodeSpec",
    "find_bin_dir",
    "gpu_node_manifest",
]
