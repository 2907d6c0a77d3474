"""The reconcile plan keeps the namespace's worker-code ConfigMap: one per namespace and code version
(``tidal-worker-code-<hash>``), shared by every deployment there, applied when missing or relabelled, left
alone when present (the index holds no data, only metadata). A deployment's own copy from before they were
shared is deleted; an older version's shared one only once no pod of the namespace mounts it; ConfigMaps that
are not Tidal's worker code, and other deployments' copies, are never touched."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import LLMDeployment
from tidal.builders.pods import BuilderConfig
from tidal.builders.workercode import CODE_HASH_ANNOTATION, WorkerCode, build_worker_code_config_map
from tidal.plan import Observed, plan_reconcile
from tidal.plan.workercode import plan_worker_code

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CODE = WorkerCode.from_files({"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": "v = 1\n"})
NEW_CODE = WorkerCode.from_files({"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": "v = 2\n"})
OWN_COPY = {
    "metadata": {
        "name": "llama-3-1-8b-worker-code",
        "uid": "old-1",
        "labels": {
            "app.kubernetes.io/name": "tidal-worker",
            "app.kubernetes.io/component": "worker-code",
            "tidal.dev/deployment": "llama-3-1-8b",
        },
        "annotations": {CODE_HASH_ANNOTATION: CODE.hash},
    }
}


def _deployment(name: str = "llama-3-1-8b") -> LLMDeployment:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"].update(name=name, namespace="serving", uid=f"uid-{name}", generation=1)
    return LLMDeployment.model_validate(doc)


def _as_indexed(obj: dict[str, Any], uid: str = "cm-1") -> dict[str, Any]:
    """What the operator's index keeps of an applied ConfigMap: its metadata plus a uid, no data."""
    return {"metadata": {**obj["metadata"], "uid": uid}}


def _never_asked() -> set[str]:
    raise AssertionError("the namespace's pods were read although no older shared ConfigMap exists")


def test_missing_config_map_is_applied_then_left_alone_by_every_deployment() -> None:
    apply, delete = plan_worker_code(_deployment(), CODE, [], _never_asked)
    assert [o["kind"] for o in apply] == ["ConfigMap"] and delete == []
    assert apply[0]["metadata"]["name"] == f"tidal-worker-code-{CODE.hash}"
    assert apply[0]["data"]["tidal_worker.__main__.py"] == "v = 1\n"
    seen = [_as_indexed(apply[0])]
    for name in ("llama-3-1-8b", "another"):
        assert plan_worker_code(_deployment(name), CODE, seen, _never_asked) == ([], [])


def test_lost_labels_apply_again() -> None:
    seen = _as_indexed(build_worker_code_config_map("serving", CODE))
    relabelled = {"metadata": {**seen["metadata"], "labels": {"app.kubernetes.io/component": "worker-code"}}}
    assert plan_worker_code(_deployment(), CODE, [relabelled])[0]


def test_new_code_keeps_the_old_config_map_while_a_pod_mounts_it() -> None:
    old = _as_indexed(build_worker_code_config_map("serving", CODE), uid="cm-old")
    apply, delete = plan_worker_code(_deployment(), NEW_CODE, [old], lambda: {CODE.hash, NEW_CODE.hash})
    assert [o["metadata"]["annotations"][CODE_HASH_ANNOTATION] for o in apply] == [NEW_CODE.hash]
    assert delete == []
    new = _as_indexed(apply[0], uid="cm-new")
    _, delete = plan_worker_code(_deployment(), NEW_CODE, [old, new], lambda: {NEW_CODE.hash})
    assert [(r.kind, r.name, r.uid) for r in delete] == [
        ("ConfigMap", f"tidal-worker-code-{CODE.hash}", "cm-old")
    ]


def test_own_copy_from_before_sharing_goes_and_others_stay() -> None:
    foreign = {"metadata": {"name": "user-config", "labels": {"tidal.dev/deployment": "llama-3-1-8b"}}}
    others = {
        "metadata": {
            **OWN_COPY["metadata"],
            "name": "another-worker-code",
            "uid": "old-2",
            "labels": {**OWN_COPY["metadata"]["labels"], "tidal.dev/deployment": "another"},
        }
    }
    shared = _as_indexed(build_worker_code_config_map("serving", CODE))
    apply, delete = plan_worker_code(_deployment(), CODE, [OWN_COPY, foreign, others, shared], _never_asked)
    assert apply == []
    assert [(r.name, r.uid) for r in delete] == [("llama-3-1-8b-worker-code", "old-1")]


def test_without_code_no_config_map_is_wanted() -> None:
    shared = _as_indexed(build_worker_code_config_map("serving", CODE))
    assert plan_worker_code(_deployment(), None, [shared], lambda: {CODE.hash}) == ([], [])
    apply, delete = plan_worker_code(_deployment(), None, [shared], set)
    assert apply == [] and [r.uid for r in delete] == ["cm-1"]


def test_reconcile_plan_carries_the_config_map_and_converges() -> None:
    dep = _deployment()
    config = BuilderConfig(worker_code=CODE)
    plan = plan_reconcile(dep, Observed(), NOW, config=config)
    cms = [o for o in plan.apply if o["kind"] == "ConfigMap"]
    assert len(cms) == 1 and "ownerReferences" not in cms[0]["metadata"]
    pods = [o for o in plan.apply if o["kind"] == "Pod"]
    assert pods and all(
        v["configMap"]["name"] == cms[0]["metadata"]["name"]
        for p in pods
        for v in p["spec"]["volumes"]
        if "configMap" in v
    )
    again = plan_reconcile(dep, Observed(config_maps=[_as_indexed(cms[0])]), NOW, config=config)
    assert not [o for o in again.apply if o["kind"] == "ConfigMap"]
    assert not [r for r in again.delete if r.kind == "ConfigMap"]
