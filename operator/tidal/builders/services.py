"""The objects around the worker pods: the Service clients and Prometheus use, the headless Service that
lets the members of a Ray group find their head, and the PodDisruptionBudget that keeps voluntary
disruptions (node drains) to one replica at a time.
"""

from __future__ import annotations

from typing import Any

from tidal.api import LLMDeployment
from tidal.builders.contract import DEFAULT_PORT
from tidal.builders.names import (
    COMPONENT_LABEL,
    REPLICA_LABEL,
    ROLE_LABEL,
    ROLE_RAY_HEAD,
    api_service_name,
    deployment_labels,
    deployment_selector,
    group_service_name,
    label_value,
    pdb_name,
    serving_selector,
)
from tidal.builders.pods import PORT_NAME, RAY_GCS_PORT, owner_reference

METRICS_SERVICE_PORT = 9090
"""Service port named ``metrics`` (same container port: the worker serves /metrics next to the API)."""


def _meta(deployment: LLMDeployment, name: str, component: str) -> dict[str, Any]:
    dname = deployment.metadata.name or ""
    return {
        "name": name,
        "namespace": deployment.metadata.namespace or "default",
        "labels": {**deployment_labels(dname), COMPONENT_LABEL: component},
        "ownerReferences": [owner_reference(deployment)],
    }


def build_api_service(deployment: LLMDeployment) -> dict[str, Any]:
    """``<name>:8000`` (OpenAI API) and ``<name>:9090`` (``metrics``, for a ServiceMonitor) over the serving
    pod of every ready replica."""
    dname = deployment.metadata.name or ""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(deployment, api_service_name(dname), "api"),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(dname),
            "ports": [
                {"name": PORT_NAME, "port": DEFAULT_PORT, "targetPort": PORT_NAME, "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"},
            ],
        },
    }


def build_group_service(deployment: LLMDeployment, replica: int) -> dict[str, Any]:
    """Headless Service ``<name>-r<i>-head`` resolving to the Ray head of group ``i``; it publishes the head
    before it is ready, because the head only turns ready once its workers have joined."""
    dname = deployment.metadata.name or ""
    meta = _meta(deployment, group_service_name(dname, replica), "ray-head")
    meta["labels"][REPLICA_LABEL] = str(replica)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {
                **deployment_selector(dname),
                REPLICA_LABEL: str(replica),
                ROLE_LABEL: ROLE_RAY_HEAD,
            },
            "ports": [
                {"name": "ray-gcs", "port": RAY_GCS_PORT, "targetPort": RAY_GCS_PORT, "protocol": "TCP"}
            ],
        },
    }


def pdb_min_available(replicas: int, group_size: int) -> int:
    """Pods that must stay up: all but one replica's pods (0 for a single replica, so node drains are never
    blocked forever; the drain itself is graceful)."""
    return max(0, replicas - 1) * group_size


def build_pdb(deployment: LLMDeployment, replicas: int, group_size: int) -> dict[str, Any]:
    """A PodDisruptionBudget over every worker pod: at most one replica disrupted voluntarily at a time.
    An integer ``minAvailable`` keeps the disruption controller from needing a scale of the pods' owner."""
    dname = deployment.metadata.name or ""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(deployment, pdb_name(dname), "disruption-budget"),
        "spec": {
            "minAvailable": pdb_min_available(replicas, group_size),
            "selector": {"matchLabels": deployment_selector(dname)},
        },
    }


__all__ = [
    "METRICS_SERVICE_PORT",
    "build_api_service",
    "build_group_service",
    "build_pdb",
    "label_value",
    "pdb_min_available",
]
