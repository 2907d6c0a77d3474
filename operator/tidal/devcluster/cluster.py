"""Start, wait for and stop a real Kubernetes control plane on loopback.

`DevCluster` runs etcd, kube-apiserver (X.509 and service-account authentication, Node and RBAC
authorization, NodeRestriction admission), kube-controller-manager, kube-scheduler and KWOK as child
processes built by `make controlplane`, writes an admin kubeconfig, and creates fake GPU nodes. It is used
by the pytest fixtures (tests/support/cluster.py) and by `python -m tidal.devcluster up|down|status`.
Nothing is mocked: the operator's tests talk to the same API server code a production cluster runs.
The components' command lines are in :mod:`tidal.devcluster.commands`.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tidal.devcluster.binaries import find_bin_dir
from tidal.devcluster.commands import (
    apiserver_argv,
    controller_manager_argv,
    etcd_argv,
    kwok_argv,
    scheduler_argv,
)
from tidal.devcluster.kubeapi import AdminClient
from tidal.devcluster.nodes import GPUNodeSpec, gpu_node_manifest
from tidal.devcluster.pki import CertPair, ClusterPKI, generate_pki
from tidal.devcluster.process import Component, Supervisor, start_component, stop_component, tail
from tidal.devcluster.realnode import PodNetwork, RealNode


class ClusterStartError(RuntimeError):
    """The control plane did not become ready; the message carries the component log tails."""


@dataclass(frozen=True)
class ClusterConfig:
    """How to run one development cluster."""

    work_dir: Path
    """Scratch directory: certificates, etcd data, component kubeconfigs and logs (`work_dir/logs`)."""
    kubeconfig_path: Path | None = None
    """Where the admin kubeconfig is written; `work_dir/kubeconfig` when None."""
    bin_dir: Path | None = None
    """Directory with kube, etcd and kwok; the one `make controlplane` built for this checkout when None."""
    gpu_nodes: int = 0
    """Fake GPU nodes to create during start-up (named `gpu-node-0`, ...)."""
    gpu_node: GPUNodeSpec = field(default_factory=GPUNodeSpec)
    """Shape of those nodes."""
    ready_timeout_s: float = 90.0
    """How long start-up may take before it fails with the component logs."""
    etcd_unsafe_no_fsync: bool = True
    """Skip fsync in etcd: a throw-away test cluster trades durability for speed on slow disks."""
    real_nodes: int = 0
    """Real kubelet nodes (containerd + runc, :mod:`tidal.devcluster.realnode`) to start, `real-0`, ..."""
    real_node_images: tuple[Path, ...] = ()
    """Docker-archive tars imported into each real node; the pause image (tidal.local/pause:3.10) included."""
    keep_node_images: bool = False
    """Keep the real nodes' image stores (`work_dir/nodes`) after stop: the next start skips the imports."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, client: CertPair, user: str) -> Path:
    """Write a self-contained kubeconfig (certificates embedded) for `user` at `path`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "tidal-dev", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": "tidal-dev", "context": {"cluster": "tidal-dev", "user": user}}],
        "current-context": "tidal-dev",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


class DevCluster(Supervisor):
    """One running control plane. Use as a context manager, or call `start()` and `stop()`."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.work_dir = config.work_dir.resolve()
        self.log_dir = self.work_dir / "logs"
        self.kubeconfig = (config.kubeconfig_path or self.work_dir / "kubeconfig").resolve()
        self.bin_dir = find_bin_dir(config.bin_dir)
        self.components: dict[str, Component] = {}
        self.api_port = 0
        self.etcd_port = 0
        self.startup_seconds = 0.0
        self._pki: ClusterPKI | None = None
        self._admin = AdminClient(self.kubeconfig)
        self.real_nodes: list[RealNode] = []
        self.pod_network: PodNetwork | None = None

    # -- life cycle ---------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The API server URL."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def pki(self) -> ClusterPKI:
        """Key material of this cluster (available once `start()` ran)."""
        if self._pki is None:
            raise RuntimeError("cluster not started")
        return self._pki

    def start(self) -> None:
        """Start every component, wait until the cluster serves, create the configured GPU nodes."""
        began = time.monotonic()
        deadline = began + self.config.ready_timeout_s
        try:
            self._prepare()
            self._start_etcd()
            self._wait(deadline, "etcd", self._etcd_healthy)
            self._start_apiserver()
            self._wait(deadline, "kube-apiserver /readyz", self._apiserver_ready)
            self._start_controllers()
            self._wait(deadline, "default ServiceAccount", self._default_service_account_exists)
            if self.config.gpu_nodes:
                names = [f"gpu-node-{i}" for i in range(self.config.gpu_nodes)]
                self.create_gpu_nodes(names, self.config.gpu_node)
                self.wait_nodes_ready(names, max(1.0, deadline - time.monotonic()))
            if self.config.real_nodes:
                self.add_real_nodes(self.config.real_nodes, self.config.real_node_images)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every component (process groups, SIGTERM then SIGKILL), last started first."""
        self.stop_real_nodes()
        self._admin.close()
        for component in reversed(list(self.components.values())):
            stop_component(component)
        self.components.clear()

    def pids(self) -> dict[str, int]:
        """Process (and process group) id of each component (real nodes' containerd and kubelet included)."""
        pids = {name: c.pid for name, c in self.components.items()}
        for node in self.real_nodes:
            pids.update(node.pids())
        return pids

    # -- real nodes -----------------------------------------------------------------------------------------

    def add_real_nodes(
        self, count: int, images: Sequence[Path] = (), spec: GPUNodeSpec | None = None
    ) -> list[RealNode]:
        """Start `count` real kubelet nodes (`real-<i>`) on one pod bridge, wait until each is Ready."""
        nodes_dir = self.work_dir / "nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        if self.pod_network is None:
            self.pod_network = PodNetwork.create()
            (nodes_dir / "network.json").write_text(json.dumps(self.pod_network.to_json()))
        started = []
        for _ in range(count):
            index = len(self.real_nodes)
            node = RealNode(
                nodes_dir / f"real-{index}",
                self.kubeconfig,
                images,
                name=f"real-{index}",
                gpu=spec or self.config.gpu_node,
                network=self.pod_network,
                index=index,
                keep_images=self.config.keep_node_images,
            )
            node.start()
            self.real_nodes.append(node)
            started.append(node)
        return started

    def stop_real_nodes(self) -> None:
        """Stop every real node (last started first) and delete their pod bridge."""
        while self.real_nodes:
            self.real_nodes.pop().stop()
        if self.pod_network is not None:
            self.pod_network.delete()
            (self.work_dir / "nodes" / "network.json").unlink(missing_ok=True)
            self.pod_network = None

    # -- start-up steps -----------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("etcd-data", "pki", "apiserver-certs"):
            shutil.rmtree(self.work_dir / stale, ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._pki = generate_pki(self.work_dir / "pki")
        self.api_port = free_port()
        self.etcd_port = free_port()

    def _start(self, name: str, argv: Sequence[str]) -> None:
        self.components[name] = start_component(name, argv, self.log_dir)

    def _start_etcd(self) -> None:
        argv = etcd_argv(
            self.bin_dir, self.work_dir, self.etcd_port, free_port(), self.config.etcd_unsafe_no_fsync
        )
        self._start("etcd", argv)

    def _start_apiserver(self) -> None:
        argv = apiserver_argv(self.bin_dir, self.work_dir, self.api_port, self.etcd_port, self.pki)
        self._start("kube-apiserver", argv)

    def _component_kubeconfig(self, stem: str, user: str) -> Path:
        pki = self.pki
        return write_kubeconfig(
            self.work_dir / "kubeconfigs" / f"{stem}.kubeconfig",
            self.server,
            pki.ca.cert,
            pki.clients[stem],
            user,
        )

    def _start_controllers(self) -> None:
        pki = self.pki
        write_kubeconfig(self.kubeconfig, self.server, pki.ca.cert, pki.clients["admin"], "tidal-admin")
        cm = self._component_kubeconfig("controller-manager", "system:kube-controller-manager")
        sched = self._component_kubeconfig("scheduler", "system:kube-scheduler")
        kwok = self._component_kubeconfig("kwok", "kwok-controller")
        self._start("kube-controller-manager", controller_manager_argv(self.bin_dir, cm, pki, free_port()))
        self._start("kube-scheduler", scheduler_argv(self.bin_dir, sched, free_port()))
        self._start("kwok", kwok_argv(self.bin_dir, kwok))

    # -- readiness ----------------------------------------------------------------------------------

    def _wait(self, deadline: float, what: str, probe: Any) -> None:
        last_error = ""
        while time.monotonic() < deadline:
            self.raise_if_exited(ClusterStartError, what)
            try:
                if probe():
                    return
            except Exception as exc:  # any failure of a probe means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise ClusterStartError(
            f"timed out after {self.config.ready_timeout_s:.0f}s waiting for {what} ({last_error})\n"
            + self.logs_summary()
        )

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2) as resp:
            return b'"health":"true"' in resp.read()

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.pki
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        admin = pki.clients["admin"]
        context.load_cert_chain(str(admin.cert), str(admin.key))
        return context

    def _apiserver_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.server}/readyz", timeout=2, context=self._ssl_context()
            ) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return False

    def _default_service_account_exists(self) -> bool:
        self.core_v1().read_namespaced_service_account("default", "default")
        return True

    # -- clients and helpers --------------------------------------------------------------------------

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` authenticated as cluster admin (shared, closed on stop)."""
        return self._admin.client()

    def core_v1(self) -> Any:
        """A `kubernetes.client.CoreV1Api` on the admin client."""
        return self._admin.core_v1()

    def create_gpu_nodes(self, names: Sequence[str], spec: GPUNodeSpec | None = None) -> list[str]:
        """Create KWOK-managed fake GPU nodes (status included: capacity, allocatable, GPU labels)."""
        core = self.core_v1()
        for name in names:
            core.create_node(gpu_node_manifest(name, spec or self.config.gpu_node))
        return list(names)

    def delete_nodes(self, names: Sequence[str]) -> None:
        """Delete nodes by name, ignoring ones already gone."""
        from kubernetes.client.exceptions import ApiException

        core = self.core_v1()
        for name in names:
            try:
                core.delete_node(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def wait_nodes_ready(self, names: Sequence[str], timeout_s: float = 30.0) -> None:
        """Wait until every named node reports condition Ready=True (KWOK sets it)."""
        core = self.core_v1()
        deadline = time.monotonic() + timeout_s
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                node = core.read_node(name)
                conditions = node.status.conditions or []
                if any(c.type == "Ready" and c.status == "True" for c in conditions):
                    pending.discard(name)
            if pending:
                time.sleep(0.2)
        if pending:
            raise ClusterStartError(
                f"nodes not Ready after {timeout_s:.0f}s: {sorted(pending)}\n" + self.logs_summary()
            )

    def log_files(self) -> Iterator[Path]:
        """Every component log file."""
        return iter(sorted(self.log_dir.glob("*.log")))

    def logs_summary(self, lines: int = 30) -> str:
        """The last lines of every component log, for failure messages."""
        parts = []
        for path in self.log_files():
            parts.append(f"----- {path} (last {lines} lines) -----\n{tail(path, lines)}")
        parts.extend(node.logs_summary(lines) for node in self.real_nodes)
        return "\n".join(parts)
