"""The generated CRD: committed file in sync with the models, names, subresources, columns, CEL, structure.

The control-plane tier (tests/controlplane/test_crd.py) installs it in a real kube-apiserver; here we check
what can be checked without one, including the structural-schema rules the API server would refuse.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import LLMDeployment
from tidal.api.crdgen import build_crd, render
from tidal.api.docgen import render as render_docs
from tidal.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "llmdeployments.tidal.dev.yaml"
DOCS_PATH = ROOT / "docs" / "api.md"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert len(versions) == 1
    v: dict[str, Any] = versions[0]
    return v


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_committed_crd_matches_the_models() -> None:
    assert CRD_PATH.read_text() == render(), "crds/ drifted from the models: run `make manifests`"


def test_generation_is_deterministic() -> None:
    assert render() == render()


def test_committed_api_reference_matches_the_models() -> None:
    assert DOCS_PATH.read_text() == render_docs(), "docs/api.md drifted: run `python -m tidal.api.docgen`"


def test_tidal_manifests_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["manifests"]) == 0
    assert capsys.readouterr().out == render()


def test_names(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "llmdeployments.tidal.dev"
    spec = crd["spec"]
    assert spec["group"] == "tidal.dev" and spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "LLMDeployment",
        "llmdeployments",
        "llmdeployment",
    )
    assert names["shortNames"] == ["llmd"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)


def test_status_and_scale_subresources(version: dict[str, Any]) -> None:
    sub = version["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    props = version["schema"]["openAPIV3Schema"]["properties"]
    assert props["spec"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["selector"]["type"] == "string"


def test_printer_columns_point_at_existing_fields(version: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    for name in ("Ready", "Desired", "Model", "GPUs/Replica", "Signal", "Last-Scale", "Age"):
        assert name in columns
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    schema = version["schema"]["openAPIV3Schema"]
    paths = {p for p, _ in _walk(schema)}
    for col in columns.values():
        if not col["jsonPath"].startswith(".metadata"):
            assert col["jsonPath"] in paths, col
            leaf = dict(_walk(schema))[col["jsonPath"]]
            assert leaf.get("type") == col["type"] or (
                col["type"] == "integer" and leaf.get("type") == "integer"
            )


def test_schema_is_structural(version: dict[str, Any]) -> None:
    """Every node has a type (or is int-or-string), anyOf only for int-or-string, no refs or JSON-Schema-only
    keywords, and bounded lists and maps (CEL cost estimates need them)."""
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "$defs" not in node and "title" not in node, path
        assert "const" not in node and "oneOf" not in node and "allOf" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        if node.get("type") == "array" and path.startswith(".spec"):
            assert "maxItems" in node, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict) and "properties" not in node, path
        if path.count(".") >= 2:  # every field documented
            assert node.get("description") or path.endswith("[]") or path.endswith("{}"), path


def test_only_the_autoscaler_state_is_opaque(version: dict[str, Any]) -> None:
    schema = version["schema"]["openAPIV3Schema"]
    opaque = [p for p, n in _walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert opaque == [".metadata", ".status.autoscaler"] or opaque == [".status.autoscaler"]


def test_cel_rules_are_present_with_messages(version: dict[str, Any]) -> None:
    schema = version["schema"]["openAPIV3Schema"]
    rules = {p: n["x-kubernetes-validations"] for p, n in _walk(schema) if "x-kubernetes-validations" in n}
    spec_rules = " ".join(r["rule"] for r in rules[".spec"])
    assert "self.minReplicas <= self.maxReplicas" in spec_rules
    assert "self.replicas >= self.minReplicas" in spec_rules
    assert "self.resources.gpusPerNode % self.engine.tensorParallelSize == 0" in spec_rules
    assert ".spec.engine.speculativeDecoding" in rules
    assert ".spec.engine.gpuMemoryUtilization" in rules
    assert ".spec.engine.tensorParallelSize" in rules
    for path, entries in rules.items():
        for entry in entries:
            assert entry["message"] and entry["rule"], path
            if "fieldPath" in entry:  # must name a property of the object the rule sits on
                first = entry["fieldPath"].split(".")[1]
                node = dict(_walk(schema))[path]
                assert first in node["properties"], (path, entry)


def test_schema_defaults_match_the_model_defaults(version: dict[str, Any]) -> None:
    """The API server's defaulting (from the schema) and the models' defaults give the same spec."""
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
        if isinstance(value, dict) and "properties" in schema:
            for name, sub in schema["properties"].items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
                if name in value:
                    value[name] = apply_defaults(sub, value[name])
        return value

    server_side = apply_defaults(spec_schema, {"model": {"uri": "hf://org/m"}})
    model_side = LLMDeployment.model_validate({"spec": {"model": {"uri": "hf://org/m"}}}).to_dict()["spec"]
    for key in ("extraArgs", "env"):
        model_side["engine"].pop(key)
    for key in ("nodeSelector", "tolerations"):
        model_side["resources"].pop(key)
    model_side["podSecurity"].pop("addCapabilities")
    assert server_side == model_side


def test_crd_yaml_parses_back(crd: dict[str, Any]) -> None:
    assert yaml.safe_load(CRD_PATH.read_text()) == crd
