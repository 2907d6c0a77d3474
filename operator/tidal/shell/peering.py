"""kopf's peering resources (leader election between operator replicas): the two CRDs kopf uses and the
peering object ``tidal run --peering NAME`` joins. Kept here so the Helm chart and the tests install the
same thing. Only one operator in a peering with the highest priority acts; the others pause.
"""

from __future__ import annotations

from typing import Any

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
