"""The operator-level GPU catalogue ConfigMap (tidal.shell.gpucatalog): read with a CoreV1Api (a stub
here), validated, merged over the built-ins and installed for scheduling and sizing; the CLI's
``--gpu-catalog`` reads the same format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tidal.builders import gpus as sched
from tidal.cli import main
from tidal.recommender.gpus import builtin_catalog
from tidal.shell.gpucatalog import GPUCatalogError, catalog_from_configmap, install_from_configmap, parse_ref

CATALOG = """
gpus:
  - name: RTX-PRO-6000
    memory_gib: 95.0
    bandwidth_tbps: 1.79
    bf16_tflops: 500
    fp8_tflops: 1000
    product_labels: [NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition]
"""


class StubCore:
    def __init__(self, maps: dict[tuple[str, str], dict[str, str]]) -> None:
        self.maps = maps
        self.asked: list[tuple[str, str]] = []

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        self.asked.append((namespace, name))
        if (namespace, name) not in self.maps:
            raise type("ApiException", (Exception,), {"status": 404})()
        return SimpleNamespace(data=self.maps[(namespace, name)])


@pytest.fixture(autouse=True)
def _builtin_after() -> Iterator[None]:
    yield
    sched.set_operator_catalog(builtin_catalog())


def test_configmap_is_installed_for_scheduling_and_sizing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "tidal-system")
    core = StubCore({("tidal-system", "gpus"): {"gpus.yaml": CATALOG}})
    catalog = install_from_configmap(core, "gpus")
    assert core.asked == [("tidal-system", "gpus")]
    assert "RTX-PRO-6000" in catalog and "H100-80GB" in catalog  # merged over the built-ins
    assert sched.product_labels("RTX-PRO-6000") == ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition",)
    assert sched.gpu_spec("rtx-pro-6000").memory_gib == 95.0
    assert parse_ref("other/name") == ("other", "name")


def test_bad_configmaps_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ns")
    with pytest.raises(GPUCatalogError, match=r"ConfigMap ns/missing could not be read \(HTTP 404\)"):
        install_from_configmap(StubCore({}), "missing")
    with pytest.raises(GPUCatalogError, match=r"expected a key 'gpus\.yaml'"):
        catalog_from_configmap({"a": "", "b": ""}, "ns/x")
    bad = "- name: Y\n  memory_gib: 0\n  bandwidth_tbps: 1\n  bf16_tflops: 1\n"
    message = r"ns/x, key 'only': GPU 'Y': memory_gib: Input should be greater"
    with pytest.raises(GPUCatalogError, match=message):
        catalog_from_configmap({"only": bad}, "ns/x")
    assert sched.operator_catalog().keys() == builtin_catalog().keys()  # nothing installed on failure


def test_cli_reads_the_same_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(CATALOG)
    assert main(["recommend", "--list-gpus", "--json", "--gpu-catalog", str(path)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["RTX-PRO-6000"]["product_labels"] == ["NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"]
    assert rows["H100-80GB"]["product_labels"] == ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-SXM5-80GB"]
    args = ["recommend", "--model", "Llama-3.1-8B", "--gpu", "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"]
    assert main([*args, "--gpu-catalog", str(path), "--json"]) == 0
    path.write_text("- name: Y\n  memroy_gib: 3\n")
    assert main([*args, "--gpu-catalog", str(path)]) == 2
    assert "memroy_gib: Extra inputs are not permitted" in capsys.readouterr().err
