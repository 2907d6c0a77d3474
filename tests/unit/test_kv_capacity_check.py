"""The online KV-capacity check: the comparison (recommender/kvcheck.py), status.kvCapacity and the
KVCapacityMismatch Event (plan/kvcapacity.py, plan/autoscale/status.py), the measured capacity in use by the
next recommendation (plan/target.py), and the parsing of vllm:cache_config_info (shell/kvcapacity.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tidal.api import LLMDeployment
from tidal.plan import resolve
from tidal.plan.autoscale.status import autoscaler_patch, with_kv_capacity
from tidal.plan.kvcapacity import KV_CAPACITY_MISMATCH, KVCapacityUpdate, kv_capacity_update, tokens_in_use
from tidal.recommender.catalog import catalog_profile
from tidal.recommender.gpus import get_gpu
from tidal.recommender.kvcheck import (
    MISMATCH_FRACTION,
    EngineKV,
    EngineSettings,
    capacity_in_use,
    compare,
    predicted_tokens,
)
from tidal.recommender.memory import kv_tokens_for_kv_memory
from tidal.recommender.recommend import RecommendInput, recommend
from tidal.scaling import Reason, ScalingConfig, ScalingDecision
from tidal.shell.kvcapacity import parse_reports

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, tzinfo=UTC)
STAMP = "2026-12-07T00:00:00Z"
LATER = "2026-12-07T00:05:00Z"


def _deployment(status: dict[str, Any] | None = None, **engine: Any) -> LLMDeployment:
    body: dict[str, Any] = {
        "apiVersion": "tidal.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "llama", "namespace": "ns", "generation": 1},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "resources": {"gpuType": "H100-80GB"},
            "engine": engine,
            "recommendation": {"mode": "Apply"},
        },
    }
    if status is not None:
        body["status"] = status
    return LLMDeployment.model_validate(body)


def _predicted(d: LLMDeployment) -> int:
    rec = resolve(d, [], NOW).target.recommendation
    assert rec is not None
    return int(rec.status.arithmetic["kvCacheTokens"])


def _update(d: LLMDeployment, tokens: int, old: dict[str, Any] | None = None, stamp: str = STAMP) -> Any:
    engine = resolve(d, [], NOW).target.inputs.engine
    return kv_capacity_update(d, engine, [EngineKV("llama-r0", tokens // 16, 16)], old, stamp)


# ------------------------------------------------------------------------------------------- comparison


def test_compare_takes_the_smallest_engine_and_ignores_reports_without_blocks() -> None:
    reports = [EngineKV("a", 100, 16), EngineKV("b", 90, 16), EngineKV("c", 0, 16)]
    check = compare(1600, reports)
    assert check is not None
    assert (check.smallest.pod, check.measured_tokens, check.engines) == ("b", 1440, 2)
    assert check.relative_error == pytest.approx((1600 - 1440) / 1440)
    assert check.mismatch
    assert compare(1600, [EngineKV("c", 0, 16)]) is None


@pytest.mark.parametrize(
    ("predicted", "mismatch"),
    [(10_500, False), (9_500, False), (10_501, True), (9_499, True)],
)
def test_mismatch_is_more_than_five_percent(predicted: int, mismatch: bool) -> None:
    check = compare(predicted, [EngineKV("a", 10_000, 1)])
    assert check is not None and check.mismatch is mismatch
    assert MISMATCH_FRACTION == 0.05


def test_capacity_in_use_keeps_a_capacity_within_five_percent() -> None:
    agree = compare(10_000, [EngineKV("a", 10_200, 1)])
    off = compare(10_000, [EngineKV("a", 7_000, 1)])
    moved = compare(10_000, [EngineKV("a", 7_200, 1)])
    far = compare(10_000, [EngineKV("a", 6_000, 1)])
    assert agree is not None and off is not None and moved is not None and far is not None
    assert capacity_in_use(agree, None) is None
    assert capacity_in_use(off, None) == 7_000
    assert capacity_in_use(moved, 7_000) == 7_000  # within 5 % of the one in use: no re-sizing
    assert capacity_in_use(far, 7_000) == 6_000


def test_prediction_is_the_memory_model_for_the_running_settings() -> None:
    profile, gpu = catalog_profile("Llama-3.1-8B"), get_gpu("H100-80GB")
    rec = recommend(RecommendInput(model=profile, gpu=gpu))
    settings = EngineSettings(
        tp=rec.tensor_parallel_size,
        pp=rec.pipeline_parallel_size,
        gpu_memory_utilization=rec.gpu_memory_utilization,
        max_num_seqs=rec.max_num_seqs,
        max_num_batched_tokens=rec.max_num_batched_tokens,
    )
    assert predicted_tokens(profile, gpu, settings, 16) == rec.kv_cache_tokens
    budget = EngineSettings(kv_cache_memory_bytes=2**30)
    assert predicted_tokens(profile, gpu, budget, 128) == kv_tokens_for_kv_memory(
        profile, 2**30, 1, "auto", 128
    )
    assert "kvCacheMemoryBytes=1073741824" in budget.basis


# ------------------------------------------------------------------------------------ status and Events


def test_agreement_is_recorded_without_an_event() -> None:
    d = _deployment()
    update = _update(d, _predicted(d))
    assert update.events == []
    assert update.status["predictedTokens"] == update.status["measuredTokens"] == _predicted(d)
    assert update.status["mismatch"] is False and update.status["tokensInUse"] is None
    assert update.status["basis"] == "TP=1 PP=1 gpuMemoryUtilization=0.9"


def test_mismatch_posts_one_event_and_later_passes_keep_the_status() -> None:
    d = _deployment()
    measured = int(_predicted(d) * 0.8) // 16 * 16
    first = _update(d, measured)
    assert [(e.type, e.reason) for e in first.events] == [("Warning", KV_CAPACITY_MISMATCH)]
    assert "measured" in first.events[0].message and f"{measured:,}" in first.events[0].message
    assert first.status["mismatch"] is True and first.status["tokensInUse"] == measured
    again = _update(d, measured, {"kvCapacity": first.status}, LATER)
    assert again.events == []
    assert again.status == first.status  # measuredAt kept: a steady state writes nothing
    nearby = _update(d, measured + 160, {"kvCapacity": first.status}, LATER)
    assert nearby.events == [] and nearby.status["tokensInUse"] == measured
    moved = _update(d, measured // 2 // 16 * 16, {"kvCapacity": first.status}, LATER)
    assert [e.reason for e in moved.events] == [KV_CAPACITY_MISMATCH]


def test_no_reports_leave_the_status_alone() -> None:
    d = _deployment()
    engine = resolve(d, [], NOW).target.inputs.engine
    assert kv_capacity_update(d, engine, [], None, STAMP) == KVCapacityUpdate()


def test_autoscaler_patch_carries_the_check_in_its_own_field() -> None:
    d = _deployment()
    update = _update(d, int(_predicted(d) * 0.5) // 16 * 16)
    decision = ScalingDecision(desired=1, proposed=1, current=1, reason=Reason.WITHIN_TOLERANCE, message="x")
    patch = with_kv_capacity(autoscaler_patch(decision, ScalingConfig(), None, {}, 0.0, STAMP, 1), update)
    assert patch.fields["kvCapacity"] == update.status
    assert KV_CAPACITY_MISMATCH in [e.reason for e in patch.events]


# ---------------------------------------------------------------------------------- measured value in use


def test_apply_mode_sizes_with_the_measured_capacity_after_a_mismatch() -> None:
    d = _deployment()
    predicted = _predicted(d)
    measured = int(predicted * 0.5) // 16 * 16
    update = _update(d, measured)
    after = _deployment(status={"kvCapacity": update.status})
    target = resolve(after, [], NOW).target
    assert target.recommendation is not None
    assert target.recommendation.status.arithmetic["kvCacheTokens"] == measured
    assert any("as the running engine reports it" in r for r in target.recommendation.status.reasons)
    before = resolve(d, [], NOW).target
    assert target.inputs.engine.max_num_seqs is not None and before.inputs.engine.max_num_seqs is not None
    assert target.inputs.engine.max_num_seqs <= before.inputs.engine.max_num_seqs
    assert target.inputs.engine.tensor_parallel_size == before.inputs.engine.tensor_parallel_size
    # Another basis (the memory fraction given explicitly): the measurement does not apply.
    other = _deployment(status={"kvCapacity": update.status}, gpuMemoryUtilization="0.8")
    rec = resolve(other, [], NOW).target.recommendation
    assert rec is not None and rec.status.arithmetic["kvCacheTokens"] != measured


def test_measurement_does_not_apply_to_a_recommendation_for_another_parallelism() -> None:
    settings = EngineSettings(tp=1)
    status = _deployment(
        status={
            "kvCapacity": {
                "predictedTokens": 100,
                "measuredTokens": 50,
                "numBlocks": 50,
                "blockSize": 1,
                "relativeError": 1.0,
                "mismatch": True,
                "tokensInUse": 50,
                "basis": settings.basis,
            }
        }
    ).status
    from tidal.api.status import RecommendedValues

    assert tokens_in_use(status, settings, RecommendedValues(tensor_parallel_size=1)) == 50
    assert tokens_in_use(status, settings, RecommendedValues(tensor_parallel_size=2)) is None
    assert tokens_in_use(status, EngineSettings(tp=2), RecommendedValues(tensor_parallel_size=2)) is None


# --------------------------------------------------------------------------------------------- parsing


def test_parse_reports_keeps_the_named_pods_with_numbers() -> None:
    result = [
        {"metric": {"pod": "a", "num_gpu_blocks": "4096", "block_size": "16"}, "value": [0, "1"]},
        {"metric": {"pod": "b", "num_gpu_blocks": "None", "block_size": "16"}, "value": [0, "1"]},
        {"metric": {"pod": "z", "num_gpu_blocks": "10", "block_size": "16"}, "value": [0, "1"]},
    ]
    assert parse_reports(result, {"a", "b"}) == [EngineKV("a", 4096, 16)]
