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


# The node product labels the scheduling table knew at c41f3b9; 11 of them were unknown to the recommender.
NODE_LABELS_AT_C41F3B9 = {
    "NVIDIA-H100-80GB-HBM3": "H100-80GB",
    "NVIDIA-H100-SXM5-80GB": "H100-80GB",
    "NVIDIA-H100-PCIe": "H100-PCIe",
    "NVIDIA-H100-PCIE-80GB": "H100-PCIe",
    "NVIDIA-H100-NVL": "H100-NVL",
    "NVIDIA-H200": "H200",
    "NVIDIA-H200-141GB-HBM3": "H200",
    "NVIDIA-B200": "B200",
    "NVIDIA-A100-SXM4-80GB": "A100-80GB",
    "NVIDIA-A100-80GB-PCIe": "A100-80GB",
    "NVIDIA-A100-SXM4-40GB": "A100-40GB",
    "NVIDIA-A100-PCIE-40GB": "A100-40GB",
    "NVIDIA-L40S": "L40S",
    "NVIDIA-L4": "L4",
    "NVIDIA-A10G": "A10G",
}


def test_scheduling_and_recommender_read_one_table() -> None:
    from tidal.builders.gpus import product_labels

    for label, name in NODE_LABELS_AT_C41F3B9.items():
        assert get_gpu(label).name == name, label
        assert label in product_labels(name)
    for spec in builtin_catalog().values():
        # every label of an entry leads back to it, in both consumers
        assert product_labels(spec.name) == spec.node_labels
        for label in spec.product_labels:
            assert get_gpu(label) is spec
    assert product_labels("MI300X") == ("MI300X",)  # no NVIDIA label: the name itself
    assert product_labels("My-Custom-GPU") == ("My-Custom-GPU",)  # unknown: verbatim


def test_operator_catalogue_serves_scheduling_and_sizing() -> None:
    from tidal.builders import gpus as sched

    cat = load_gpu_catalog(
        "- name: RTX-PRO-6000\n  memory_gib: 95.0\n  bandwidth_tbps: 1.79\n  bf16_tflops: 500\n"
        "  product_labels: [NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition]\n"
        "- name: H100-80GB\n  product_labels: [NVIDIA-H100-80GB-HBM3, Custom-H100]\n"
    )
    try:
        sched.set_operator_catalog(cat)
        assert sched.product_labels("rtx-pro-6000") == ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition",)
        assert sched.gpu_spec("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition").memory_gib == 95.0
        assert sched.product_labels("H100-80GB") == ("NVIDIA-H100-80GB-HBM3", "Custom-H100")
        assert sched.gpu_spec("Custom-H100").bandwidth_tbps == 3.35  # other fields kept
    finally:
        sched.set_operator_catalog(builtin_catalog())
    with pytest.raises(UnknownGPUError):
        sched.gpu_spec("RTX-PRO-6000")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- name: Y\n  memory_gib: -1\n  bandwidth_tbps: 1\n  bf16_tflops: 1\n", "GPU 'Y': memory_gib: "),
        ("- name: Y\n  memory_gib: 10\n", "GPU 'Y': a new type needs bandwidth_tbps, bf16_tflops"),
        ("- name: Y\n  memroy_gib: 10\n", "GPU 'Y': memroy_gib: Extra inputs are not permitted"),
        ("- memory_gib: 1\n", "GPU entry 1: name: Field required"),
        ("- name: Y\n  memory_gib: lots\n", "GPU 'Y': memory_gib: Input should be a valid number"),
        ("gpus: 3\n", "must be a list of entries"),
    ],
)
def test_bad_entries_name_the_entry_and_field(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        load_gpu_catalog(text)
    assert message in str(info.value)


def test_dev_cluster_gpu_nodes_are_in_the_catalogue() -> None:
    from tidal.devcluster.nodes import GPU_MEMORY_MIB

    for label, mib in GPU_MEMORY_MIB.items():
        spec = get_gpu(label)  # the fake nodes' product labels name catalogue types
        assert abs(spec.memory_gib - mib / 1024) / spec.memory_gib < 0.05, label
