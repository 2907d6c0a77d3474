"""GPU catalogue and operator-supplied GPU types."""

from __future__ import annotations

import pytest

from tidal.recommender.gpus import UnknownGPUError, builtin_catalog, get_gpu, load_gpu_catalog


def test_builtin_types_and_aliases() -> None:
    for name in (
        "H100-80GB",
        "H100-PCIe",
        "H200",
        "A100-40GB",
        "A100-80GB",
        "L40S",
        "L4",
        "A10G",
        "B200",
        "MI300X",
    ):
        g = get_gpu(name)
        assert g.memory_gib > 0 and g.bandwidth_tbps > 0 and g.bf16_tflops > 0
    assert get_gpu("h100").name == "H100-80GB"
    assert get_gpu("NVIDIA-H100-80GB-HBM3").name == "H100-80GB"
    assert get_gpu("H100-80GB").is_large and not get_gpu("L4").is_large
    assert get_gpu("A100-80GB").flops_per_s("fp8") == get_gpu("A100-80GB").flops_per_s("bfloat16")


def test_unknown_gpu() -> None:
    with pytest.raises(UnknownGPUError, match="--gpu-catalog"):
        get_gpu("Voodoo-5")


def test_operator_adds_and_overrides_types() -> None:
    text = """
gpus:
  - name: RTX-6000-Ada
    memory_gib: 47.5
    bandwidth_tbps: 0.96
    bf16_tflops: 364
    fp8_tflops: 728
  - name: h100
    bandwidth_tbps: 3.0
"""
    cat = load_gpu_catalog(text)
    assert get_gpu("rtx-6000-ada", cat).memory_gib == 47.5
    assert get_gpu("H100-80GB", cat).bandwidth_tbps == 3.0  # override keeps the other fields
    assert get_gpu("H100-80GB", cat).memory_gib == builtin_catalog()["H100-80GB"].memory_gib
    as_mapping = load_gpu_catalog('{"X1": {"memory_gib": 10, "bandwidth_tbps": 1, "bf16_tflops": 50}}')
    assert get_gpu("X1", as_mapping).memory_gib == 10


@pytest.mark.parametrize(
    "text",
    [
        "- name: Y\n  memory_gib: 10\n",
        "- name: Y\n  memory_gib: 10\n  bandwidth_tbps: 1\n  bf16_tflops: 1\n  foo: 2\n",
        "- memory_gib: 1\n",
        "42",
    ],
)
def test_bad_gpu_catalog_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        load_gpu_catalog(text)
