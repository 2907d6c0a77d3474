"""The operator-level custom GPU catalogue: a ConfigMap read once at start and merged over the built-in
catalogue, for scheduling (node product labels) and the recommender (sizing) alike.

Why a ConfigMap and why at start: a cluster's GPUs (new boards, other ``nvidia.com/gpu.product`` spellings,
measured memory) are an operator-wide fact, not a per-deployment one, and the same YAML format the CLI reads
with ``--gpu-catalog`` (:func:`tidal.recommender.gpus.load_gpu_catalog`, pydantic-validated) serves both.
Reading it once keeps the pure planner's inputs fixed while it runs; a changed ConfigMap takes effect when
the operator restarts (the chart rolls the pod on a change). A malformed or missing ConfigMap stops the
start with one line naming the ConfigMap, the key and the entry, rather than running with a catalogue the
administrator did not mean.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from tidal.builders.gpus import set_operator_catalog
from tidal.recommender.gpus import GPUSpec, load_gpu_catalog

DEFAULT_KEY: Final = "gpus.yaml"
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class GPUCatalogError(Exception):
    """The ConfigMap is missing, has no catalogue key, or holds a malformed catalogue (one line)."""


def own_namespace() -> str:
    """The namespace the operator runs in: ``POD_NAMESPACE`` (the chart sets it), the service account's
    namespace file in a pod, else ``default``."""
    ns = os.environ.get("POD_NAMESPACE")
    if ns:
        return ns
    try:
        return _SA_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME`` or ``NAMESPACE/NAME`` -> ``(namespace, name)``."""
    ns, sep, name = ref.partition("/")
    return (ns, name) if sep else (own_namespace(), ref)


def catalog_from_configmap(data: dict[str, str] | None, where: str) -> dict[str, GPUSpec]:
    """The merged catalogue from a ConfigMap's ``data`` (key ``gpus.yaml``, or its only key)."""
    items = dict(data or {})
    if DEFAULT_KEY in items:
        key = DEFAULT_KEY
    elif len(items) == 1:
        key = next(iter(items))
    else:
        raise GPUCatalogError(
            f"GPU catalogue ConfigMap {where}: expected a key {DEFAULT_KEY!r} (or exactly one key); "
            f"found {sorted(items) or 'none'}"
        )
    try:
        return load_gpu_catalog(items[key])
    except ValueError as exc:
        raise GPUCatalogError(f"GPU catalogue ConfigMap {where}, key {key!r}: {exc}") from None


def install_from_configmap(core_api: Any, ref: str) -> dict[str, GPUSpec]:
    """Read the ConfigMap ``ref`` (``NAME`` or ``NAMESPACE/NAME``) with a CoreV1Api, install the merged
    catalogue for the planner and return it."""
    namespace, name = parse_ref(ref)
    where = f"{namespace}/{name}"
    try:
        cm = core_api.read_namespaced_config_map(name, namespace)
    except Exception as exc:  # the kube client's ApiException or a connection error: one line
        status = getattr(exc, "status", None)
        detail = f"HTTP {status}" if status else type(exc).__name__
        raise GPUCatalogError(f"GPU catalogue ConfigMap {where} could not be read ({detail})") from None
    catalog = catalog_from_configmap(getattr(cm, "data", None), where)
    set_operator_catalog(catalog)
    return catalog
