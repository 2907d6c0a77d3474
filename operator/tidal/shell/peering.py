"""kopf's peering resources (leader election between operator replicas): the two CRDs kopf uses and the
peering object ``tidal run --peering NAME`` joins. Kept here so the Helm chart and the tests install the
same thing. Only one operator in a peering with the highest priority acts; the others pause.

:func:`resolve_peering` decides at start-up whether ``tidal run`` joins a peering: a name given with
``--peering`` is always joined (absent, the operator stays paused until it is created, as kopf's mandatory
peering); without one, the default ``tidal`` peering is joined when it exists, and the operator runs
standalone (one warning line) when it does not - a cluster with only the LLMDeployment CRD just works.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes.client.exceptions import ApiException

from tidal.shell.kube import Kube, api_error_text

log = logging.getLogger("tidal.operator")

DEFAULT_PEERING = "tidal"


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "scope": scope,
            "group": "kopf.dev",
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }


PEERING_CRDS: list[dict[str, Any]] = [
    _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
    _crd("KopfPeering", "kopfpeerings", "Namespaced"),
]


def peering_object(name: str = DEFAULT_PEERING, namespace: str | None = None) -> dict[str, Any]:
    """The (Cluster)KopfPeering the operators of one installation share."""
    if namespace is None:
        return {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    return {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": name, "namespace": namespace},
    }


def peering_present(kube: Kube, name: str, namespaces: list[str]) -> bool:
    """Whether the (Cluster)KopfPeering ``name`` exists (in any of ``namespaces``, when given). A 404 (no
    kopf.dev CRD, or no object) is ``False``; any other API error is raised."""
    custom = kube.custom
    try:
        if not namespaces:
            custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
            return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    for ns in namespaces:
        try:
            custom.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", name)
            return True
        except ApiException as exc:
            if exc.status != 404:
                raise
    return False


def resolve_peering(kube: Kube, explicit: str | None, namespaces: list[str]) -> str | None:
    """The peering ``tidal run`` joins, or ``None`` for standalone. ``explicit`` (``--peering NAME``) is
    joined as given; otherwise :data:`DEFAULT_PEERING` when it exists, else standalone with one warning. An
    error other than 404 while looking joins the default (two operators must never both act)."""
    if explicit is not None:
        return explicit
    try:
        present = peering_present(kube, DEFAULT_PEERING, namespaces)
    except Exception as exc:
        log.warning(
            "could not look up the kopf peering %r (%s): joining it (pass --standalone to run alone)",
            DEFAULT_PEERING,
            api_error_text(exc),
        )
        return DEFAULT_PEERING
    if present:
        return DEFAULT_PEERING
    kind = "ClusterKopfPeering" if not namespaces else "KopfPeering"
    log.warning(
        "no kopf peering (%s %r, or its kopf.dev CRD, is absent): running standalone without leader "
        "election; run a single replica, or install the chart's peering to run several",
        kind,
        DEFAULT_PEERING,
    )
    return None
