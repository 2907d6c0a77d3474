"""Run the real operator (``.venv/bin/tidal run``) as a subprocess under its production RBAC identity.

The fixture installs the LLMDeployment CRD and kopf's peering CRDs (as admin), creates a ServiceAccount bound
to exactly the rules in helm/tidal/files/operator-rbac-rules.yaml, writes a kubeconfig with that account's
token, and starts the operator with it: the tests exercise the same permissions a cluster gives the chart's
operator, never admin. ``OperatorProcess`` can be killed and restarted, and reads the operator's own metrics
(``tidal_kube_requests_total`` counts every API request the reconciles make).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import ControlPlane
from tidal.devcluster.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "llmdeployments.tidal.dev.yaml"
RULES_PATH = ROOT / "helm" / "tidal" / "files" / "operator-rbac-rules.yaml"
TIDAL = Path(sys.executable).parent / "tidal"
SYSTEM_NS = "tidal-system"
ACCOUNT = "tidal-operator"


def spawn_until_healthy(
    argv: list[str], env: dict[str, str], log_path: Path, health_port: int, header: str, timeout: float
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (own session, output appended to ``log_path`` after ``header``; ``KUBECONFIG`` from the
    test runner's environment dropped) and wait until its ``/healthz`` on ``health_port`` answers 200.
    Raises with the log's tail when it exits or stays unhealthy."""
    log = log_path.open("ab")
    log.write(f"{header}{' '.join(argv)}\n".encode())
    log.flush()
    full_env = {**{k: v for k, v in os.environ.items() if k != "KUBECONFIG"}, **env}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited with {proc.returncode}:\n{tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"operator not healthy after {timeout}s:\n{tail()}")


def install_crds(cp: ControlPlane) -> None:
    """The LLMDeployment CRD and kopf's peering CRDs, Established (idempotent)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from tidal.shell.peering import PEERING_CRDS

    ext = client.ApiextensionsV1Api(cp.api_client)
    docs = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d] + PEERING_CRDS
    for doc in docs:
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
    for doc in docs:
        deadline = time.monotonic() + 30
        while True:
            conds = ext.read_custom_resource_definition(doc["metadata"]["name"]).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conds):
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)


def operator_kubeconfig(cp: ControlPlane, path: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount, bound to exactly the chart's rules."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    rbac = client.RbacAuthorizationV1Api(cp.api_client)
    for call in (
        lambda: cp.core.create_namespace({"metadata": {"name": SYSTEM_NS}}),
        lambda: cp.core.create_namespaced_service_account(SYSTEM_NS, {"metadata": {"name": ACCOUNT}}),
        lambda: rbac.create_cluster_role(
            {"metadata": {"name": ACCOUNT}, "rules": yaml.safe_load(RULES_PATH.read_text())}
        ),
        lambda: rbac.create_cluster_role_binding(
            {
                "metadata": {"name": ACCOUNT},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ACCOUNT},
                "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": SYSTEM_NS}],
            }
        ),
    ):
        try:
            call()
        except ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + 30
    while True:
        try:
            token = cp.core.create_namespaced_service_account_token(
                ACCOUNT, SYSTEM_NS, {"spec": {"expirationSeconds": 86400}}
            ).status.token
            break
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    import base64

    ca = base64.b64encode(cp.cluster.pki.ca.cert.read_bytes()).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "dev", "cluster": {"server": cp.server, "certificate-authority-data": ca}}
                ],
                "users": [{"name": ACCOUNT, "user": {"token": token}}],
                "contexts": [{"name": "operator", "context": {"cluster": "dev", "user": ACCOUNT}}],
                "current-context": "operator",
            }
        )
    )
    return path


@dataclass
class OperatorProcess:
    """One ``tidal run`` subprocess (restartable)."""

    kubeconfig: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the operator (e.g. ``TIDAL_AUTOSCALER_INTERVAL_SECONDS``)."""
    peering: str | None = None
    """Join this kopf peering (``--peering``) instead of running ``--standalone``."""
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    health_port: int = 0
    starts: int = 0

    def start(self, timeout: float = 60.0) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        argv = [
            str(TIDAL),
            "run",
            "--standalone" if self.peering is None else f"--peering={self.peering}",
            "--all-namespaces",
            f"--kubeconfig={self.kubeconfig}",
            f"--metrics-port={self.metrics_port}",
            "--metrics-address=127.0.0.1",
            f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
            *self.extra_args,
        ]
        self.starts += 1
        self.proc = spawn_until_healthy(
            argv, self.env, self.log_path, self.health_port, f"\n=== start {self.starts}: ", timeout
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the operator (SIGKILL by default: no clean shutdown, as in a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def logs(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
            if not m:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def api_requests(self, namespace: str | None = None) -> float:
        """API requests the reconciles made so far (this process), optionally for one namespace."""
        labels = {} if namespace is None else {"namespace": namespace}
        return self.metric("tidal_kube_requests_total", **labels)


@pytest.fixture(scope="module")
def operator_process(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator running under its RBAC identity for one test module."""
    install_crds(control_plane)
    work = tmp_path_factory.mktemp("operator")
    op = OperatorProcess(
        operator_kubeconfig(control_plane, work / "operator.kubeconfig"), work / "operator.log"
    )
    op.start()
    try:
        yield op
    finally:
        op.kill(signal.SIGTERM)
        print(f"\noperator log: {op.log_path}\n{op.logs(30)}")


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.3, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
