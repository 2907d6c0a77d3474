"""The real node itself: containerd and the kubelet started, made Ready with fake GPUs, stopped.

Why this exists: :class:`RealNode` is the life cycle of one node (see :mod:`tidal.devcluster.realnode` for
what a node is made of); the configuration text, credentials, image-store seeds, pod network and the
teardown it relies on are in the sibling modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tidal.devcluster.kubeapi import AdminClient
from tidal.devcluster.nodes import GPU_RESOURCE, GPUNodeSpec
from tidal.devcluster.process import Component, Supervisor, start_component, stop_component, tail
from tidal.devcluster.realnode.cleanup import STATE_FILE, cleanup_node_dir
from tidal.devcluster.realnode.config import cni_conflist, containerd_config, kubelet_config, node_labels
from tidal.devcluster.realnode.credentials import write_kubelet_credentials
from tidal.devcluster.realnode.network import PodNetwork
from tidal.devcluster.realnode.prereqs import (
    PAUSE_IMAGE,
    NodeStartError,
    find_kubelet,
    run,
)
from tidal.devcluster.realnode.store import (
    clone_seed,
    default_store_cache,
    image_family,
    save_seed,
    seed_dir,
)

_CLOSED_PROXY = "http://127.0.0.1:9"


def _free_port() -> int:
    import socket as socket_module

    with socket_module.socket(socket_module.AF_INET, socket_module.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RealNode(Supervisor):
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
        self.image_store_cache = image_store_cache or default_store_cache()
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
        self._admin = AdminClient(self.kubeconfig)
        self._t0 = time.monotonic()
        self._keeper: threading.Thread | None = None
        self._stopping = threading.Event()

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
            seed = seed_dir(self.image_store_cache, self.images, self.sandbox_image)
            seeded = seed is not None and clone_seed(seed, self.containerd_root)
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
        self._admin.close()

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
        (self.node_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        conflist = cni_conflist(self.network, self.index, self.node_dir / "cni" / "ipam")
        (self.node_dir / "cni" / "net.d" / "10-tidal.conflist").write_text(json.dumps(conflist, indent=2))
        # Pods resolve nothing: their own loopback answers no DNS, so no query leaves the machine.
        (self.node_dir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def _start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.components[name] = start_component(f"{name}", argv, self.log_dir, env)

    def _ctr(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], timeout, check)

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

    def import_images(self, tars: Sequence[Path]) -> None:
        """Import more docker-archive tars into the running node (kept out of the seeded image store: an
        image that changes with every commit, like the operator's, would make a new 14 GB seed each time)."""
        for tar in tars:
            self._ctr("images", "import", str(tar), timeout=1800)

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

    def _save_seed(self, seed: Path) -> None:
        """Keep this node's freshly imported store as the seed of its image set (restarts containerd)."""
        save_seed(
            seed,
            self.containerd_root,
            stop=lambda: stop_component(self.components.pop("containerd")),  # copied at rest
            restart=self._start_containerd,
            family=image_family(self.images),
        )

    def api(self) -> Any:
        """A `kubernetes.client.ApiClient` from the admin kubeconfig (closed on stop)."""
        return self._admin.client()

    def _core(self) -> Any:
        return self._admin.core_v1()

    def _write_kubelet_files(self) -> None:
        ca_file = write_kubelet_credentials(self.node_dir, self.kubeconfig, self.name, self.api())
        assert self.network is not None
        config = kubelet_config(
            self.node_dir, str(self.network.gateway), self.kubelet_port, _free_port(), self.socket, ca_file
        )
        (self.node_dir / "kubelet-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _kubelet_argv(self, kubelet: Path) -> list[str]:
        assert self.network is not None
        labels = ",".join(f"{k}={v}" for k, v in node_labels(self.gpu).items())
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
        self.raise_if_exited(NodeStartError, what, owner=f" of node {self.name}")

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
            self._core().delete_node(self.name, _request_timeout=5)
