"""kopf indexes: the operator's in-memory view of every LLMDeployment and of its children (worker pods,
Services, PodDisruptionBudgets) by deployment, of the worker-code ConfigMaps by namespace, and of the GPU
nodes, fed by kopf's watches.

Its own module because the indexes are what makes a reconcile free of reads (a steady state costs no API
requests) and what decides the operator's resident memory: each body is slimmed to what the reconcile reads
(no ``managedFields``, no kopf annotations that copy the spec) before kopf keeps it. Importing this module
registers the index handlers with kopf.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from tidal.api import GROUP, PLURAL, VERSION
from tidal.builders.gpus import GPU_RESOURCE
from tidal.builders.names import DEPLOYMENT_LABEL, NAME_LABEL, WORKER_APP, label_value
from tidal.builders.workercode import CODE_HASH_ANNOTATION
from tidal.plan import NodeInfo
from tidal.plan.replicas import container_gpus

WORKER_SELECTOR: Final = {NAME_LABEL: WORKER_APP}
INDEX_NAMES: Final = (
    "llmd_index",
    "pod_index",
    "service_index",
    "pdb_index",
    "config_map_index",
    "node_index",
)
"""The keyword arguments under which kopf hands the indexes to every handler."""

Key = tuple[str, str]
"""(namespace, label value of the deployment name); ``(namespace, "")`` for what the namespace's deployments
share (the worker-code ConfigMap)."""

_POD_META: Final = ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp")
_POD_STATUS: Final = ("phase", "reason", "conditions", "containerStatuses", "initContainerStatuses")
_CHILD_META: Final = ("name", "namespace", "uid", "labels", "ownerReferences", "deletionTimestamp")
"""What the reconcile compares of a Service or PDB besides its spec (not ``managedFields``: ~2 KiB each)."""
_LLMD_META: Final = (
    "name",
    "namespace",
    "uid",
    "generation",
    "labels",
    "creationTimestamp",
    "deletionTimestamp",
)
"""The metadata the reconcile reads (not ``managedFields`` or kopf's annotations, which copy the spec)."""


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconcile and the autoscaler read of a worker pod."""
    meta = body.get("metadata", {})
    status = body.get("status", {}) or {}
    spec = body.get("spec", {}) or {}
    slim_meta = {k: meta.get(k) for k in _POD_META if meta.get(k) is not None}
    code_hash = (meta.get("annotations") or {}).get(CODE_HASH_ANNOTATION)
    if code_hash is not None:  # which shared worker-code ConfigMap it mounts
        slim_meta["annotations"] = {CODE_HASH_ANNOTATION: code_hash}
    return {
        "metadata": slim_meta,
        "status": {k: status.get(k) for k in _POD_STATUS if status.get(k) is not None},
        # Where it runs and the GPUs it holds: the autoscaler's free-GPU arithmetic.
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": [
                {"resources": {"requests": {GPU_RESOURCE: container_gpus(c)}}}
                for c in spec.get("containers") or []
            ],
        },
    }


def slim_child(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconcile compares of a Service or PodDisruptionBudget."""
    meta = body.get("metadata", {})
    return {
        "metadata": {k: meta.get(k) for k in _CHILD_META if meta.get(k) is not None},
        "spec": dict(body.get("spec", {}) or {}),
    }


def slim_deployment(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconcile reads of an LLMDeployment."""
    meta = body.get("metadata", {})
    slim: dict[str, Any] = {
        k: body.get(k) for k in ("apiVersion", "kind", "spec", "status") if body.get(k) is not None
    }
    slim["metadata"] = {k: meta.get(k) for k in _LLMD_META if meta.get(k) is not None}
    return slim


@kopf.index(GROUP, VERSION, PLURAL)
async def llmd_index(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Latest LLMDeployment bodies by key (slim: what the reconcile reads)."""
    return {(namespace or "", label_value(name)): slim_deployment(body)}


@kopf.index("pods", labels=WORKER_SELECTOR)
async def pod_index(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[Key, dict[str, Any]]:
    """Worker pods by owning deployment."""
    return {(namespace or "", labels.get(DEPLOYMENT_LABEL, "")): slim_pod(body)}


@kopf.index("services", labels=WORKER_SELECTOR)
async def service_index(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[Key, dict[str, Any]]:
    """Services by owning deployment."""
    return {(namespace or "", labels.get(DEPLOYMENT_LABEL, "")): slim_child(body)}


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=WORKER_SELECTOR)
async def pdb_index(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[Key, dict[str, Any]]:
    """PodDisruptionBudgets by owning deployment."""
    return {(namespace or "", labels.get(DEPLOYMENT_LABEL, "")): slim_child(body)}


@kopf.index("configmaps", labels=WORKER_SELECTOR)
async def config_map_index(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[Key, dict[str, Any]]:
    """The worker-code ConfigMaps: the namespace's shared ones under ``(namespace, "")``, a deployment's own
    (from before they were shared) under its key; metadata only (the ~75 KB of data stays out of memory)."""
    meta = body.get("metadata", {})
    slim = {k: meta.get(k) for k in (*_CHILD_META, "annotations") if meta.get(k) is not None}
    return {(namespace or "", labels.get(DEPLOYMENT_LABEL, "")): {"metadata": slim}}


@kopf.index("nodes")
async def node_index(
    body: kopf.Body, name: str, labels: Mapping[str, str], spec: kopf.Spec, **_: Any
) -> dict[None, NodeInfo]:
    """GPU capacity of every node, for the planner's GPU arithmetic."""
    alloc = (body.get("status", {}) or {}).get("allocatable", {}) or {}
    try:
        gpus = int(alloc.get(GPU_RESOURCE, 0))
    except (TypeError, ValueError):
        gpus = 0
    return {None: NodeInfo(name, dict(labels), gpus, not spec.get("unschedulable", False))}


def values(index: kopf.Index[Key, dict[str, Any]], key: Key) -> list[dict[str, Any]]:
    """The objects an index holds under ``key`` (none: an empty list)."""
    store = index.get(key)
    return list(store) if store is not None else []


def namespace_code_hashes(pod_index: kopf.Index[Key, dict[str, Any]], namespace: str) -> set[str]:
    """The worker-code hashes the worker pods of ``namespace`` carry (reads every deployment's pods there)."""
    return {
        h
        for key in list(pod_index)
        if key[0] == namespace
        for pod in values(pod_index, key)
        if (h := (pod["metadata"].get("annotations") or {}).get(CODE_HASH_ANNOTATION))
    }


def indexes_of(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The indexes among a handler's keyword arguments."""
    return {k: kwargs[k] for k in INDEX_NAMES}


__all__ = [
    "INDEX_NAMES",
    "WORKER_SELECTOR",
    "Key",
    "config_map_index",
    "indexes_of",
    "llmd_index",
    "namespace_code_hashes",
    "node_index",
    "pdb_index",
    "pod_index",
    "service_index",
    "slim_child",
    "slim_deployment",
    "slim_pod",
    "values",
]
