"""GPU type -> node label values, so ``spec.resources.gpuType`` (a GPU catalogue name such as ``H100-80GB``)
places workers on nodes whose ``nvidia.com/gpu.product`` label (NVIDIA GPU feature discovery) names that GPU.

GPU feature discovery writes the product name as the driver reports it with spaces replaced by dashes
(``NVIDIA-H100-80GB-HBM3``); SXM and PCIe boards and memory variants differ. A catalogue name maps to every
spelling seen for it; an unknown name is used verbatim, so a cluster with custom labels still works.
"""

from __future__ import annotations

from typing import Final

GPU_RESOURCE: Final = "nvidia.com/gpu"
"""The extended resource the NVIDIA device plugin advertises."""
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
"""Node label with the GPU product name (GPU feature discovery)."""

PRODUCT_LABELS: Final[dict[str, tuple[str, ...]]] = {
    "H100-80GB": ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-SXM5-80GB"),
    "H100-PCIe": ("NVIDIA-H100-PCIe", "NVIDIA-H100-PCIE-80GB"),
    "H100-NVL": ("NVIDIA-H100-NVL",),
    "H200": ("NVIDIA-H200", "NVIDIA-H200-141GB-HBM3"),
    "B200": ("NVIDIA-B200",),
    "A100-80GB": ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
    "A100-40GB": ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
    "L40S": ("NVIDIA-L40S",),
    "L4": ("NVIDIA-L4",),
    "A10G": ("NVIDIA-A10G",),
}
"""GPU catalogue name -> ``nvidia.com/gpu.product`` values of that GPU."""


def product_labels(gpu_type: str) -> tuple[str, ...]:
    """The ``nvidia.com/gpu.product`` values a node of ``gpu_type`` may carry (case-insensitive name)."""
    for name, labels in PRODUCT_LABELS.items():
        if name.lower() == gpu_type.lower() or gpu_type in labels:
            return labels
    return (gpu_type,)
