"""GPU catalogue: memory, memory bandwidth, dense BF16/FP8 throughput and interconnect per GPU type.

Numbers are the vendors' public data-sheet figures (dense, i.e. without 2:4 sparsity). ``memory_gib`` is
the total CUDA reports (``torch.cuda.mem_get_info()[1]``, what vLLM multiplies by ``gpu_memory_utilization``):
79.18 GiB on an H100 80GB HBM3 (measured), not the marketing gigabytes. ``interconnect_gbps`` is the
per-GPU bidirectional bandwidth of the fastest GPU-to-GPU link inside a node (NVLink / Infinity Fabric,
or PCIe where there is none); it decides whether tensor parallelism is cheap.

Operators add or override GPU types with :func:`load_gpu_catalog` (YAML or JSON text: a list of entries or
a mapping name -> fields); :func:`get_gpu` then looks names up in that merged catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator type."""

    name: str
    memory_gib: float
    """Total device memory as the driver reports it, GiB."""
    bandwidth_tbps: float
    """Peak memory bandwidth, TB/s (10^12 bytes per second)."""
    bf16_tflops: float
    """Dense BF16 tensor throughput, TFLOP/s."""
    fp8_tflops: float = 0.0
    """Dense FP8 tensor throughput, TFLOP/s (0: no FP8 tensor cores; FP8 weights run as weight-only)."""
    interconnect_gbps: float = 64.0
    """Per-GPU bidirectional GPU-to-GPU bandwidth inside a node, GB/s."""
    vendor: str = "nvidia"

    @property
    def memory_bytes(self) -> int:
        """Total memory in bytes."""
        return int(self.memory_gib * 2**30)

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Memory bandwidth in bytes/s."""
        return self.bandwidth_tbps * 1e12

    def flops_per_s(self, compute_dtype: str = "bfloat16") -> float:
        """Peak dense FLOP/s for the compute dtype (FP8 falls back to BF16 where there are no FP8 units)."""
        if compute_dtype.startswith("fp8") and self.fp8_tflops > 0:
            return self.fp8_tflops * 1e12
        return self.bf16_tflops * 1e12

    @property
    def is_large(self) -> bool:
        """vLLM's "large GPU" rule for its defaults: at least 70 GiB of memory."""
        return self.memory_gib >= 70.0


BUILTIN_GPUS: tuple[GPUSpec, ...] = (
    GPUSpec("H100-80GB", 79.18, 3.35, 989.0, 1979.0, 900.0),
    GPUSpec("H100-PCIe", 79.18, 2.0, 756.0, 1513.0, 128.0),
    GPUSpec("H100-NVL", 93.0, 3.9, 835.0, 1671.0, 600.0),
    GPUSpec("H200", 139.8, 4.8, 989.0, 1979.0, 900.0),
    GPUSpec("B200", 178.4, 8.0, 2250.0, 4500.0, 1800.0),
    GPUSpec("A100-80GB", 79.15, 2.039, 312.0, 0.0, 600.0),
    GPUSpec("A100-40GB", 39.39, 1.555, 312.0, 0.0, 600.0),
    GPUSpec("L40S", 44.52, 0.864, 362.0, 733.0, 64.0),
    GPUSpec("L4", 22.03, 0.3, 121.0, 242.0, 64.0),
    GPUSpec("A10G", 22.02, 0.6, 70.0, 0.0, 64.0),
    GPUSpec("MI300X", 191.5, 5.3, 1307.0, 2615.0, 896.0, vendor="amd"),
    GPUSpec("MI325X", 255.5, 6.0, 1307.0, 2615.0, 896.0, vendor="amd"),
)
"""The built-in GPU types."""

