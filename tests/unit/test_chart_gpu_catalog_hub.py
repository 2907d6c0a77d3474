"""The chart's GPU catalogue and Hub values: the rendered ConfigMap is a catalogue the operator accepts and
``tidal run`` is told its name; the operator may read that one ConfigMap and nothing else new (no Secrets:
the Hub token is a Secret volume the kubelet mounts, named by ``HF_TOKEN_PATH``)."""

from __future__ import annotations

import helm_python as helm
import pytest
from tests.unit.test_chart import VALUE_SETS, by_kind, manifests, one, operator_container, render

from tidal.cli import build_parser
from tidal.shell.gpucatalog import catalog_from_configmap

VALUES = VALUE_SETS["gpu-catalog-and-hub"]


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    from tests.unit.test_chart import CHART

    return helm.Chart.load(CHART)


def test_catalogue_configmap_and_flag(chart: helm.Chart) -> None:
    docs = manifests(render(chart, VALUES))
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-gpu-catalog"))
    catalog = catalog_from_configmap(cm["data"], "chart")
    assert catalog["RTX-PRO-6000"].product_labels == ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition",)
    args = operator_container(docs)["args"]
    assert f"--gpu-catalog-configmap={cm['metadata']['name']}" in args
    parsed = build_parser().parse_args(args)
    assert parsed.gpu_catalog_configmap == cm["metadata"]["name"]
    role = one(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [cm["metadata"]["name"]],
            "verbs": ["get"],
        }
    ]
    assert one(docs, "RoleBinding")["roleRef"]["name"] == role["metadata"]["name"]
    pod = one(docs, "Deployment")["spec"]["template"]
    assert "checksum/gpu-catalog" in pod["metadata"]["annotations"]


def test_hub_token_is_a_mounted_file_not_secret_rbac(chart: helm.Chart) -> None:
    docs = manifests(render(chart, VALUES))
    container = operator_container(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_ENDPOINT"] == "https://hub.example.com"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "hf-token")
    assert env["HF_TOKEN_PATH"] == f"{mount['mountPath']}/token" and mount["readOnly"] is True
    volume = next(
        v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "hf-token"
    )
    assert volume["secret"]["secretName"] == "hf-token"
    assert env["HF_HUB_CACHE"].startswith("/tmp/")  # the root filesystem is read-only
    rules = [r for kind in ("ClusterRole", "Role") for d in by_kind(docs, kind) for r in d["rules"]]
    assert not any("secrets" in r["resources"] for r in rules)


def test_defaults_render_neither(chart: helm.Chart) -> None:
    docs = manifests(render(chart, {}))
    assert by_kind(docs, "Role") == []
    assert not any(d["metadata"]["name"].endswith("-gpu-catalog") for d in by_kind(docs, "ConfigMap"))
    container = operator_container(docs)
    assert not any(a.startswith("--gpu-catalog-configmap") for a in container["args"])
    assert "HF_TOKEN_PATH" not in {e["name"] for e in container["env"]}
    existing = manifests(render(chart, {"gpuCatalog": {"gpus": [], "existingConfigMap": "site-gpus"}}))
    assert "--gpu-catalog-configmap=site-gpus" in operator_container(existing)["args"]
    assert one(existing, "Role")["rules"][0]["resourceNames"] == ["site-gpus"]
