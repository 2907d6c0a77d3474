"""Names, labels and selectors of everything Tidal creates for an ``LLMDeployment``.

Object names are deterministic functions of the deployment name and the replica index, so a reconcile that
runs twice (or after the operator was killed half-way) addresses the same objects: server-side apply turns a
second create into a no-op instead of a duplicate. Names that must be DNS-1035 labels (Services) or label
values (63 characters) are shortened with a hash suffix when the deployment name is long.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
DEPLOYMENT_LABEL: Final = "tidal.dev/deployment"
REPLICA_LABEL: Final = "tidal.dev/replica"
MEMBER_LABEL: Final = "tidal.dev/member"
GROUP_SIZE_LABEL: Final = "tidal.dev/group-size"
"""Pods in the pod's replica (1, or the size of its Ray group): lets the planner see an incomplete group."""
ROLE_LABEL: Final = "tidal.dev/role"
SPEC_HASH_LABEL: Final = "tidal.dev/spec-hash"
SERVING_LABEL: Final = "tidal.dev/serving"
"""``"true"`` on the pod of a replica that serves the OpenAI API (a single pod, or a Ray head)."""
COMPONENT_LABEL: Final = "app.kubernetes.io/component"

WORKER_APP: Final = "tidal-worker"
MANAGER: Final = "tidal-operator"
"""Value of ``app.kubernetes.io/managed-by`` and the server-side-apply field manager."""

ROLE_SINGLE: Final = "single"
ROLE_RAY_HEAD: Final = "ray-head"
ROLE_RAY_WORKER: Final = "ray-worker"

_MAX_LABEL = 63


def _digest(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def label_value(name: str) -> str:
    """``name`` as a label value: itself when it fits in 63 characters, else a prefix plus a hash."""
    if len(name) <= _MAX_LABEL:
        return name
    return f"{name[: _MAX_LABEL - 7].rstrip('-.')}-{_digest(name)}"


def dns_label(name: str, suffix: str = "") -> str:
    """A DNS-1035 label (Service names): lower-case alphanumerics and ``-``, starts with a letter, at most
    63 characters, ending in ``suffix``; hashed when the deployment name had to be changed or cut."""
    base = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if not base or not base[0].isalpha():
        base = "d" + base
    full = f"{base}{suffix}"
    if full == f"{name}{suffix}" and len(full) <= _MAX_LABEL:
        return full
    keep = _MAX_LABEL - len(suffix) - 7
    return f"{base[:keep].rstrip('-')}-{_digest(name)}{suffix}"


def pod_name(deployment: str, replica: int, member: int, group_size: int) -> str:
    """``<name>-r<replica>`` for a one-pod replica, ``<name>-r<replica>-<member>`` in a Ray group
    (member 0 is the head)."""
    base = f"{deployment}-r{replica}"
    name = base if group_size == 1 else f"{base}-{member}"
    if len(name) > 253:
        name = f"{deployment[:200]}-{_digest(deployment)}-r{replica}" + (
            "" if group_size == 1 else f"-{member}"
        )
    return name


def api_service_name(deployment: str) -> str:
    """The OpenAI API Service: ``http://<name>:8000`` inside the namespace."""
    return dns_label(deployment)


def group_service_name(deployment: str, replica: int) -> str:
    """The headless Service of a Ray group; its DNS name is the Ray head address."""
    return dns_label(deployment, f"-r{replica}-head")


def pdb_name(deployment: str) -> str:
    """The PodDisruptionBudget of a deployment's workers."""
    return deployment if len(deployment) <= 253 else f"{deployment[:240]}-{_digest(deployment)}"


def deployment_labels(deployment: str) -> dict[str, str]:
    """Labels every child object carries (and that the operator's pod watch filters on)."""
    value = label_value(deployment)
    return {
        NAME_LABEL: WORKER_APP,
        INSTANCE_LABEL: value,
        MANAGED_BY_LABEL: MANAGER,
        DEPLOYMENT_LABEL: value,
    }


def shared_labels() -> dict[str, str]:
    """Labels of a child shared by every deployment of a namespace (the worker's code): the operator's watch
    sees it, under no deployment."""
    return {NAME_LABEL: WORKER_APP, MANAGED_BY_LABEL: MANAGER}


def deployment_selector(deployment: str) -> dict[str, str]:
    """Selects every worker pod of a deployment (all replicas, all roles)."""
    return {NAME_LABEL: WORKER_APP, DEPLOYMENT_LABEL: label_value(deployment)}


def serving_selector(deployment: str) -> dict[str, str]:
    """Selects exactly one pod per replica: the one serving the OpenAI API (single pod or Ray head)."""
    return {**deployment_selector(deployment), SERVING_LABEL: "true"}


def selector_string(selector: dict[str, str]) -> str:
    """``k=v,k2=v2`` (sorted): the form of ``status.selector`` for the scale subresource."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
