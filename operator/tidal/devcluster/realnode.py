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
  hard-linked clone of it (seconds instead of minutes for the vLLM image).
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
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tidal.devcluster.binaries import repo_root
from tidal.devcluster.nodes import GPU_MEMORY_MIB, GPU_PRODUCT_LABEL, GPU_RESOURCE, GPUNodeSpec
from tidal.devcluster.process import Component, start_component, stop_component, tail

PAUSE_IMAGE = "tidal.local/pause:3.10"
"""The CRI sandbox image: a static busybox running `sleep` (scripts/build-images.sh pause builds it)."""
CNI_BIN_DIR = Path("/usr/lib/cni")
KUBELET_BIN_ENV = "TIDAL_NODE_BIN"
REAL_NODE_LABEL = "tidal.dev/real-node"
"""Label on every real node (value "true"), so a test can pin pods to real nodes with a nodeSelector."""
SYSTEM_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "umount")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
_CLOSED_PROXY = "http://127.0.0.1:9"
_STATE_FILE = "node.json"
_SHIM_SOCKET_DIR = Path("/run/containerd/s")
_CNI_CACHE_DIR = Path("/var/lib/cni/results")
_DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")


class NodeNotBuiltError(RuntimeError):
    """The kubelet or the node's Debian packages are missing (`make node` installs and builds them)."""


class NodeStartError(RuntimeError):
    """A real node did not become Ready; the message carries the kubelet and containerd log tails."""


# -- binaries ---------------------------------------------------------------------------------------------


