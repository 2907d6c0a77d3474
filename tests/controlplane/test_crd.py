"""The LLMDeployment CRD against the real API server: it installs, every example is accepted, and every
malformed document of the shared table (tests/support/malformed.py) is rejected by the schema or a CEL rule
with a message naming the field — the same table the typed models are tested with.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import ControlPlane
from tests.support.malformed import MALFORMED_CASES

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "llmdeployments.tidal.dev.yaml"
EXAMPLES = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/*.yml")])
GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"

# MALFORMED_CASES is imported plainly: a table that cannot be imported fails the module loudly (it used to
# become an empty parameter list, a silent skip); a missing CRD file fails too, no longer skipped.


@pytest.fixture(scope="module")
def crd_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """Install the CRD (once), wait until it is Established, and give the module a namespace."""
    ext = client.ApiextensionsV1Api(control_plane.api_client)
    docs = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    for doc in docs:
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
        name = doc["metadata"]["name"]
        deadline = time.monotonic() + 30
        while True:
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established: {conditions}"
            time.sleep(0.2)
    ns = control_plane.create_namespace("crd")
    yield ns
    control_plane.core.delete_namespace(ns)


def _create(control_plane: ControlPlane, ns: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Create one document as `kubectl apply` would (strict field validation)."""
    api_version = doc.get("apiVersion", "")
    if api_version == f"{GROUP}/{VERSION}":
        custom = client.CustomObjectsApi(control_plane.api_client)
        created: dict[str, Any] = custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, doc, field_validation="Strict"
        )
        return created
    utils.create_from_dict(control_plane.api_client, doc, namespace=ns)
    return doc


def test_crd_installs_with_subresources(control_plane: ControlPlane, crd_namespace: str) -> None:
    ext = client.ApiextensionsV1Api(control_plane.api_client)
    crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    assert crd.spec.names.kind == "LLMDeployment"
    assert "llmd" in (crd.spec.names.short_names or [])
    served = [v for v in crd.spec.versions if v.name == VERSION]
    assert served and served[0].subresources.status is not None
    assert served[0].subresources.scale is not None


@pytest.mark.skipif(not EXAMPLES, reason="examples/ has no YAML files yet (issue 2)")
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(control_plane: ControlPlane, crd_namespace: str, example: Path) -> None:
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    assert docs, f"{example} is empty"
    kinds = []
    for doc in docs:
        doc.get("metadata", {}).pop("namespace", None)
        created = _create(control_plane, crd_namespace, doc)
        kinds.append(doc["kind"])
        if doc["kind"] == "LLMDeployment":
            # The server stored it, and defaults from the schema were applied to the stored object.
            assert created["metadata"]["uid"]
            assert created["spec"]
    assert "LLMDeployment" in kinds, f"{example} holds no LLMDeployment"


@pytest.mark.parametrize(
    ("document", "field"),
    [pytest.param(doc, fld, id=case_id) for case_id, doc, fld in MALFORMED_CASES],
)
def test_malformed_document_is_rejected_naming_the_field(
    control_plane: ControlPlane, crd_namespace: str, document: dict[str, Any], field: str
) -> None:
    doc = copy.deepcopy(document)
    doc.setdefault("apiVersion", f"{GROUP}/{VERSION}")
    doc.setdefault("kind", "LLMDeployment")
    metadata = doc.setdefault("metadata", {})
    if isinstance(metadata, dict):
        metadata.setdefault("name", f"bad-{uuid.uuid4().hex[:8]}")
        metadata.pop("namespace", None)
    with pytest.raises(ApiException) as rejected:
        _create(control_plane, crd_namespace, doc)
    assert rejected.value.status in (400, 422), rejected.value.body
    message = str(rejected.value.body)
    assert field in message, f"rejection does not name {field!r}: {message}"
