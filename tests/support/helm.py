"""Install the Helm chart on the local control plane with a real Helm engine, and run the operator as the
chart's ServiceAccount.

``helm-python-sdk`` (import ``helm_python``) embeds Helm v4's library: :func:`install_chart` is a real
``helm install`` (CRDs from ``crds/`` first, then the rendered templates, release stored as a Secret) against
the control plane's kubeconfig. The chart's operator Deployment cannot run on KWOK nodes (they run no
containers), so :class:`ChartOperator` runs ``tidal run`` locally with the *installed* Deployment's
arguments, authenticated with a TokenRequest token of the chart's ServiceAccount: the RBAC that decides is
the chart's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm

from tests.support.operator import spawn_until_healthy
from tidal.devcluster.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tidal"
TIDAL = Path(sys.executable).parent / "tidal"


def install_chart(
    kubeconfig: Path, release: str, namespace: str, values: dict[str, Any] | None = None, timeout: int = 120
) -> dict[str, Any]:
    """``helm install RELEASE helm/tidal -n NAMESPACE --create-namespace`` with ``values``; the release."""
    with helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
        release_info: dict[str, Any] = cfg.install(
            helm.Chart.load(CHART),
            release,
            values or {},
            namespace=namespace,
            create_namespace=True,
            timeout=timeout,
        )
        return release_info


def release_status(kubeconfig: Path, release: str, namespace: str) -> dict[str, Any]:
    with helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
        status: dict[str, Any] = cfg.status(release)
        return status


def uninstall_chart(kubeconfig: Path, release: str, namespace: str) -> None:
    with helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
        cfg.uninstall(release, ignore_not_found=True, timeout=120)


def local_args(container_args: list[str], kubeconfig: Path, health_port: int, metrics_port: int) -> list[str]:
    """The installed container's ``tidal`` arguments for a process on this machine: loopback ports and
    the ServiceAccount's kubeconfig instead of the in-cluster ones (everything else unchanged)."""
    out: list[str] = []
    for arg in container_args:
        if arg.startswith("--liveness="):
            out.append(f"--liveness=http://127.0.0.1:{health_port}/healthz")
        elif arg.startswith("--metrics-port="):
            out += [f"--metrics-port={metrics_port}", "--metrics-address=127.0.0.1"]
        else:
            out.append(arg)
    return [*out, f"--kubeconfig={kubeconfig}"]


@dataclass
class ChartOperator:
    """``tidal <args>`` as a subprocess (own process group), logs to ``log_path``."""

    argv: list[str]
    log_path: Path
    health_port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 60.0) -> None:
        self.proc = spawn_until_healthy(self.argv, self.env, self.log_path, self.health_port, "$ ", timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def logs(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def chart_operator(
    container: dict[str, Any], kubeconfig: Path, log_path: Path, priority: int
) -> ChartOperator:
    """The installed operator container as a local process (``priority`` stands in for the pod UID's)."""
    health, metrics = free_port(), free_port()
    args = local_args(list(container.get("args") or []), kubeconfig, health, metrics)
    if any(a.startswith("--peering=") for a in args):
        args.append(f"--priority={priority}")
    return ChartOperator([str(TIDAL), *args], log_path, health)
