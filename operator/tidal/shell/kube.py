"""The operator's Kubernetes client wrapper: server-side apply with one field manager, deletes with a UID
precondition, and status merge-patches. Every request is counted (``tidal_kube_requests_total``), so tests
and the benchmark can show that a steady state makes no API calls.

Synchronous (the official client); the handlers call it through ``asyncio.to_thread``. Reads never go
through here: the handlers observe children from kopf's watch-fed indexes. Responses are not deserialised
(``_preload_content=False``), but their bodies are read and their connections go back to the pool, so requests
reuse kept-alive TLS connections instead of opening one each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tidal.api import GROUP, PLURAL, VERSION
from tidal.builders.names import MANAGER
from tidal.plan.types import ObjectRef
from tidal.shell.metrics import KUBE_REQUESTS

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
POOL_CONNECTIONS = 40
"""Kept-alive connections: one for each thread that calls the API (the handlers' 32 API threads, the ClusterIP
and Event lanes); beyond it, connections are opened and discarded."""


def _release(response: Any) -> None:
    """Read the raw response and return its connection to the pool (an unread response keeps it)."""
    with contextlib.suppress(Exception):
        response.read()
        response.release_conn()


def make_api_client(kubeconfig: str | Path | None = None) -> Any:
    """An ApiClient from ``kubeconfig``, the default kubeconfig, or the in-cluster service account."""
    cfg = client.Configuration()
    cfg.connection_pool_maxsize = POOL_CONNECTIONS
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        return client.ApiClient(cfg)
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


class Kube:
    """Writes on behalf of the reconcile."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def _count(self, verb: str, resource: str, namespace: str) -> None:
        KUBE_REQUESTS.labels(verb, resource, namespace).inc()

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply ``obj`` as field manager ``tidal-operator`` (create or update, idempotent)."""
        kind = obj["kind"]
        meta = obj["metadata"]
        patchers: dict[str, Callable[..., Any]] = {
            "Pod": self.core.patch_namespaced_pod,
            "Service": self.core.patch_namespaced_service,
            "PodDisruptionBudget": self.policy.patch_namespaced_pod_disruption_budget,
        }
        self._count("apply", kind.lower(), meta["namespace"])
        response = patchers[kind](
            meta["name"],
            meta["namespace"],
            dict(obj),
            field_manager=MANAGER,
            force=True,
            _content_type=APPLY,
            _preload_content=False,
        )
        _release(response)

    def delete(self, ref: ObjectRef) -> bool:
        """Delete ``ref`` if it still is the object with ``ref.uid``; ``False`` when already gone/replaced."""
        deleters: dict[str, Callable[..., Any]] = {
            "Pod": self.core.delete_namespaced_pod,
            "Service": self.core.delete_namespaced_service,
            "PodDisruptionBudget": self.policy.delete_namespaced_pod_disruption_budget,
        }
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=ref.uid) if ref.uid else None,
            propagation_policy="Background",
        )
        self._count("delete", ref.kind.lower(), ref.namespace)
        try:
            _release(deleters[ref.kind](ref.name, ref.namespace, body=options, _preload_content=False))
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the LLMDeployment's status subresource."""
        self._count("patch", "llmdeployments/status", namespace)
        response = self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE,
            _preload_content=False,
        )
        _release(response)

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create a core/v1 Event."""
        self._count("create", "events", namespace)
        event = client.CoreV1Event.from_dict(dict(body))
        assert event is not None
        _release(self.core.create_namespaced_event(namespace, event, _preload_content=False))
