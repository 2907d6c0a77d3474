"""RBAC and authentication are enforced: a ServiceAccount bound to a narrow Role gets 403 outside it.

The operator's RBAC rules are only meaningful if the API server used in tests authorizes for real.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import ControlPlane


def _client_with_token(control_plane: ControlPlane, token: str) -> client.ApiClient:
    config = client.Configuration()
    config.host = control_plane.server
    config.ssl_ca_cert = str(control_plane.cluster.pki.ca.cert)
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(config)


def _status_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def test_narrow_role_is_enforced(control_plane: ControlPlane) -> None:
    ns = control_plane.create_namespace("rbac")
    other = control_plane.create_namespace("rbac-other")
    rbac = client.RbacAuthorizationV1Api(control_plane.api_client)
    try:
        control_plane.core.create_namespaced_service_account(ns, {"metadata": {"name": "reader"}})
        rbac.create_namespaced_role(
            ns,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": "reader-pod-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
            },
        )
        token = control_plane.core.create_namespaced_service_account_token(
            "reader", ns, {"spec": {"expirationSeconds": 600}}
        ).status.token

        with _client_with_token(control_plane, token) as api:
            core = client.CoreV1Api(api)
            # Inside the Role.
            assert _status_of(lambda: core.list_namespaced_pod(ns)) == 200
            # Outside it: another verb, another resource, another namespace, a cluster-scoped resource.
            cm = {"metadata": {"name": "x"}}
            assert _status_of(lambda: core.create_namespaced_config_map(ns, cm)) == 403
            assert _status_of(lambda: core.list_namespaced_secret(ns)) == 403
            assert _status_of(lambda: core.list_namespaced_pod(other)) == 403
            assert _status_of(lambda: core.list_node()) == 403
            with pytest.raises(ApiException) as denied:
                core.list_namespaced_pod(other)
            assert f"system:serviceaccount:{ns}:reader" in str(denied.value.body)

        with _client_with_token(control_plane, token[:-4] + "AAAA") as api:
            # A tampered token is not authenticated at all.
            assert _status_of(lambda: client.CoreV1Api(api).list_namespaced_pod(ns)) == 401
    finally:
        control_plane.core.delete_namespace(ns)
        control_plane.core.delete_namespace(other)
