"""The one GPU catalogue: memory, memory bandwidth, dense BF16/FP8 throughput, interconnect and the node
product labels of each GPU type. Scheduling (:mod:`tidal.builders.gpus`: which ``nvidia.com/gpu.product``
values a worker may land on) and the recommender (sizing) both read it, so a GPU the scheduler can place
is a GPU the recommender knows, and an operator-supplied type serves both.

Numbers are the vendors' public data-sheet figures (dense, i.e. without 2:4 sparsity). ``memory_gib`` is
the total CUDA reports (``torch.cuda.mem_get_info()[1]``, what vLLM multiplies by ``gpu_memory_utilization``):
79.18 GiB on an H100 80GB HBM3 (measured), not the marketing gigabytes. ``interconnect_gbps`` is the
per-GPU bidirectional bandwidth of the fastest GPU-to-GPU link inside a node (NVLink / Infinity Fabric,
or PCIe where there is none); it decides whether tensor parallelism is cheap. ``product_labels`` are the
``nvidia.com/gpu.product`` values NVIDIA GPU feature discovery writes for the GPU (the driver's product
name with spaces replaced by dashes; SXM and PCIe boards and memory variants differ).

Operators add or override GPU types with :func:`load_gpu_catalog` (YAML or JSON text: a list of entries,
``{gpus: [...]}`` or a mapping name -> fields; each entry validated by pydantic); the CLI reads it from
``--gpu-catalog FILE``, the operator from a ConfigMap (``tidal run --gpu-catalog-configmap``).
:func:`get_gpu` looks a name, alias or product label up in a catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


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
    product_labels: tuple[str, ...] = ()
    """``nvidia.com/gpu.product`` node label values of this GPU (empty: the name itself is the label)."""
    aliases: tuple[str, ...] = ()
    """Other spellings accepted for the name (case-insensitive)."""

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

    @property
    def node_labels(self) -> tuple[str, ...]:
        """The ``nvidia.com/gpu.product`` values a node of this type may carry (the name when none known)."""
        return self.product_labels or (self.name,)

    def spellings(self) -> tuple[str, ...]:
        """Every lower-case spelling that names this type: name, aliases, product labels."""
        return tuple(s.lower() for s in (self.name, *self.aliases, *self.product_labels))


BUILTIN_GPUS: tuple[GPUSpec, ...] = (
    GPUSpec(
        "H100-80GB", 79.18, 3.35, 989.0, 1979.0, 900.0,
        product_labels=("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-SXM5-80GB"),
        aliases=("h100", "h100-sxm", "h100-sxm5-80gb", "h100-80gb-hbm3"),
    ),
    GPUSpec(
        "H100-PCIe", 79.18, 2.0, 756.0, 1513.0, 128.0,
        product_labels=("NVIDIA-H100-PCIe", "NVIDIA-H100-PCIE-80GB"), aliases=("h100-pcie-80gb",),
    ),
    GPUSpec("H100-NVL", 93.0, 3.9, 835.0, 1671.0, 600.0, product_labels=("NVIDIA-H100-NVL",)),
    GPUSpec(
        "H200", 139.8, 4.8, 989.0, 1979.0, 900.0,
        product_labels=("NVIDIA-H200", "NVIDIA-H200-141GB-HBM3"), aliases=("h200-141gb",),
    ),
    GPUSpec("B200", 178.4, 8.0, 2250.0, 4500.0, 1800.0, product_labels=("NVIDIA-B200",)),
    GPUSpec(
        "A100-80GB", 79.15, 2.039, 312.0, 0.0, 600.0,
        product_labels=("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"), aliases=("a100",),
    ),
    GPUSpec(
        "A100-40GB", 39.39, 1.555, 312.0, 0.0, 600.0,
        product_labels=("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
    ),
    GPUSpec("L40S", 44.52, 0.864, 362.0, 733.0, 64.0, product_labels=("NVIDIA-L40S",)),
    GPUSpec("L4", 22.03, 0.3, 121.0, 242.0, 64.0, product_labels=("NVIDIA-L4",)),
    GPUSpec("A10G", 22.02, 0.6, 70.0, 0.0, 64.0, product_labels=("NVIDIA-A10G",)),
    GPUSpec("MI300X", 191.5, 5.3, 1307.0, 2615.0, 896.0, vendor="amd"),
    GPUSpec("MI325X", 255.5, 6.0, 1307.0, 2615.0, 896.0, vendor="amd"),
)  # fmt: skip
"""The built-in GPU types (AMD types carry no NVIDIA product label: their name is used verbatim)."""


class UnknownGPUError(LookupError):
    """No GPU type by that name in the catalogue."""


def builtin_catalog() -> dict[str, GPUSpec]:
    """Name -> spec of the built-in types."""
    return {g.name: g for g in BUILTIN_GPUS}


class GPUEntry(BaseModel):
    """One entry of a custom catalogue as written (a new type needs the three sizing numbers; an entry
    naming an existing type overrides only the fields it gives)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=63)
    memory_gib: float | None = Field(default=None, gt=0)
    bandwidth_tbps: float | None = Field(default=None, gt=0)
    bf16_tflops: float | None = Field(default=None, gt=0)
    fp8_tflops: float | None = Field(default=None, ge=0)
    interconnect_gbps: float | None = Field(default=None, gt=0)
    vendor: str | None = None
    product_labels: tuple[str, ...] | None = None
    aliases: tuple[str, ...] | None = None

    def apply(self, base: GPUSpec | None) -> GPUSpec:
        """The spec this entry gives, over ``base`` (the existing type of that name, if any)."""
        given = self.model_dump(exclude_none=True, exclude={"name"})
        values: dict[str, Any] = {} if base is None else asdict(base)
        values.update(given)
        values["name"] = base.name if base is not None else self.name
        missing = sorted({"memory_gib", "bandwidth_tbps", "bf16_tflops"} - set(values))
        if missing:
            raise ValueError(f"GPU {self.name!r}: a new type needs {', '.join(missing)}")
        return GPUSpec(**values)


