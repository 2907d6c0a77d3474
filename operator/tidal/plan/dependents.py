"""The objects around a deployment's replicas: the API Service, a headless Service per Ray group, the
disruption budget and the worker-code ConfigMap; each applied when missing or changed and deleted when no
longer wanted.

It exists apart from :mod:`tidal.plan.reconcile` because these objects follow from the replicas the plan
keeps and creates, not from the running counts the replica steps share; the reconcile calls
:func:`plan_dependents` once per pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tidal.api import LLMDeployment
from tidal.builders.services import build_api_service, build_group_service, build_pdb, pdb_min_available
from tidal.plan.replicas import ReplicaView
from tidal.plan.target import Target
from tidal.plan.types import ObjectRef, Observed, Plan
from tidal.plan.workercode import plan_worker_code


def _contains(observed: Any, desired: Any) -> bool:
    """``desired`` is a sub-document of ``observed`` (server defaults on top are fine)."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            _contains(observed.get(k), v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(_contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    return bool(observed == desired)


def _needs_apply(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    if observed is None:
        return True
    d_meta, o_meta = desired["metadata"], observed.get("metadata", {})
    if not _contains(o_meta.get("labels") or {}, d_meta.get("labels") or {}):
        return True
    uids = {r.get("uid") for r in o_meta.get("ownerReferences") or []}
    if not {r["uid"] for r in d_meta.get("ownerReferences", [])} <= uids:
        return True
    return not _contains(observed.get("spec") or {}, desired.get("spec") or {})


def plan_dependents(
    plan: Plan,
    deployment: LLMDeployment,
    observed: Observed,
    target: Target,
    views: Mapping[int, ReplicaView],
    created: Sequence[int],
    desired: int,
) -> None:
    """Add to ``plan`` what the replicas need around them: the API Service, a headless Service per Ray
    group (``created``: the replica indices this plan creates), the disruption budget for ``desired``
    replicas and the worker-code ConfigMap; and delete those no longer wanted."""
    ns = deployment.metadata.namespace or "default"
    by_name = {s.get("metadata", {}).get("name"): s for s in observed.services}
    wanted = [build_api_service(deployment)]
    # A group's headless Service lives as long as any of its pods (terminating ones included).
    group_indices = sorted(
        {v.index for v in views.values() if v.group_size > 1}
        | (set(created) if target.group_size > 1 else set())
    )
    wanted.extend(build_group_service(deployment, i) for i in group_indices)
    wanted_names = {s["metadata"]["name"] for s in wanted}
    plan.apply.extend(s for s in wanted if _needs_apply(s, by_name.get(s["metadata"]["name"])))
    for svc_name, svc in by_name.items():
        if svc_name not in wanted_names:
            meta = svc.get("metadata", {})
            plan.delete.append(ObjectRef("v1", "Service", ns, str(svc_name), meta.get("uid"), "group gone"))
    # A budget only while it protects something: with one replica (or none) minAvailable would be 0, a PDB
    # that allows every eviction and still costs an object, its status updates and their watch events.
    pdb = build_pdb(deployment, desired, target.group_size) if pdb_min_available(desired, 1) > 0 else None
    for observed_pdb in observed.pdbs:
        meta = observed_pdb.get("metadata", {})
        if pdb is None or meta.get("name") != pdb["metadata"]["name"]:
            reason = "one replica or none: nothing to protect"
            plan.delete.append(
                ObjectRef(
                    "policy/v1", "PodDisruptionBudget", ns, str(meta.get("name")), meta.get("uid"), reason
                )
            )
    pdbs = {p.get("metadata", {}).get("name"): p for p in observed.pdbs}
    if pdb is not None and _needs_apply(pdb, pdbs.get(pdb["metadata"]["name"])):
        plan.apply.append(pdb)
    # The worker's code the pods mount (stock vLLM image), shared by the namespace's deployments.
    code_apply, code_delete = plan_worker_code(
        deployment, target.inputs.config.worker_code, observed.config_maps, observed.code_hashes_in_use
    )
    plan.apply.extend(code_apply)
    plan.delete.extend(code_delete)
