"""GPU type -> node label values and sizing spec for the operator, from the one GPU catalogue
(:mod:`tidal.recommender.gpus`), so ``spec.resources.gpuType`` places workers on nodes whose
``nvidia.com/gpu.product`` label (NVIDIA GPU feature discovery) names that GPU and the recommender sizes the
deployment for the same GPU.

The operator's catalogue is the built-in one, or the built-in one with an operator-level custom catalogue
(a ConfigMap, see ``tidal run --gpu-catalog-configmap``) merged over it. The shell installs it once at start
with :func:`set_operator_catalog`; it is process configuration like the builders' defaults, read by the pure
planner through :func:`operator_catalog`, never changed while reconciles run. An unknown name is used
verbatim as the node label, so a cluster with custom labels still schedules (the recommender then says the
GPU is unknown).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from tidal.recommender.gpus import GPUSpec, builtin_catalog, find_gpu, get_gpu

GPU_RESOURCE: Final = "nvidia.com/gpu"
"""The extended resource the NVIDIA device plugin advertises."""
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
"""Node label with the GPU product name (GPU feature discovery)."""

_catalog: Mapping[str, GPUSpec] = MappingProxyType(builtin_catalog())


def set_operator_catalog(catalog: Mapping[str, GPUSpec]) -> None:
    """Install the operator's GPU catalogue (the shell, once at start)."""
    global _catalog
    _catalog = MappingProxyType(dict(catalog))


def operator_catalog() -> Mapping[str, GPUSpec]:
    """The operator's GPU catalogue (built-in, or with the custom ConfigMap merged over it)."""
    return _catalog


def gpu_spec(gpu_type: str) -> GPUSpec:
    """The catalogue entry for ``gpu_type`` (``UnknownGPUError`` when the catalogue has none)."""
    return get_gpu(gpu_type, _catalog)


def product_labels(gpu_type: str) -> tuple[str, ...]:
    """The ``nvidia.com/gpu.product`` values a node of ``gpu_type`` may carry (name, alias or label,
    case-insensitive; an unknown name verbatim)."""
    spec = find_gpu(_catalog, gpu_type)
    return spec.node_labels if spec is not None else (gpu_type,)