def expected_kubelet_dir() -> Path:
    """The kubelet's directory: $TIDAL_NODE_BIN, else what `scripts/build-node.sh --print-bin-dir` names."""
    override = os.environ.get(KUBELET_BIN_ENV)
    if override:
        return Path(override)
    root = repo_root()
    if root is not None and (root / "scripts" / "build-node.sh").is_file():
        out = subprocess.run(
            ["bash", str(root / "scripts" / "build-node.sh"), "--print-bin-dir"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Path(out.stdout.strip())
    cache = Path(os.environ.get("TIDAL_CACHE", Path.home() / ".cache" / "tidal"))
    return cache / "node" / "current" / "bin"


def find_kubelet(bin_dir: Path | None = None) -> Path:
    """Path of the kubelet binary; raises NodeNotBuiltError naming what is missing and how to get it."""
    kubelet = (bin_dir if bin_dir is not None else expected_kubelet_dir()) / "kubelet"
    missing = [name for name in SYSTEM_BINARIES if shutil.which(name) is None]
    missing += [str(CNI_BIN_DIR / p) for p in CNI_PLUGINS if not os.access(CNI_BIN_DIR / p, os.X_OK)]
    if not os.access(kubelet, os.X_OK):
        missing.insert(0, str(kubelet))
    if missing:
        raise NodeNotBuiltError(
            f"real node prerequisites missing: {', '.join(missing)}. Run `make node` (installs containerd, "
            "runc and the CNI plugins from Debian, builds the kubelet from the Go module proxy)."
        )
    return kubelet


def default_node_images() -> list[Path]:
    """The images every real node needs: the pause image tar from `scripts/build-images.sh pause`."""
    root = repo_root()
    script = root / "scripts" / "build-images.sh" if root is not None else None
    if script is None or not script.is_file():
        raise NodeNotBuiltError(
            "no pause image: scripts/build-images.sh is missing; pass the image tars explicitly "
            "(KUBELET_NODE_IMAGES or --node-image)"
        )
    out = subprocess.run(
        ["bash", str(script), "pause"], check=True, capture_output=True, text=True, timeout=1800
    )
    return [Path(out.stdout.strip().splitlines()[-1])]


def _run(argv: Sequence[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


# -- pod network --------------------------------------------------------------------------------------------


def _lock_path() -> Path:
    base = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
    return base / "tidal-podnet.lock"


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host routes or has an address in, plus its DNS servers (not the default)."""
    used: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for line in _run(argv, check=False).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if "/" in word or word[:1].isdigit():
                        net = ipaddress.ip_network(word, strict=False)
                        if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                            used.append(net)
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    net = ipaddress.ip_network(parts[1])
                    if isinstance(net, ipaddress.IPv4Network):
                        used.append(net)
    return used


# The dev cluster's Service range (10.96.0.0/16) and KWOK's pod range (10.244.0.0/16) lie outside these.
_CANDIDATE_OCTETS = range(200, 240)


@dataclass(frozen=True)
class PodNetwork:
    """A bridge for real nodes' pods: `cidr` (a /16), the bridge holding its first address."""

    bridge: str
    cidr: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's own address: the node IP of every real node on it, and the host's side for probes."""
        return self.cidr.network_address + 1

    def node_range(self, index: int) -> ipaddress.IPv4Network:
        """The /24 from which the pods of node number `index` get their addresses."""
        if not 0 <= index < 254:
            raise ValueError(f"node index {index} out of range 0..253")
        return ipaddress.IPv4Network((int(self.cidr.network_address) + (index + 1) * 256, 24))

    @classmethod
    def create(cls) -> PodNetwork:
        """Pick a /16 in 10.200-239.0.0 that nothing on the host uses, create and bring up its bridge."""
        with _lock_path().open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _networks_in_use()
            links = set(_run(["ip", "-o", "link", "show"], check=False).stdout.split())
            for octet in _CANDIDATE_OCTETS:
                cidr = ipaddress.IPv4Network(f"10.{octet}.0.0/16")
                bridge = f"tidal{octet}"
                if f"{bridge}:" in links or any(cidr.overlaps(net) for net in used):
                    continue
                network = cls(bridge=bridge, cidr=cidr)
                _run(["ip", "link", "add", bridge, "type", "bridge"])
                try:
                    _run(["ip", "addr", "add", f"{network.gateway}/{cidr.prefixlen}", "dev", bridge])
                    _run(["ip", "link", "set", bridge, "up"])
                except BaseException:
                    network.delete()
                    raise
                return network
        raise NodeStartError("no free 10.x.0.0/16 for the pod network (all of 10.200-239 are in use)")

    def exists(self) -> bool:
        """Whether the bridge is there."""
        return _run(["ip", "link", "show", self.bridge], check=False).returncode == 0

    def delete(self) -> None:
        """Delete the bridge (veths of namespaces already gone went with them)."""
        if self.exists():
            _run(["ip", "link", "delete", self.bridge], check=False)

    def to_json(self) -> dict[str, str]:
        """For the node's state file."""
        return {"bridge": self.bridge, "cidr": str(self.cidr)}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> PodNetwork:
        """Inverse of :meth:`to_json`."""
        return cls(bridge=data["bridge"], cidr=ipaddress.IPv4Network(data["cidr"]))


# -- configuration files ------------------------------------------------------------------------------------


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


# -- the node ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket as socket_module

    with socket_module.socket(socket_module.AF_INET, socket_module.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _gpu_labels(spec: GPUNodeSpec) -> dict[str, str]:
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


class RealNode:
    """One real node (containerd + kubelet) joined to a running cluster. Context manager, or start()/stop().

        node = RealNode(tmp / "real-0", cluster.kubeconfig, images=[pause_tar, vllm_tar])
        node.start()     # containerd up, images imported, kubelet registered, Ready with nvidia.com/gpu
        ...
        node.stop()      # nothing left: processes, mounts, network namespaces, bridge, Node object

    `kubeconfig` is an admin kubeconfig of the cluster (the node's own credentials come from a CSR it
    approves). `images` are docker-archive tars; the sandbox image (`sandbox_image`, default
    tidal.local/pause:3.10) must be among them or already in a kept image store. Without `network` the
    node creates a bridge of its own and deletes it on stop; several nodes share one by passing the same
    :class:`PodNetwork` and distinct `index` values.
    """

    def __init__(
        self,
        work_dir: Path,
        kubeconfig: Path,
        images: Sequence[Path] = (),
        *,
        name: str = "real-0",
        gpu: GPUNodeSpec | None = None,
        network: PodNetwork | None = None,
        index: int = 0,
        kubelet_bin_dir: Path | None = None,
        sandbox_image: str = PAUSE_IMAGE,
        keep_images: bool = False,
        image_store_cache: Path | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.name = name
        self.node_dir = work_dir.resolve()
        self.kubeconfig = kubeconfig.resolve()
        self.images = [Path(p) for p in images]
        self.gpu = gpu or GPUNodeSpec()
        self.index = index
        self.kubelet_bin_dir = kubelet_bin_dir
        self.sandbox_image = sandbox_image
        self.keep_images = keep_images
        cache = Path(os.environ.get("TIDAL_CACHE", Path.home() / ".cache" / "tidal")) / "node" / "stores"
        self.image_store_cache = image_store_cache or cache
        self.ready_timeout_s = ready_timeout_s
        self.log_dir = self.node_dir / "logs"
        self.containerd_root = self.node_dir / "containerd" / "root"
        self.socket = self._socket_path()
        self.network = network
        self._owns_network = False
        self.kubelet_port = 0
        self.components: dict[str, Component] = {}
        self.startup_seconds = 0.0
        self.timings: dict[str, float] = {}
        self._api: Any = None
        self._t0 = time.monotonic()
        self._keeper: threading.Thread | None = None
        self._stopping = threading.Event()

    def __enter__(self) -> RealNode:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _socket_path(self) -> Path:
        socket = self.node_dir / "containerd" / "containerd.sock"
        if len(str(socket)) + len(".ttrpc") < 100:  # sun_path holds 108 bytes
            return socket
        digest = uuid.uuid5(uuid.NAMESPACE_URL, str(self.node_dir)).hex[:12]
        return Path("/run") / f"tidal-containerd-{digest}.sock"

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start containerd, import the images, start the kubelet, wait until the node is Ready with GPUs."""
        began = time.monotonic()
        kubelet = find_kubelet(self.kubelet_bin_dir)
        missing = [str(p) for p in self.images if not p.is_file()]
        if missing:
            raise NodeStartError(f"image tars not found: {', '.join(missing)}")
        try:
            cleanup_node_dir(self.node_dir, keep_images=self.keep_images)  # a previous run killed hard
            self._prepare()
            seed = self._seed_dir()
            seeded = seed is not None and self._clone_seed(seed)
            self._start_containerd()
            self._mark("containerd")
            self._import_images()
            if seed is not None and not seeded:
                self._save_seed(seed)
            self._mark("images")
            self._write_kubelet_files()
            self._mark("credentials")
            self._start("kubelet", self._kubelet_argv(kubelet))
            self._wait_ready(time.monotonic() + self.ready_timeout_s)
            self._mark("ready")
        except BaseException:
            self.stop()
            raise
        self._keeper = threading.Thread(target=self._keep_gpus, name=f"gpu-capacity-{self.name}", daemon=True)
        self._keeper.start()
        self.startup_seconds = time.monotonic() - began

    def _mark(self, step: str) -> None:
        self.timings[step] = round(time.monotonic() - self._t0, 2)

    def stop(self) -> None:
        """Stop and remove everything the node started or mounted; idempotent."""
        self._stopping.set()
        if self._keeper is not None:
            self._keeper.join(timeout=10)
            self._keeper = None
        kubelet = self.components.pop("kubelet", None)
        if kubelet is not None:
            stop_component(kubelet)
        if "containerd" in self.components:
            self._remove_containers()
            stop_component(self.components.pop("containerd"))
        cleanup_node_dir(self.node_dir, keep_images=self.keep_images, delete_network=self._owns_network)
        if self._owns_network and self.network is not None:
            self.network.delete()
        self._owns_network = False
        self._delete_node_object()
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
            self._api = None

    def pids(self) -> dict[str, int]:
        """Process (and process group) id of containerd and the kubelet."""
        return {f"{name}-{self.name}": c.pid for name, c in self.components.items()}

    def logs_summary(self, lines: int = 30) -> str:
        """The last lines of the node's containerd and kubelet logs, for failure messages."""
        return "\n".join(
            f"----- {path} (last {lines} lines) -----\n{tail(path, lines)}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    # -- start-up steps -----------------------------------------------------------------------------------

    def _prepare(self) -> None:
        self._t0 = time.monotonic()
        self._stopping.clear()
        for sub in ("kubelet", "kubelet-pki", "pod-logs", "cni", "volume-plugins", "containerd/state"):
            shutil.rmtree(self.node_dir / sub, ignore_errors=True)
        for sub in (
            "logs",
            "cni/net.d",
            "cni/ipam",
            "pod-logs",
            "volume-plugins",
            "kubelet",
            "containerd/opt",
        ):
            (self.node_dir / sub).mkdir(parents=True, exist_ok=True)
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        if self.network is None:
            self.network = PodNetwork.create()
            self._owns_network = True
        self.kubelet_port = _free_port()
        state = {
            "name": self.name,
            "socket": str(self.socket),
            "network": self.network.to_json(),
            "owns_network": self._owns_network,
            "kubelet_port": self.kubelet_port,
        }
        (self.node_dir / _STATE_FILE).write_text(json.dumps(state, indent=2))
        conflist = cni_conflist(self.network, self.index, self.node_dir / "cni" / "ipam")
        (self.node_dir / "cni" / "net.d" / "10-tidal.conflist").write_text(json.dumps(conflist, indent=2))
        # Pods resolve nothing: their own loopback answers no DNS, so no query leaves the machine.
        (self.node_dir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def _start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.components[name] = start_component(f"{name}", argv, self.log_dir, env)

    def _ctr(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], timeout, check)

    def _start_containerd(self) -> None:
        config = self.node_dir / "containerd" / "config.toml"
        config.write_text(
            containerd_config(self.node_dir, self.socket, self.sandbox_image, self.containerd_root)
        )
        env = dict(os.environ)
        # No registry is reachable and none may be contacted: pulls fail at once on a closed loopback port.
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[key] = _CLOSED_PROXY
        for key in ("NO_PROXY", "no_proxy"):
            env.pop(key, None)
        self._start("containerd", ["containerd", "--config", str(config)], env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive("containerd socket")
            if self.socket.exists() and self._ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise NodeStartError(f"containerd did not serve {self.socket} within 30s\n{self.logs_summary()}")

    def _import_images(self) -> None:
        marker = self.containerd_root / "tidal-imported.json"
        try:
            done: dict[str, str] = json.loads(marker.read_text())
        except (OSError, ValueError):
            done = {}
        present = set(self._ctr("images", "ls", "-q").stdout.split())
        for tar in self.images:
            stat = tar.stat()
            key = f"{stat.st_size}:{stat.st_mtime_ns}"
            tags = done.get(str(tar.resolve()))
            if tags is not None and tags.startswith(key + "|") and set(tags.split("|")[1:]) <= present:
                continue
            out = self._ctr("images", "import", str(tar), timeout=1800).stdout
            imported = [
                w for line in out.splitlines() for w in line.split()[1:2] if line.startswith("unpacking")
            ]
            done[str(tar.resolve())] = "|".join([key, *imported])
        marker.write_text(json.dumps(done, indent=2))
        if self.sandbox_image not in set(self._ctr("images", "ls", "-q").stdout.split()):
            raise NodeStartError(
                f"sandbox image {self.sandbox_image} is not in containerd after importing "
                f"{[str(p) for p in self.images]}: pass the pause image tar (scripts/build-images.sh pause)"
            )

    # An imported image store is cached per image set under `image_store_cache`/<key>/root: importing the
    # 7 GB vLLM image takes minutes (content plus unpacked snapshot), a hard-linked clone of a store seconds.
    # Only content blobs and committed snapshots are linked (containerd never writes them in place); bolt
    # databases and everything else are copied.

    def _seed_dir(self) -> Path | None:
        if not self.images:
            return None
        version = _run(["containerd", "--version"], check=False).stdout.strip()
        ident = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(set(self.images))]
        blob = json.dumps([ident, self.sandbox_image, version, containerd_config_version()])
        return self.image_store_cache / hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _clone_seed(self, seed: Path) -> bool:
        """Fill an empty image store from `seed`; False (import instead) if there is none or linking fails."""
        if not (seed / ".complete").exists() or any(self.containerd_root.iterdir()):
            return False
        try:
            _clone_store(seed / "root", self.containerd_root)
        except (OSError, subprocess.CalledProcessError):
            shutil.rmtree(self.containerd_root, ignore_errors=True)
            self.containerd_root.mkdir(parents=True, exist_ok=True)
            return False
        os.utime(seed)
        return True

    def _save_seed(self, seed: Path) -> None:
        """Keep this node's freshly imported store as the seed of its image set (restarts containerd)."""
        seed.parent.mkdir(parents=True, exist_ok=True)
        with (seed.parent / f".{seed.name}.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another node is saving the same seed
            if (seed / ".complete").exists():
                return
            stop_component(self.components.pop("containerd"))  # bolt databases are copied at rest
            tmp = seed.parent / f".tmp-{seed.name}-{uuid.uuid4().hex[:6]}"
            try:
                _clone_store(self.containerd_root, tmp / "root")
                (tmp / ".complete").touch()
                tmp.rename(seed)
            except (OSError, subprocess.CalledProcessError):
                shutil.rmtree(tmp, ignore_errors=True)
            finally:
                self._start_containerd()
        _prune_seeds(seed.parent, keep=2)

    def api(self) -> Any:
        """A `kubernetes.client.ApiClient` from the admin kubeconfig (closed on stop)."""
        if self._api is None:
            from kubernetes import config as k8s_config

            self._api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig)
            )
        return self._api

    def _core(self) -> Any:
        from kubernetes import client as k8s_client

        return k8s_client.CoreV1Api(self.api())

    def _node_certificate(self, csr_pem: bytes) -> bytes:
        """Have the cluster sign the node's client certificate: create, approve and read a CSR."""
        from kubernetes import client as k8s_client
        from kubernetes.client.exceptions import ApiException

        certs: Any = k8s_client.CertificatesV1Api(self.api())
        name = f"tidal-node-{self.name}-{uuid.uuid4().hex[:6]}"
        certs.create_certificate_signing_request(
            {
                "apiVersion": "certificates.k8s.io/v1",
                "kind": "CertificateSigningRequest",
                "metadata": {"name": name},
                "spec": {
                    "request": base64.b64encode(csr_pem).decode(),
                    "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                    "usages": ["digital signature", "client auth"],
                },
            }
        )
        try:
            for attempt in range(20):  # the controller-manager may update the CSR between read and write
                csr = certs.read_certificate_signing_request(name)
                csr.status.conditions = [
                    k8s_client.V1CertificateSigningRequestCondition(
                        type="Approved", status="True", reason="TidalDevCluster", message="dev-cluster node"
                    )
                ]
                try:
                    certs.replace_certificate_signing_request_approval(name, csr)
                    break
                except ApiException as exc:
                    if exc.status != 409 or attempt == 19:
                        raise
                time.sleep(0.1)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                csr = certs.read_certificate_signing_request(name)
                if csr.status and csr.status.certificate:
                    return base64.b64decode(csr.status.certificate)
                time.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                certs.delete_certificate_signing_request(name)
        raise NodeStartError(f"CSR {name} for {self.name} was not signed within 30s (controller-manager?)")

    def _write_kubelet_files(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        pki = self.node_dir / "kubelet-pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca_file = pki / "cluster-ca.crt"
        ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{self.name}"),
            ]
        )
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        cert_pem = self._node_certificate(csr.public_bytes(serialization.Encoding.PEM))
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "tidal-dev", "cluster": cluster}],
            "users": [
                {
                    "name": f"system:node:{self.name}",
                    "user": {
                        "client-certificate-data": base64.b64encode(cert_pem).decode(),
                        "client-key-data": base64.b64encode(key_pem).decode(),
                    },
                }
            ],
            "contexts": [
                {"name": "tidal-dev", "context": {"cluster": "tidal-dev", "user": f"system:node:{self.name}"}}
            ],
            "current-context": "tidal-dev",
        }
        path = self.node_dir / "kubelet.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
        path.chmod(0o600)
        assert self.network is not None
        config = kubelet_config(
            self.node_dir, str(self.network.gateway), self.kubelet_port, _free_port(), self.socket, ca_file
        )
        (self.node_dir / "kubelet-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _kubelet_argv(self, kubelet: Path) -> list[str]:
        assert self.network is not None
        labels = ",".join(f"{k}={v}" for k, v in _gpu_labels(self.gpu).items())
        return [
            str(kubelet),
            f"--config={self.node_dir / 'kubelet-config.yaml'}",
            f"--kubeconfig={self.node_dir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.node_dir / 'kubelet'}",
            f"--cert-dir={self.node_dir / 'kubelet-pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.network.gateway}",
            f"--node-labels={labels}",
            "--v=1",
        ]

    # -- readiness and fake GPUs --------------------------------------------------------------------------

    def _check_alive(self, what: str) -> None:
        for component in self.components.values():
            code = component.exited()
            if code is not None:
                raise NodeStartError(
                    f"{component.name} of node {self.name} exited with code {code} while waiting for {what}\n"
                    + self.logs_summary()
                )

    def _patch_gpus(self, core: Any) -> bool:
        """Put the fake GPUs into the node's capacity if they are not there; True when it patched."""
        node = core.read_node(self.name)
        capacity = (node.status.capacity or {}) if node.status else {}
        if capacity.get(GPU_RESOURCE) == str(self.gpu.gpus):
            return False
        path = "/status/capacity/" + GPU_RESOURCE.replace("~", "~0").replace("/", "~1")
        core.patch_node_status(self.name, [{"op": "add", "path": path, "value": str(self.gpu.gpus)}])
        return True

    def _wait_ready(self, deadline: float) -> None:
        core = self._core()
        last = "node not registered"
        while time.monotonic() < deadline:
            self._check_alive(f"node {self.name} Ready")
            try:
                node = core.read_node(self.name)
                self._patch_gpus(core)
                conditions = node.status.conditions or []
                ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
                allocatable = node.status.allocatable or {}
                if ready and allocatable.get(GPU_RESOURCE) == str(self.gpu.gpus):
                    return
                last = f"Ready={ready}, allocatable {GPU_RESOURCE}={allocatable.get(GPU_RESOURCE)}"
            except Exception as exc:  # not registered yet, or the API server is busy
                last = f"{type(exc).__name__}: {str(exc)[:200]}"
            time.sleep(0.3)
        raise NodeStartError(
            f"node {self.name} not Ready after {self.ready_timeout_s:.0f}s ({last})\n" + self.logs_summary()
        )

    def _keep_gpus(self) -> None:
        """Re-apply the GPU capacity should a kubelet status update or re-registration drop it."""
        core = self._core()
        while not self._stopping.wait(2.0):
            with contextlib.suppress(Exception):
                self._patch_gpus(core)

    # -- teardown -----------------------------------------------------------------------------------------

    def _remove_containers(self) -> None:
        """Kill and delete every container through containerd, so its metadata and snapshots go too."""
        if self.components["containerd"].exited() is not None:
            return
        tasks = self._ctr("tasks", "ls", "-q", check=False, timeout=30).stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False, timeout=30)
        for task in tasks:
            self._ctr("tasks", "delete", "--force", task, check=False, timeout=30)
        containers = self._ctr("containers", "ls", "-q", check=False, timeout=30).stdout.split()
        if containers:
            self._ctr("containers", "delete", *containers, check=False, timeout=60)

    def _delete_node_object(self) -> None:
        if not self.kubeconfig.exists():
            return
        with contextlib.suppress(Exception):
            from kubernetes import client as k8s_client

            api = k8s_client.CoreV1Api(self.api())
            api.delete_node(self.name, _request_timeout=5)


# -- image store seeds --------------------------------------------------------------------------------------

_LINKED_STORE_PARTS = (
    "io.containerd.content.v1.content/blobs",
    "io.containerd.snapshotter.v1.overlayfs/snapshots",
)


def containerd_config_version() -> int:
    """Bumped when a change to :func:`containerd_config` makes older image store seeds unusable."""
    return 1


def _clone_store(src: Path, dst: Path) -> None:
    """Copy a stopped containerd root: content blobs and snapshots as hard links, the rest as copies."""
    dst.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if str(rel) in _LINKED_STORE_PARTS:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            _run(["cp", "-al", str(Path(dirpath)), str(dst / rel)], timeout=600)
            dirnames[:] = []
            continue
        (dst / rel).mkdir(parents=True, exist_ok=True)
        shutil.copystat(dirpath, dst / rel)
        for name in filenames:
            source = Path(dirpath) / name
            if source.is_file() and not source.is_symlink():
                shutil.copy2(source, dst / rel / name)


def _prune_seeds(directory: Path, keep: int) -> None:
    """Delete all but the `keep` most recently used seeds."""
    seeds = sorted(
        (p for p in directory.iterdir() if p.is_dir() and (p / ".complete").exists()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in seeds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


# -- cleanup from the directory alone ------------------------------------------------------------------------


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                yield int(entry.name), [a.decode(errors="replace") for a in argv if a]


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + os.sep
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(code, char)
        if point.startswith(prefix) or point == str(directory):
            found.append(point)
    return found


def _unmount_all(directory: Path) -> None:
    for _ in range(5):
        mounts = _mounts_under(directory)
        if not mounts:
            return
        for point in sorted(set(mounts), key=lambda p: (p.count("/"), len(p)), reverse=True):
            if _run(["umount", point], check=False).returncode != 0:
                _run(["umount", "-l", point], check=False)


def cleanup_node_dir(node_dir: Path, keep_images: bool = False, delete_network: bool = True) -> None:
    """Remove what a real node left under `node_dir` and on the host, from its files alone.

    For a node whose supervisor was killed (and the start of a node reusing a directory): kills the
    kubelet, containerd and shims started for this directory, deletes runc containers, unmounts every
    mount below the directory, removes its container log links and, when the node owned it, the bridge.
    """
    node_dir = node_dir.resolve()
    try:
        state: dict[str, Any] = json.loads((node_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    socket = state.get("socket", str(node_dir / "containerd" / "containerd.sock"))
    marks = (str(node_dir) + os.sep, socket)
    # The kubelet and containerd (by their config paths), then shims (by containerd's address).
    killed = []
    for pid, argv in _processes():
        if not argv or pid == os.getpid() or not any(m in arg for arg in argv for m in marks):
            continue
        program = os.path.basename(argv[0])
        if program in ("kubelet", "containerd") or program.startswith("containerd-shim"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + 5
    while killed and time.monotonic() < deadline:
        killed = [pid for pid in killed if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
        time.sleep(0.05)
    runc_root = node_dir / "containerd" / "state" / "runc" / "k8s.io"
    if runc_root.is_dir():
        for container in _run(["runc", "--root", str(runc_root), "list", "-q"], check=False).stdout.split():
            _run(["runc", "--root", str(runc_root), "kill", "--all", container, "KILL"], check=False)
            _run(["runc", "--root", str(runc_root), "delete", "--force", container], check=False)
    # Shims killed hard leave their sockets in /run/containerd/s, named by a hash of address, namespace, id.
    tasks = node_dir / "containerd" / "state" / "io.containerd.runtime.v2.task"
    with contextlib.suppress(OSError):
        for bundle in tasks.glob("*/*"):
            digest = hashlib.sha256(f"{socket}/{bundle.parent.name}/{bundle.name}".encode()).hexdigest()
            (_SHIM_SOCKET_DIR / digest).unlink(missing_ok=True)
    # Sandboxes torn down without a CNI DEL leave libcni's cache (/var/lib/cni/results/<net>-<id>-<if>).
    sandboxes = {
        path.name
        for top in (node_dir / "containerd" / "state", node_dir / "containerd" / "root")
        for path in top.glob("io.containerd.grpc.v1.cri/sandboxes/*")
    }
    with contextlib.suppress(OSError):
        for cached in _CNI_CACHE_DIR.iterdir():
            if any(f"-{sandbox}-" in cached.name for sandbox in sandboxes):
                cached.unlink(missing_ok=True)
    _unmount_all(node_dir)
    logs = node_dir / "pod-logs"
    with contextlib.suppress(OSError):
        for link in Path("/var/log/containers").iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(logs) + os.sep):
                    link.unlink()
    if delete_network and state.get("owns_network") and state.get("network"):
        PodNetwork.from_json(state["network"]).delete()
    for sub in ("kubelet", "containerd/state", "containerd/opt", "cni/ipam"):
        shutil.rmtree(node_dir / sub, ignore_errors=True)
    if not keep_images:
        shutil.rmtree(node_dir / "containerd" / "root", ignore_errors=True)
    for path in (Path(socket), Path(socket + ".ttrpc")):
        path.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (node_dir / _STATE_FILE).unlink()
    _remove_shared_host_paths()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _remove_shared_host_paths() -> None:
    """Remove the host paths every kubelet shares (hard-coded upstream) once no kubelet runs any more:
    the device-plugin socket in /var/lib/kubelet/device-plugins and the empty directories kubelets, libcni
    and containerd create. A directory that is not empty (someone else's) stays."""
    if any(argv and os.path.basename(argv[0]) == "kubelet" for _, argv in _processes()):
        return
    (_DEVICE_PLUGIN_DIR / "kubelet.sock").unlink(missing_ok=True)
    for directory in (
        _DEVICE_PLUGIN_DIR,
        _DEVICE_PLUGIN_DIR.parent,
        _CNI_CACHE_DIR,
        _CNI_CACHE_DIR.parent,
        Path("/var/log/containers"),
        # containerd's CRI parent cgroup of pod containers; rmdir fails while any container cgroup is in it.
        *Path("/sys/fs/cgroup").glob("*/k8s.io"),
    ):
        with contextlib.suppress(OSError):
            directory.rmdir()


def cleanup_node_dirs(nodes_dir: Path) -> None:
    """:func:`cleanup_node_dir` for every node directory under `nodes_dir` (`devcluster down`), then the
    shared bridge recorded in `nodes_dir/network.json`."""
    if not nodes_dir.is_dir():
        return
    for child in sorted(nodes_dir.iterdir()):
        if child.is_dir():
            cleanup_node_dir(child, keep_images=True)
    with contextlib.suppress(OSError, ValueError, KeyError):
        PodNetwork.from_json(json.loads((nodes_dir / "network.json").read_text())).delete()
        (nodes_dir / "network.json").unlink()