def _entries(data: Any) -> list[Any]:
    if isinstance(data, Mapping) and "gpus" in data:
        data = data["gpus"]
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        out = []
        for key, item in data.items():
            if not isinstance(item, Mapping):
                raise ValueError(f"GPU {key!r}: expected a mapping of fields")
            out.append({"name": str(key), **item})
        return out
    raise ValueError("GPU catalogue must be a list of entries, {gpus: [...]} or a mapping name -> fields")


def _validation_message(index: int, item: Any, exc: ValidationError) -> str:
    name = item.get("name") if isinstance(item, Mapping) else None
    where = f"GPU {name!r}" if name else f"GPU entry {index + 1}"
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in exc.errors()
    )
    return f"{where}: {problems}"


def load_gpu_catalog(text: str, base: Mapping[str, GPUSpec] | None = None) -> dict[str, GPUSpec]:
    """Merge GPU types from YAML/JSON ``text`` over ``base`` (default: the built-ins); ``ValueError`` with
    the entry and field for anything malformed.

    Accepted shapes: ``[{name: X, memory_gib: ..., ...}, ...]``, ``{gpus: [...]}`` or ``{X: {...}, ...}``.
    An entry named like an existing type (name, alias or product label) overrides only the fields it gives.
    """
    catalog = dict(builtin_catalog() if base is None else base)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"GPU catalogue is neither YAML nor JSON: {exc}") from exc
    if data is None:
        return catalog
    for index, item in enumerate(_entries(data)):
        try:
            entry = GPUEntry.model_validate(item)
        except ValidationError as exc:
            raise ValueError(_validation_message(index, item, exc)) from None
        existing = find_gpu(catalog, entry.name)
        spec = entry.apply(existing)
        catalog[spec.name] = spec
    return catalog


def find_gpu(catalog: Mapping[str, GPUSpec], name: str) -> GPUSpec | None:
    """The type ``name`` names in ``catalog`` (name, alias or product label, case-insensitive), if any."""
    key = name.strip().lower().replace(" ", "-")
    for spec in catalog.values():
        if spec.name.lower() == key:
            return spec
    for spec in catalog.values():
        if key in spec.spellings():
            return spec
    return None


def get_gpu(name: str, catalog: Mapping[str, GPUSpec] | None = None) -> GPUSpec:
    """The GPU type ``name`` (case-insensitive; aliases and product labels accepted) from ``catalog``
    (default: the built-ins)."""
    cat = builtin_catalog() if catalog is None else catalog
    spec = find_gpu(cat, name)
    if spec is None:
        raise UnknownGPUError(
            f"unknown GPU {name!r}; known: {', '.join(cat)} (add one with --gpu-catalog, or in the "
            "operator with the GPU catalogue ConfigMap)"
        )
    return spec