ALIASES: dict[str, str] = {
    "h100": "H100-80GB",
    "h100-sxm": "H100-80GB",
    "h100-sxm5-80gb": "H100-80GB",
    "h100-80gb-hbm3": "H100-80GB",
    "nvidia-h100-80gb-hbm3": "H100-80GB",
    "h100-pcie-80gb": "H100-PCIe",
    "h200-141gb": "H200",
    "nvidia-h200": "H200",
    "a100": "A100-80GB",
    "a100-sxm4-80gb": "A100-80GB",
    "a100-sxm4-40gb": "A100-40GB",
    "nvidia-l4": "L4",
    "nvidia-a10g": "A10G",
}
"""Other spellings (lower-case; e.g. the ``nvidia.com/gpu.product`` label) -> catalogue name."""


class UnknownGPUError(LookupError):
    """No GPU type by that name in the catalogue."""


def builtin_catalog() -> dict[str, GPUSpec]:
    """Name -> spec of the built-in types."""
    return {g.name: g for g in BUILTIN_GPUS}


_FIELDS = {f.name for f in fields(GPUSpec)}


def _spec_from_mapping(name: str, data: Mapping[str, Any], base: GPUSpec | None) -> GPUSpec:
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"GPU {name!r}: unknown fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
    values: dict[str, Any] = {} if base is None else {f: getattr(base, f) for f in _FIELDS}
    values.update(data)
    values["name"] = name
    missing = {"memory_gib", "bandwidth_tbps", "bf16_tflops"} - set(values)
    if missing:
        raise ValueError(f"GPU {name!r}: missing required fields {sorted(missing)}")
    spec = GPUSpec(**values)
    if spec.memory_gib <= 0 or spec.bandwidth_tbps <= 0 or spec.bf16_tflops <= 0:
        raise ValueError(f"GPU {name!r}: memory_gib, bandwidth_tbps and bf16_tflops must be positive")
    return spec


def load_gpu_catalog(text: str, base: Mapping[str, GPUSpec] | None = None) -> dict[str, GPUSpec]:
    """Merge GPU types from YAML/JSON ``text`` over ``base`` (default: the built-ins).

    Accepted shapes: ``[{name: X, memory_gib: ..., ...}, ...]``, ``{gpus: [...]}`` or ``{X: {...}, ...}``.
    An entry named like an existing type overrides only the fields it gives.
    """
    catalog = dict(builtin_catalog() if base is None else base)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = json.loads(text)
    if data is None:
        return catalog
    if isinstance(data, Mapping) and "gpus" in data:
        data = data["gpus"]
    entries: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(data, list):
        for item in data:
            if not isinstance(item, Mapping) or "name" not in item:
                raise ValueError("each GPU entry must be a mapping with a name")
            entries.append((str(item["name"]), {k: v for k, v in item.items() if k != "name"}))
    elif isinstance(data, Mapping):
        for key, item in data.items():
            if not isinstance(item, Mapping):
                raise ValueError(f"GPU {key!r}: expected a mapping of fields")
            entries.append((str(key), item))
    else:
        raise ValueError("GPU catalogue must be a list of entries or a mapping name -> fields")
    for name, item in entries:
        existing = _lookup(catalog, name)
        catalog[existing.name if existing else name] = _spec_from_mapping(
            existing.name if existing else name, item, existing
        )
    return catalog


def _lookup(catalog: Mapping[str, GPUSpec], name: str) -> GPUSpec | None:
    key = name.strip().lower()
    for cat_name, spec in catalog.items():
        if cat_name.lower() == key:
            return spec
    alias = ALIASES.get(key) or ALIASES.get(key.replace(" ", "-"))
    return catalog.get(alias) if alias else None


def get_gpu(name: str, catalog: Mapping[str, GPUSpec] | None = None) -> GPUSpec:
    """The GPU type ``name`` (case-insensitive, aliases accepted) from ``catalog`` (default: built-ins)."""
    cat = builtin_catalog() if catalog is None else catalog
    spec = _lookup(cat, name)
    if spec is None:
        raise UnknownGPUError(f"unknown GPU {name!r}; known: {', '.join(cat)} (add one with --gpu-catalog)")
    return spec
