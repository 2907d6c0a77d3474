"""Run the operator as the chart would: a ServiceAccount bound to exactly the chart's RBAC rules, and a
kubeconfig holding a token for it from the TokenRequest API.

The demo uses this so the operator it starts has the production permissions, not cluster-admin; the
control-plane test of the chart uses :func:`request_token` and :func:`token_kubeconfig` for the
ServiceAccount the chart itself created.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import yaml

RULES_FILE = Path(__file__).resolve().parents[3] / "helm" / "tidal" / "files" / "operator-rbac-rules.yaml"
"""The one list of the operator's permissions (in a source checkout)."""


def _ignore_conflict(call: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        if exc.status != 409:
            raise


def install_operator_identity(
    api_client: Any, rules: list[dict[str, Any]], namespace: str, account: str
) -> None:
    """Namespace, ServiceAccount, ClusterRole ``account`` with ``rules`` and its binding (idempotent)."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    rbac: Any = client.RbacAuthorizationV1Api(api_client)
    _ignore_conflict(lambda: core.create_namespace({"metadata": {"name": namespace}}))
    _ignore_conflict(
        lambda: core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    )
    _ignore_conflict(lambda: rbac.create_cluster_role({"metadata": {"name": account}, "rules": rules}))
    _ignore_conflict(
        lambda: rbac.create_cluster_role_binding(
            {
                "metadata": {"name": account},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": account},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            }
        )
    )


def request_token(
    api_client: Any, namespace: str, account: str, seconds: int = 86400, timeout_s: float = 30.0
) -> str:
    """A bound token for the ServiceAccount from the TokenRequest API (retried while the account appears)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core: Any = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = core.create_namespaced_service_account_token(
                account, namespace, {"spec": {"expirationSeconds": seconds}}
            )
            return str(answer.status.token)
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def admin_server_and_ca(kubeconfig: Path) -> tuple[str, str]:
    """(server URL, base64 CA data) of the current context's cluster in an admin kubeconfig."""
    config = yaml.safe_load(kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
    cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"]
    ca = cluster.get("certificate-authority-data")
    if ca is None:
        ca = base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()
    return str(cluster["server"]), str(ca)


def token_kubeconfig(path: Path, server: str, ca_data: str, user: str, token: str) -> Path:
    """Write a kubeconfig that authenticates as ``user`` with a bearer token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "tidal-dev",
                        "cluster": {"server": server, "certificate-authority-data": ca_data},
                    }
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": user, "context": {"cluster": "tidal-dev", "user": user}}],
                "current-context": user,
            },
            sort_keys=False,
        )
    )
    path.chmod(0o600)
    return path


def load_rules(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    """The chart's RBAC rules."""
    rules: list[dict[str, Any]] = yaml.safe_load(path.read_text())
    return rules
