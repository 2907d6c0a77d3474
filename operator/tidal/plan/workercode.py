"""Plan the namespace's worker-code ConfigMap (docs/adr/0002-worker-code-on-stock-images.md).

Its own module so the reconcile plan only asks "what to apply and delete" for it. The ConfigMap of the code
the pods mount (``tidal-worker-code-<hash>``, shared by the namespace's deployments) is applied when it is
missing or lost its labels. Deleted:

* this deployment's own worker-code ConfigMap from before they were shared (labelled with the deployment);
* a shared one of another code version (an earlier operator) once no pod of the namespace mounts it: the
  caller says which code hashes the namespace's pods carry, and asks only when such a ConfigMap exists.

The index keeps the ConfigMaps without their data (about 75 KB), so they are compared by name and labels.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from tidal.api import LLMDeployment
from tidal.builders.names import COMPONENT_LABEL, DEPLOYMENT_LABEL, label_value
from tidal.builders.workercode import (
    CODE_COMPONENT,
    CODE_HASH_ANNOTATION,
    WorkerCode,
    build_worker_code_config_map,
)
from tidal.plan.types import ObjectRef

HashesInUse = Callable[[], Collection[str]]
"""The code hashes the namespace's worker pods carry (asked only when an older shared ConfigMap exists)."""


def _stale(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    if observed is None:
        return True
    labels = observed.get("metadata", {}).get("labels") or {}
    return any(labels.get(k) != v for k, v in desired["metadata"]["labels"].items())


def _ref(namespace: str, meta: Mapping[str, Any], reason: str) -> ObjectRef:
    return ObjectRef("v1", "ConfigMap", namespace, str(meta.get("name")), meta.get("uid"), reason)


def plan_worker_code(
    deployment: LLMDeployment,
    code: WorkerCode | None,
    observed: Sequence[Mapping[str, Any]],
    hashes_in_use: HashesInUse = frozenset,
) -> tuple[list[dict[str, Any]], list[ObjectRef]]:
    """(ConfigMaps to apply, ConfigMaps to delete) for ``deployment`` given the code its pods mount and the
    worker-code ConfigMaps observed: the deployment's own and the namespace's shared ones."""
    ns = deployment.metadata.namespace or "default"
    mine = label_value(deployment.metadata.name or "")
    wanted = build_worker_code_config_map(ns, code) if code else None
    wanted_name = wanted["metadata"]["name"] if wanted else None
    apply: list[dict[str, Any]] = []
    delete: list[ObjectRef] = []
    older: list[Mapping[str, Any]] = []
    current = None
    for obj in observed:
        meta = obj.get("metadata", {})
        labels = meta.get("labels") or {}
        if labels.get(COMPONENT_LABEL) != CODE_COMPONENT:
            continue
        if labels.get(DEPLOYMENT_LABEL) == mine:
            delete.append(_ref(ns, meta, "per-deployment copy: the namespace's shared one replaces it"))
        elif DEPLOYMENT_LABEL in labels:
            continue  # another deployment's own copy: its reconcile deletes it
        elif meta.get("name") == wanted_name:
            current = obj
        else:
            older.append(meta)
    if older:
        in_use = set(hashes_in_use())
        delete.extend(
            _ref(ns, meta, "no pod mounts this code any more")
            for meta in older
            if (meta.get("annotations") or {}).get(CODE_HASH_ANNOTATION) not in in_use
        )
    if wanted is not None and _stale(wanted, current):
        apply.append(wanted)
    return apply, delete
