"""The operator's Kubernetes client wrapper: server-side apply with one field manager, deletes with a UID
precondition, and status merge-patches. Every request is counted (``tidal_kube_requests_total``), so tests
and the benchmark can show that a steady state makes no API calls.

Synchronous (the official client's ``ApiClient``: its configuration, authentication and connection pool);
the handlers call it through ``asyncio.to_thread``. Reads never go through here: the handlers observe children
from kopf's watch-fed indexes. Responses are not deserialised, but their bodies are read and their connections
go back to the pool, so requests reuse kept-alive TLS connections instead of opening one each.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
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
JSON = "application/json"
PATHS = {
    "Pod": "/api/v1/namespaces/{namespace}/pods/{name}",
    "Service": "/api/v1/namespaces/{namespace}/services/{name}",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps/{name}",
}
"""Where each kind of child object lives."""
POOL_CONNECTIONS = 40
"""Kept-alive connections: one for each thread that calls the API (the handlers' 32 API threads, the ClusterIP
and Event lanes); beyond it, connections are opened and discarded."""


def _release(response: Any) -> None:
    """Read the response (the client's ``RESTResponse``) and return its connection to the pool (an unread
    response keeps it)."""
    with contextlib.suppress(Exception):
        response.read()
        response.response.release_conn()


def api_error_text(exc: BaseException) -> str:
    """One line for a log or a condition: an API error's status and reason (``404 Not Found``), never
    ``str(ApiException)``, which appends every HTTP response header and the body; other errors by class and
    their first line."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}".strip()
    first = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
    """Writes on behalf of the reconcile, as plain HTTP requests on the client's connection pool: the typed
    API classes (``CoreV1Api``, ...) import and build hundreds of model classes (~30 MiB resident) and
    validate every call's arguments; the reconcile's writes need neither. ``core`` and ``custom`` give the
    typed APIs to code that reads (the autoscaler), created on first use."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client

    @functools.cached_property
    def core(self) -> Any:
        """``CoreV1Api`` (created on first use)."""
        return client.CoreV1Api(self.api)

    @functools.cached_property
    def custom(self) -> Any:
        """``CustomObjectsApi`` (created on first use)."""
        return client.CustomObjectsApi(self.api)

    def _count(self, verb: str, resource: str, namespace: str) -> None:
        KUBE_REQUESTS.labels(verb, resource, namespace).inc()

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        body: Any,
        content_type: str = JSON,
        query: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """One request; raises :class:`ApiException` (with the API server's message) unless it succeeded."""
        request = self.api.param_serialize(
            method=method,
            resource_path=path,
            path_params=dict(params),
            query_params=list(query),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request)
        _release(response)
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply ``obj`` as field manager ``tidal-operator`` (create or update, idempotent)."""
        kind = obj["kind"]
        meta = obj["metadata"]
        self._count("apply", kind.lower(), meta["namespace"])
        self._request(
            "PATCH",
            PATHS[kind],
            {"namespace": meta["namespace"], "name": meta["name"]},
            dict(obj),
            APPLY,
            (("fieldManager", MANAGER), ("force", "true")),
        )

    def delete(self, ref: ObjectRef) -> bool:
        """Delete ``ref`` if it still is the object with ``ref.uid``; ``False`` when already gone/replaced."""
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if ref.uid:
            options["preconditions"] = {"uid": ref.uid}
        self._count("delete", ref.kind.lower(), ref.namespace)
        try:
            self._request("DELETE", PATHS[ref.kind], {"namespace": ref.namespace, "name": ref.name}, options)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the LLMDeployment's status subresource."""
        self._count("patch", "llmdeployments/status", namespace)
        self._request(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}/status",
            {"namespace": namespace, "name": name},
            {"status": dict(status)},
            MERGE,
        )

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create a core/v1 Event."""
        self._count("create", "events", namespace)
        event = {"apiVersion": "v1", "kind": "Event", **body}
        self._request("POST", "/api/v1/namespaces/{namespace}/events", {"namespace": namespace}, event)
