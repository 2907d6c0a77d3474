"""The typed LLMDeployment models: defaults, aliases, "auto" values, the CEL mirror, the examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from tests.support.malformed import VALID

from tidal.api import (
    AUTO,
    DEFAULT_ENGINE_IMAGE,
    LLMDeployment,
    LLMDeploymentSpec,
    LLMDeploymentStatus,
    derive_served_model_name,
    validation_errors,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/*.yaml"))


def _spec(**spec: Any) -> dict[str, Any]:
    return {"spec": {"model": {"uri": "hf://org/model"}, **spec}}


def test_minimal_document_gets_every_default() -> None:
    d = LLMDeployment.model_validate(_spec())
    s = d.spec
    assert (s.replicas, s.min_replicas, s.max_replicas) == (1, 1, 1)
    e = s.engine
    assert e.image == DEFAULT_ENGINE_IMAGE
    assert [e.tensor_parallel_size, e.pipeline_parallel_size, e.max_num_seqs, e.max_model_len] == [AUTO] * 4
    assert e.gpu_memory_utilization == AUTO and e.gpu_memory_fraction is None
    assert (e.dtype, e.quantization, e.kv_cache_dtype, e.enable_prefix_caching) == (
        "auto",
        "none",
        "auto",
        True,
    )
    assert (s.resources.gpu_type, s.resources.gpus_per_node, s.resources.shm_size) == ("H100-80GB", 8, "16Gi")
    a = s.autoscaling
    assert not a.enabled
    assert (a.targets.ttft_p95_seconds, a.targets.tpot_p95_seconds) == (2.0, 0.1)
    assert (a.targets.queue_length_per_replica, a.targets.kv_cache_usage) == (5.0, 0.9)
    assert (a.tolerance, a.panic_threshold, a.panic_window_seconds) == (0.1, 2.0, 6.0)
    assert (a.scale_up_stabilization_seconds, a.scale_down_stabilization_seconds) == (0.0, 300.0)
    assert (a.scale_down_consecutive, a.max_scale_up_step, a.max_scale_down_step) == (3, 4, 1)
    assert a.metrics_stale_after_seconds == 60.0 and a.cold_start_seconds is None
    assert a.prometheus.url.startswith("http://") and a.prometheus.selector == ""
    r = s.recommendation
    assert (r.mode, r.expected_input_tokens, r.expected_output_tokens) == ("Advise", 1024, 256)
    assert d.status == LLMDeploymentStatus()


def test_camel_case_in_yaml_and_snake_case_in_python() -> None:
    spec = LLMDeploymentSpec(
        model={"uri": "hf://org/m"},  # type: ignore[arg-type]
        min_replicas=0,
        max_replicas=3,
        replicas=2,
    )
    out = spec.model_dump(by_alias=True)
    assert out["minReplicas"] == 0 and out["maxReplicas"] == 3
    assert out["engine"]["tensorParallelSize"] == AUTO
    assert out["autoscaling"]["targets"]["ttftP95Seconds"] == 2.0
    again = LLMDeploymentSpec.model_validate(out)
    assert again == spec


def test_round_trip_through_to_dict_is_stable() -> None:
    d = LLMDeployment.model_validate(VALID)
    once = d.to_dict()
    assert LLMDeployment.model_validate(once).to_dict() == once
    assert once["apiVersion"] == "tidal.dev/v1alpha1" and once["kind"] == "LLMDeployment"


def test_status_round_trip_with_from_alias() -> None:
    status = LLMDeploymentStatus.model_validate(
        {
            "replicas": 2,
            "readyReplicas": 1,
            "lastScale": {"time": "2025-01-01T00:00:00Z", "from": 1, "to": 2, "reason": "ScaledUp"},
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "WorkersStarting",
                 "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ],
            "autoscaler": {"recommendations": [[1.0, 2]], "belowTargetSince": None},
            "gpuHours": 1.5,
        }
    )  # fmt: skip
    assert status.last_scale is not None and status.last_scale.from_ == 1
    assert status.to_dict()["lastScale"]["from"] == 1
    assert status.autoscaler == {"recommendations": [[1.0, 2]], "belowTargetSince": None}


def test_scaling_history_is_bounded() -> None:
    event = {"time": "2025-01-01T00:00:00Z", "from": 1, "to": 2, "reason": "ScaledUp"}
    LLMDeploymentStatus.model_validate({"scalingHistory": [event] * 20})
    with pytest.raises(ValidationError, match="scalingHistory"):
        LLMDeploymentStatus.model_validate({"scalingHistory": [event] * 21})


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("hf://meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("hf://meta-llama/Llama-3.1-8B-Instruct@main", "meta-llama/Llama-3.1-8B-Instruct"),
        ("pvc://models/llama/8b/", "8b"),
        ("pvc://models", "models"),
        ("s3://bucket/prefix/qwen", "qwen"),
    ],
)
def test_served_model_name_is_derived_from_the_uri(uri: str, name: str) -> None:
    assert derive_served_model_name(uri) == name
    model = LLMDeployment.model_validate({"spec": {"model": {"uri": uri}}}).spec.model
    assert model.effective_served_model_name == name
    named = LLMDeployment.model_validate({"spec": {"model": {"uri": uri, "servedModelName": "x"}}})
    assert named.spec.model.effective_served_model_name == "x"


@pytest.mark.parametrize("value", ["auto", "1", "1.0", "0.9", ".5", "0.05"])
def test_gpu_memory_fraction_accepts_decimal_strings_in_range(value: str) -> None:
    d = LLMDeployment.model_validate(_spec(engine={"gpuMemoryUtilization": value}))
    frac = d.spec.engine.gpu_memory_fraction
    assert frac is None if value == "auto" else 0 < frac <= 1  # type: ignore[operator]


@pytest.mark.parametrize(
    ("tp", "pp", "gpn", "ok"),
    [
        (1, 1, 8, True), (2, 1, 8, True), (8, 1, 8, True), (8, 2, 8, True), (4, 2, 8, True),
        (3, 1, 8, False), (16, 1, 8, False), (4, 4, 8, False), (2, 8, 8, False),
        ("auto", 4, 8, True), (4, "auto", 8, True), (6, 1, 6, True), (3, 2, 6, True), (3, 4, 6, False),
    ],
)  # fmt: skip
def test_parallelism_must_fit_gpus_per_node(tp: int | str, pp: int | str, gpn: int, ok: bool) -> None:
    doc = _spec(engine={"tensorParallelSize": tp, "pipelineParallelSize": pp}, resources={"gpusPerNode": gpn})
    errors = validation_errors(doc)
    assert (not errors) == ok, errors
    if not ok:
        assert "spec.engine.tensorParallelSize" in errors[0]


def test_gpus_per_replica_is_known_only_for_explicit_parallelism() -> None:
    explicit = _spec(engine={"tensorParallelSize": 8, "pipelineParallelSize": 2})
    assert LLMDeployment.model_validate(explicit).spec.gpus_per_replica == 16
    assert LLMDeployment.model_validate(_spec()).spec.gpus_per_replica is None


def test_scale_to_zero_is_allowed_when_min_is_zero() -> None:
    assert validation_errors(_spec(replicas=0, minReplicas=0, maxReplicas=2)) == []
    assert "spec.replicas" in validation_errors(_spec(replicas=0, minReplicas=1, maxReplicas=2))[0]


@pytest.mark.parametrize("method", ["draft_model", "eagle", "eagle3"])
def test_speculative_methods_that_need_a_draft_model(method: str) -> None:
    with_draft = _spec(engine={"speculativeDecoding": {"method": method, "draftModel": "hf://org/draft"}})
    assert validation_errors(with_draft) == []
    without = _spec(engine={"speculativeDecoding": {"method": method}})
    assert "spec.engine.speculativeDecoding.draftModel" in "\n".join(validation_errors(without))


def test_strict_types_do_not_coerce() -> None:
    """The API server refuses "2" for an integer and 1 for a boolean; so do the models."""
    assert validation_errors(_spec(replicas="1"))
    assert validation_errors(_spec(autoscaling={"enabled": 1}))
    assert validation_errors(_spec(engine={"tensorParallelSize": True}))


def test_metadata_keeps_unknown_kubernetes_fields() -> None:
    body = {**_spec(), "metadata": {"name": "a", "resourceVersion": "7", "managedFields": [{}]}}
    d = LLMDeployment.model_validate(body)
    assert d.metadata.name == "a"
    assert d.to_dict()["metadata"]["resourceVersion"] == "7"


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert "llama-3.1-8b.yaml" in names and "llama-3.1-405b-multinode.yaml" in names
    assert names & {"llama-3.3-70b-fp8-tp2.yaml", "llama-3.1-70b-tp4.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_a_valid_llmdeployment(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    deployments = [d for d in docs if d.get("kind") == "LLMDeployment"]
    assert deployments, f"{path.name} holds no LLMDeployment"
    for doc in deployments:
        assert validation_errors(doc) == []
        d = LLMDeployment.model_validate(doc)
        assert d.spec.model.served_model_name, "examples name the served model (the Model printer column)"


def test_examples_cover_single_gpu_tp_and_multinode() -> None:
    by_name = {p.name: LLMDeployment.model_validate(yaml.safe_load(p.read_text())).spec for p in EXAMPLES}
    small = by_name["llama-3.1-8b.yaml"]
    assert small.gpus_per_replica == 1 and small.resources.gpu_type == "H100-80GB"
    assert small.autoscaling.enabled and (small.min_replicas, small.max_replicas) == (1, 4)
    big = by_name["llama-3.1-405b-multinode.yaml"]
    assert (big.engine.tensor_parallel_size, big.engine.pipeline_parallel_size) == (8, 2)
    assert big.gpus_per_replica is not None and big.gpus_per_replica > big.resources.gpus_per_node
