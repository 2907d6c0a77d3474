"""Real kubelet nodes for the development cluster: the upstream kubelet on containerd, runc and a CNI bridge.

Why this exists: KWOK (:mod:`tidal.devcluster.nodes`) plays the kubelet of every fake GPU node without
running a container, so nothing ever started the worker's container, ran its probes, mounted its volumes,
sent it SIGTERM on delete or restarted it after a crash. A :class:`RealNode` registers beside the KWOK nodes
and runs its pods for real, so the pod spec Tidal builds is tested where it matters.

One node, everything under its own directory (nothing in /var/lib, /etc or /opt is touched):

- containerd (Debian's, `make node`) with its own root, state, socket and config. The CRI plugin sets
  `restrict_oom_score_adj` (CAP_SYS_RESOURCE is missing from these machines' bounding set; without it every
  sandbox fails with "can't get final child's PID from pipe"), a local sandbox (pause) image, and the CNI
  config below. No registry is reachable, so images are docker-archive tars imported with
  `ctr images import`; containerd runs with HTTP(S)_PROXY pointing at a closed loopback port, so a pod that
  asks for an image that is not there fails fast and nothing leaves the machine. An imported store is kept
  as a seed under `$TIDAL_CACHE/node/stores`, and the next node with the same images starts from a
  hard-linked clone of it (seconds instead of minutes for the vLLM image); only the newest seed is kept
  (:mod:`~tidal.devcluster.realnode.store`).
- the kubelet 1.34 (`scripts/build-node.sh`), authenticated as `system:node:<name>` with a certificate the
  cluster signs through a CertificateSigningRequest (Node authorizer and NodeRestriction apply to it as on
  a real cluster), serving only on the pod bridge's address with X.509 + webhook authentication.
- the pod network (:class:`PodNetwork`): a Linux bridge this module creates, with a private /16 that
  collides with no route or address of the host; each node's pods get their own /24 of it from `host-local`
  IPAM, all on the one bridge, so pods of different real nodes reach each other and the host reaches
  every pod (probes). The bridge plugin runs with `isGateway: false` and no masquerading, and pods get no
  default route: they can reach each other and the bridge address, nothing else (IP forwarding stays off).
  The node IP is the bridge address, because the kubelet refuses a loopback node IP; the API server dials
  it (`--kubelet-preferred-address-types=InternalIP`) for logs, exec and port-forward.
- fake GPUs: `nvidia.com/gpu` capacity patched into the node's status (re-applied should it disappear) and
  the GPU feature discovery labels of :func:`tidal.devcluster.nodes.gpu_node_manifest`, so Tidal schedules
  its GPU pods here exactly as on the KWOK nodes.

:meth:`RealNode.stop` removes all of it: containers and their shims, containerd, the kubelet, every mount
under the node directory (kubelet volumes, network namespaces, container root filesystems), the Node
object, and the bridge if the node created it. :func:`cleanup_node_dir` does the same from the directory
alone for a supervisor that was killed.
The package: :mod:`~tidal.devcluster.realnode.prereqs` (constants, errors, the kubelet and pause image
look-ups), :mod:`~tidal.devcluster.realnode.network` (the bridge), :mod:`~tidal.devcluster.realnode.config`
(containerd, CNI and kubelet configuration), :mod:`~tidal.devcluster.realnode.credentials` (the kubelet's
certificate), :mod:`~tidal.devcluster.realnode.store` (image-store seeds),
:mod:`~tidal.devcluster.realnode.cleanup` (teardown from the directory) and
:mod:`~tidal.devcluster.realnode.node` (:class:`RealNode`). Import the public names from here.
"""

from tidal.devcluster.realnode.cleanup import cleanup_node_dir, cleanup_node_dirs
from tidal.devcluster.realnode.config import (
    cni_conflist,
    containerd_config,
    containerd_config_version,
    kubelet_config,
    node_labels,
)
from tidal.devcluster.realnode.network import PodNetwork
from tidal.devcluster.realnode.node import RealNode
from tidal.devcluster.realnode.prereqs import (
    CNI_BIN_DIR,
    CNI_PLUGINS,
    KUBELET_BIN_ENV,
    PAUSE_IMAGE,
    REAL_NODE_LABEL,
    SYSTEM_BINARIES,
    NodeNotBuiltError,
    NodeStartError,
    default_node_images,
    expected_kubelet_dir,
    find_kubelet,
)
from tidal.devcluster.realnode.store import default_store_cache, prune_seeds

__all__ = [
    "CNI_BIN_DIR",
    "CNI_PLUGINS",
    "KUBELET_BIN_ENV",
    "PAUSE_IMAGE",
    "REAL_NODE_LABEL",
    "SYSTEM_BINARIES",
    "NodeNotBuiltError",
    "NodeStartError",
    "PodNetwork",
    "RealNode",
    "cleanup_node_dir",
    "cleanup_node_dirs",
    "cni_conflist",
    "containerd_config",
    "containerd_config_version",
    "default_node_images",
    "default_store_cache",
    "expected_kubelet_dir",
    "find_kubelet",
    "kubelet_config",
    "node_labels",
    "prune_seeds",
]
