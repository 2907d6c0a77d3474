"""The reconcile plan owns the worker-code ConfigMap: applied when missing, on new code (hash annotation) or a
lost owner, left alone when current (the index holds no data, only metadata), deleted when the operator ships
no code; ConfigMaps that are not Tidal's worker code are never touched."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import LLMDeployment
from tidal.builders.pods import BuilderConfig
from tidal.builders.workercode import CODE_HASH_ANNOTATION, WorkerCode
from tidal.plan import Observed, plan_reconcile
from tidal.plan.workercode import plan_worker_code

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CODE = WorkerCode.from_files({"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": "v = 1\n"})
NEW_CODE = WorkerCode.from_files({"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": "v = 2\n"})


def _deployment() -> LLMDeployment:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"].update(namespace="serving", uid="uid-1", generation=1)
    return LLMDeployment.model_validate(doc)


def _as_indexed(obj: dict[str, Any]) -> dict[str, Any]:
    """What the operator's index keeps of an applied ConfigMap: its metadata plus a uid, no data."""
    return {"metadata": {**obj["metadata"], "uid": "cm-1"}}


def test_missing_config_map_is_applied_then_left_alone() -> None:
    dep = _deployment()
    apply, delete = plan_worker_code(dep, CODE, [])
    assert [o["kind"] for o in apply] == ["ConfigMap"] and delete == []
    assert apply[0]["data"]["tidal_worker.__main__.py"] == "v = 1\n"
    assert plan_worker_code(dep, CODE, [_as_indexed(apply[0])]) == ([], [])


def test_new_code_or_a_lost_owner_applies_again() -> None:
    dep = _deployment()
    seen = _as_indexed(plan_worker_code(dep, CODE, [])[0][0])
    apply, _ = plan_worker_code(dep, NEW_CODE, [seen])
    assert apply[0]["metadata"]["annotations"][CODE_HASH_ANNOTATION] == NEW_CODE.hash != CODE.hash
    orphan = {"metadata": {**seen["metadata"], "ownerReferences": []}}
    assert plan_worker_code(dep, CODE, [orphan])[0]


def test_without_code_the_config_map_goes_and_others_stay() -> None:
    dep = _deployment()
    seen = _as_indexed(plan_worker_code(dep, CODE, [])[0][0])
    foreign = {"metadata": {"name": "user-config", "labels": {"tidal.dev/deployment": "llama-3-1-8b"}}}
    apply, delete = plan_worker_code(dep, None, [seen, foreign])
    assert apply == []
    assert [(r.kind, r.name, r.uid) for r in delete] == [("ConfigMap", "llama-3-1-8b-worker-code", "cm-1")]


def test_reconcile_plan_carries_the_config_map_and_converges() -> None:
    dep = _deployment()
    config = BuilderConfig(worker_code=CODE)
    plan = plan_reconcile(dep, Observed(), NOW, config=config)
    cms = [o for o in plan.apply if o["kind"] == "ConfigMap"]
    assert len(cms) == 1 and cms[0]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
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
