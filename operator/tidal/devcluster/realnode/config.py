"""The text of a real node's containerd config, CNI network list and KubeletConfiguration.

Why this exists: these settings are what makes containerd and the kubelet run on these machines (cgroup v1,
no CAP_SYS_RESOURCE, no registry, a host shared with other nodes and tests); each is a pure function of the
node's paths and network, kept apart from the code that starts the processes so it can be read and
reviewed as configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.devcluster.nodes import GPU_MEMORY_MIB, GPU_PRODUCT_LABEL, GPUNodeSpec
from tidal.devcluster.realnode.network import PodNetwork
from tidal.devcluster.realnode.prereqs import CNI_BIN_DIR, REAL_NODE_LABEL


def containerd_config_version() -> int:
    """Bumped when a change to :func:`containerd_config` makes older image store seeds unusable."""
    return 1


def containerd_config(node_dir: Path, socket: Path, sandbox_image: str, root: Path) -> str:
    """containerd 1.6 config (version 2): private root, state, socket; CRI with our sandbox image and CNI."""
    state = node_dir / "containerd" / "state"
    return f"""version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{node_dir / "containerd" / "opt"}"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{sandbox_image}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "{state / "runc"}"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{node_dir / "cni" / "net.d"}"
      max_conf_num = 1
"""


def cni_conflist(network: PodNetwork, index: int, ipam_dir: Path) -> dict[str, Any]:
    """A bridge on `network` with host-local IPAM from the node's /24; no gateway, masquerade or routes."""
    pods = network.node_range(index)
    return {
        "cniVersion": "0.4.0",
        "name": f"tidal-{network.bridge}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": network.bridge,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [
                        [
                            {
                                "subnet": str(network.cidr),
                                "rangeStart": str(pods.network_address + 1),
                                "rangeEnd": str(pods.broadcast_address - 1),
                            }
                        ]
                    ],
                    "routes": [],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def kubelet_config(
    node_dir: Path, address: str, port: int, healthz_port: int, socket: Path, ca_file: Path
) -> dict[str, Any]:
    """The KubeletConfiguration that runs on these machines (cgroup v1, no CAP_SYS_RESOURCE, shared host)."""
    endpoint = f"unix://{socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "makeIPTablesUtilChains": False,
        "podLogsDir": str(node_dir / "pod-logs"),
        "volumePluginDir": str(node_dir / "volume-plugins"),
        "resolvConf": str(node_dir / "resolv.conf"),
        "serializeImagePulls": False,
        "registerNode": True,
        "maxPods": 110,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
    }


def node_labels(spec: GPUNodeSpec) -> dict[str, str]:
    """The kubelet's --node-labels: GPU feature discovery labels of `spec`, plus the real-node label."""
    labels = {
        GPU_PRODUCT_LABEL: spec.gpu_product,
        "nvidia.com/gpu.count": str(spec.gpus),
        "nvidia.com/gpu.present": "true",
        "type": "real",
        REAL_NODE_LABEL: "true",
    }
    memory_mib = GPU_MEMORY_MIB.get(spec.gpu_product)
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    labels.update(dict(spec.extra_labels))
    return labels
