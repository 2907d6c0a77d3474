"""Plan the deployment's worker-code ConfigMap (docs/adr/0002-worker-code-on-stock-images.md).

Its own module so the reconcile plan only asks "what to apply and delete" for it. The ConfigMap is applied
when it is missing, carries another code hash (a new operator version) or lost its labels or owner; any other
worker-code ConfigMap of the deployment (none is wanted when the operator ships no code) is deleted. The
index keeps the ConfigMap without its data (about 75 KB), so it is compared by its hash annotation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tidal.api import LLMDeployment
from tidal.builders.names import COMPONENT_LABEL
from tidal.builders.pods import owner_reference
from tidal.builders.workercode import (
    CODE_COMPONENT,
    CODE_HASH_ANNOTATION,
    WorkerCode,
    build_worker_code_config_map,
)
from tidal.plan.types import ObjectRef


def _stale(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    if observed is None:
        return True
    want, have = desired["metadata"], observed.get("metadata", {})
    if (have.get("annotations") or {}).get(CODE_HASH_ANNOTATION) != want["annotations"][CODE_HASH_ANNOTATION]:
        return True
    labels = have.get("labels") or {}
    if any(labels.get(k) != v for k, v in want["labels"].items()):
        return True
    return want["ownerReferences"][0]["uid"] not in {r.get("uid") for r in have.get("ownerReferences") or []}


def plan_worker_code(
    deployment: LLMDeployment, code: WorkerCode | None, observed: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[ObjectRef]]:
    """(ConfigMaps to apply, ConfigMaps to delete) for ``deployment`` given the code the pods mount."""
    name = deployment.metadata.name or ""
    ns = deployment.metadata.namespace or "default"
    wanted = build_worker_code_config_map(name, ns, owner_reference(deployment), code) if code else None
    mine = [
        o
        for o in observed
        if (o.get("metadata", {}).get("labels") or {}).get(COMPONENT_LABEL) == CODE_COMPONENT
    ]
    wanted_name = wanted["metadata"]["name"] if wanted else None
    delete = [
        ObjectRef(
            "v1", "ConfigMap", ns, str(m["metadata"].get("name")), m["metadata"].get("uid"), "not mounted"
        )
        for m in mine
        if m["metadata"].get("name") != wanted_name
    ]
    current = next((m for m in mine if m["metadata"].get("name") == wanted_name), None)
    apply = [wanted] if wanted is not None and _stale(wanted, current) else []
    return apply, delete
