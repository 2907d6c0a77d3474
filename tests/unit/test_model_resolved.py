"""Models outside the catalogue in the operator's pure core: the Hub profiles the shell recorded
(tidal.builders.hubmodels) size the deployment, and the ``ModelResolved`` condition says when there is
none (fetch failed, unsupported architecture) instead of a silent TP = PP = 1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import LLMDeployment
from tidal.builders import hubmodels
from tidal.plan import Observed, make_target, plan_reconcile
from tidal.recommender.catalog import (
    SUPPORTED_ARCHITECTURES,
    UnsupportedArchitectureError,
    check_architecture,
    hub_profile,
    hub_repo,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BIG = {  # a 70B-shaped Llama under a repository name the catalogue does not know
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 80,
    "hidden_size": 8192,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "intermediate_size": 28672,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}
REPO = "acme/house-llama-70b"


@pytest.fixture(autouse=True)
def _empty_table() -> Iterator[None]:
    hubmodels.forget_all()
    yield
    hubmodels.forget_all()


def deployment(uri: str = f"hf://{REPO}", **engine: Any) -> LLMDeployment:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"].update(namespace="ns", uid="uid-1", generation=1)
    doc["spec"]["model"]["uri"] = uri
    doc["spec"]["engine"] = {"tensorParallelSize": "auto", "pipelineParallelSize": "auto", **engine}
    doc["spec"]["autoscaling"]["enabled"] = False
    return LLMDeployment.model_validate(doc)


def model_condition(plan: Any) -> dict[str, Any]:
    return next(c for c in plan.status["conditions"] if c["type"] == "ModelResolved")


def test_unfetched_model_gets_a_condition_not_a_silent_tp1() -> None:
    plan = plan_reconcile(deployment(), Observed(), NOW)
    cond = model_condition(plan)
    assert cond["status"] == "False" and cond["reason"] == "ModelConfigUnavailable"
    assert REPO in cond["message"] and "fall back to 1" in cond["message"]
    assert any(e.type == "Warning" and e.reason == "ModelConfigUnavailable" for e in plan.events)


def test_recorded_hub_profile_sizes_the_deployment() -> None:
    hubmodels.record(REPO, None, hubmodels.HubLookup(hub_profile(REPO, BIG)))
    d = deployment()
    target = make_target(d, 1)
    assert target.inputs.engine.world_size >= 2  # 141 GB of bf16 weights do not fit one H100
    assert target.recommendation is not None
    assert any("from the Hub" in r for r in target.recommendation.status.reasons)
    plan = plan_reconcile(d, Observed(), NOW)
    cond = model_condition(plan)
    assert cond["status"] == "True" and cond["reason"] == "ModelKnown"
    assert not any(e.reason == "ModelKnown" for e in plan.events)  # a known model is not news


def test_fetch_failure_and_unsupported_architecture_are_reported() -> None:
    hubmodels.record(REPO, None, hubmodels.HubLookup(None, "http://hub/acme: HTTP 401"))
    cond = model_condition(plan_reconcile(deployment(), Observed(), NOW))
    assert cond["reason"] == "ModelConfigUnavailable" and "HTTP 401" in cond["message"]
    with pytest.raises(UnsupportedArchitectureError) as info:
        hub_profile("acme/mamba", {**BIG, "architectures": ["MambaForCausalLM"]})
    hubmodels.record(
        "acme/mamba", "v2", hubmodels.HubLookup(None, str(info.value), "UnsupportedArchitecture")
    )
    cond = model_condition(plan_reconcile(deployment("hf://acme/mamba@v2"), Observed(), NOW))
    assert cond["reason"] == "UnsupportedArchitecture" and "MambaForCausalLM" in cond["message"]
    # explicit TP/PP: nothing falls back
    cond = model_condition(
        plan_reconcile(deployment(tensorParallelSize=4, pipelineParallelSize=1), Observed(), NOW)
    )
    assert cond["status"] == "False" and "fall back" not in cond["message"]


def test_catalogue_and_other_sources() -> None:
    cond = model_condition(
        plan_reconcile(deployment("hf://meta-llama/Llama-3.1-8B-Instruct"), Observed(), NOW)
    )
    assert cond["status"] == "True" and "catalogue entry Llama-3.1-8B" in cond["message"]
    cond = model_condition(plan_reconcile(deployment("s3://bucket/models/custom"), Observed(), NOW))
    assert cond["status"] == "False" and cond["reason"] == "ModelNotInCatalogue"


def test_architecture_check_and_repo_parsing() -> None:
    assert check_architecture(BIG, "x") == "LlamaForCausalLM"
    vlm = {"architectures": ["Mistral3ForConditionalGeneration"], "text_config": {"architectures": None}}
    with pytest.raises(UnsupportedArchitectureError) as info:
        check_architecture(vlm, "mistralai/Mistral-Small")
    text = str(info.value)
    assert "Mistral3ForConditionalGeneration" in text and all(a in text for a in SUPPORTED_ARCHITECTURES)
    with pytest.raises(UnsupportedArchitectureError, match="none declared"):
        check_architecture({"model_type": "rwkv"}, "x")
    assert hub_repo("hf://org/name@rev") == ("org/name", "rev")
    assert hub_repo("org/name") == ("org/name", None)
    for bad in ("s3://org/name", "name", "org/name/extra", "../x", "hf://org/"):
        assert hub_repo(bad) is None, bad
