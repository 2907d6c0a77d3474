"""Session-scoped pytest fixture: a real Kubernetes control plane for the `controlplane` tier.

Loaded for every test through `pytest_plugins` in tests/conftest.py; request `control_plane` from any test.
It starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK once per session
(tidal.devcluster), in a temporary directory, and stops them at the end. When the binaries are missing the
fixture FAILS, telling you to run `make controlplane`: CI must never skip this tier silently. When a test
using the fixture fails, the tails of the component logs are attached to its report.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tidal.devcluster import (
    ClusterConfig,
    ClusterStartError,
    ControlPlaneNotBuiltError,
    DevCluster,
    GPUNodeSpec,
    find_bin_dir,
)

_ACTIVE: list[DevCluster] = []


@dataclass
class ControlPlane:
    """What tests get from the `control_plane` fixture."""

    cluster: DevCluster
    kubeconfig: Path
    api_client: Any
    """kubernetes.client.ApiClient authenticated as cluster admin."""
    core: Any
    """kubernetes.client.CoreV1Api on `api_client`."""
    _nodes: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        """The API server URL."""
        return self.cluster.server

    @property
    def bin_dir(self) -> Path:
        """Directory of the control plane binaries."""
        return self.cluster.bin_dir

    @property
    def apps(self) -> Any:
        """kubernetes.client.AppsV1Api."""
        from kubernetes import client

        return client.AppsV1Api(self.api_client)

    def create_gpu_nodes(
        self,
        count: int,
        spec: GPUNodeSpec | None = None,
        prefix: str = "gpu",
        labels: dict[str, str] | None = None,
    ) -> list[str]:
        """Create `count` KWOK fake GPU nodes with unique names, wait until they are Ready, return the names.

        `labels` are added to each node, so a test can pin its pods to its own nodes with a nodeSelector.
        """
        base = spec or GPUNodeSpec()
        if labels:
            base = GPUNodeSpec(
                gpu_product=base.gpu_product,
                gpus=base.gpus,
                cpu=base.cpu,
                memory=base.memory,
                pods=base.pods,
                extra_labels=base.extra_labels + tuple(labels.items()),
            )
        suffix = uuid.uuid4().hex[:6]
        names = [f"{prefix}-{suffix}-{i}" for i in range(count)]
        self.cluster.create_gpu_nodes(names, base)
        self._nodes.extend(names)
        self.cluster.wait_nodes_ready(names, timeout_s=60)
        return names

    def delete_nodes(self, names: Sequence[str]) -> None:
        """Delete nodes created by a test."""
        self.cluster.delete_nodes(names)

    def create_namespace(self, prefix: str = "t") -> str:
        """Create a namespace with a unique name and wait for its default ServiceAccount."""
        from kubernetes.client.exceptions import ApiException

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name}})
        deadline = time.monotonic() + 30
        while True:
            try:
                self.core.read_namespaced_service_account("default", name)
                return name
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def logs(self, lines: int = 40) -> str:
        """Tails of every component log."""
        return self.cluster.logs_summary(lines)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane shared by the whole session (no nodes; tests create their own)."""
    problem = ""
    try:
        find_bin_dir()
    except ControlPlaneNotBuiltError as exc:
        problem = str(exc)
    if problem:  # failed outside the except block, so the report shows the message, not a chained trace
        pytest.fail(problem, pytrace=False)
    work = tmp_path_factory.mktemp("controlplane")
    cluster = DevCluster(ClusterConfig(work_dir=work, gpu_nodes=0))
    try:
        cluster.start()
    except ClusterStartError as exc:
        problem = f"control plane failed to start: {exc}"
    if problem:
        pytest.fail(problem, pytrace=False)
    print(
        f"\ncontrol plane ready in {cluster.startup_seconds:.1f}s at {cluster.server} "
        f"(logs {cluster.log_dir})"
    )
    _ACTIVE.append(cluster)
    try:
        yield ControlPlane(
            cluster=cluster,
            kubeconfig=cluster.kubeconfig,
            api_client=cluster.api_client(),
            core=cluster.core_v1(),
        )
    finally:
        _ACTIVE.remove(cluster)
        cluster.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Attach the component log tails to the report of a failed test that used the control plane."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _ACTIVE and "control_plane" in getattr(item, "fixturenames", ()):
        for cluster in _ACTIVE:
            report.sections.append((f"control plane logs ({cluster.log_dir})", cluster.logs_summary(40)))
