"""Live re-tuning of ``maxNumBatchedTokens``, the prefill chunk budget (tidal.scaling.chunkadvice and its
threading through tidal.scaling.tuning, the rollback block and the autoscaler glue).

Each rule has a table; the thresholds the tables test were fixed in ``tidal.scaling.chunkadvice`` before the
tests were first run and not tuned to them: lower only when TPOT p95 > its target with >= 4 prompt tokens
per generated token, fewer than half of max_num_seqs running per replica and KV < 90 %; raise only when
TTFT p95 > its target with TPOT p95 <= 50 % of its target and KV < 90 %; at most halve or double per change,
never below max(512, max_num_seqs), never above min(recommendation, 8192); an explicit spec value is never
overridden; Advise mode only advises; a rolled-back value blocks it and values past it from the current one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import LLMDeployment
from tidal.api.status import LLMDeploymentStatus
from tidal.builders.engine import tuned_overrides
from tidal.builders.pods import build_replica_pods
from tidal.plan.autoscale.config import scaling_config
from tidal.plan.autoscale.status import autoscaler_patch
from tidal.plan.autoscale.tuning import engine_tuning
from tidal.plan.target import make_target
from tidal.scaling import (
    AutoscalerState,
    CapacityView,
    FleetObservation,
    ScalingConfig,
    compute_desired_replicas,
)
from tidal.scaling.chunkadvice import chunk_advice
from tidal.scaling.detection import engine_advice
from tidal.scaling.rollback import plan_rollback
from tidal.scaling.tuning import (
    CHUNK_CEILING,
    CHUNK_FLOOR,
    MAX_NUM_BATCHED_TOKENS,
    bounded_value,
    is_blocked,
    plan_engine_tuning,
)
from tidal.scaling.types import EngineAdvice

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_000_000.0
STAMP = "1970-01-12T13:46:40Z"  # NOW as RFC 3339
MBT = MAX_NUM_BATCHED_TOKENS

# ------------------------------------------------------------------------------------------------ bounds


@pytest.mark.parametrize(
    ("current", "suggested", "expected"),
    [
        (8192, 4096, 4096),
        (8192, 1000, 4096),  # at most halved per change
        (2048, 100, 1024),
        (1024, 256, CHUNK_FLOOR),  # never below the floor
        (CHUNK_FLOOR, 256, None),  # at the floor
        (384, 256, None),  # below the floor already: a decrease never raises it
        (2048, 4096, 4096),
        (1024, 8192, 2048),  # at most doubled per change
        (6144, 16384, CHUNK_CEILING),  # never above the ceiling
        (CHUNK_CEILING, 16384, None),
        (16384, 32768, None),  # above the ceiling already: an increase never lowers it
        (2048, 2048, None),
    ],
)
def test_bounded_chunk_step(current: int, suggested: float, expected: int | None) -> None:
    assert bounded_value(MBT, current, suggested) == expected


# ------------------------------------------------------------------------------------------------ advice

CFG = ScalingConfig(
    ttft_p95_s=2.0,
    tpot_p95_s=0.1,
    max_num_seqs=256,
    max_num_batched_tokens=8192,
    recommended_max_num_batched_tokens=8192,
)
TUNED_DOWN = replace(CFG, max_num_batched_tokens=2048)


def obs(**kw: Any) -> FleetObservation:
    """Two replicas; by default a prefill-dominated TPOT breach (20 prompt tokens per generated token, 20
    running sequences per replica of 256, KV 40 %)."""
    base: dict[str, Any] = {
        "ttft_p95": 1.0,
        "tpot_p95": 0.18,
        "running": 40.0,
        "kv_cache_usage": 0.4,
        "prompt_token_rate": 20_000.0,
        "generation_token_rate": 1_000.0,
    }
    return FleetObservation(NOW, **{**base, **kw})


RAISE = {"ttft_p95": 3.5, "tpot_p95": 0.03}
"""A TTFT breach with TPOT at 30 % of its target."""


@dataclass
class AdviceCase:
    name: str
    config: ScalingConfig
    obs: FleetObservation
    expected: tuple[str, float | None, float | None] | None
    """(direction, current, suggested), or no chunk advice."""


ADVICE = [
    # lower
    AdviceCase("tpot breach, prefill-dominated: halve", CFG, obs(), ("decrease", 8192, 4096)),
    AdviceCase("again from 2048", TUNED_DOWN, obs(), ("decrease", 2048, 1024)),
    AdviceCase("floor 512", replace(CFG, max_num_batched_tokens=768), obs(), ("decrease", 768, 512)),
    AdviceCase("at the floor", replace(CFG, max_num_batched_tokens=512), obs(), None),
    AdviceCase(
        "never below max_num_seqs",
        replace(CFG, max_num_seqs=1000, max_num_batched_tokens=1536),
        obs(running=200.0),
        ("decrease", 1536, 1000),
    ),
    AdviceCase(
        "unknown max_num_seqs reads as 1024",
        replace(CFG, max_num_seqs=None, max_num_batched_tokens=1536),
        obs(),
        ("decrease", 1536, 1024),
    ),
    AdviceCase("tpot within target", CFG, obs(tpot_p95=0.09), None),
    AdviceCase("decode-dominated mix (3.9:1)", CFG, obs(prompt_token_rate=3_900.0), None),
    AdviceCase("exactly 4:1 counts", CFG, obs(prompt_token_rate=4_000.0), ("decrease", 8192, 4096)),
    AdviceCase("no token rates", CFG, obs(prompt_token_rate=None), None),
    AdviceCase("batch at half of max_num_seqs", CFG, obs(running=256.0), None),
    AdviceCase("kv saturated", CFG, obs(kv_cache_usage=0.95), None),
    AdviceCase("kv unknown", CFG, obs(kv_cache_usage=None), ("decrease", 8192, 4096)),
    AdviceCase("no tpot target", replace(CFG, tpot_p95_s=None), obs(), None),
    AdviceCase(
        "current unknown: advice without a value",
        replace(CFG, max_num_batched_tokens=None),
        obs(),
        ("decrease", None, None),
    ),
    # raise
    AdviceCase("ttft breach, tpot headroom: double", TUNED_DOWN, obs(**RAISE), ("increase", 2048, 4096)),
    AdviceCase(
        "never above the recommendation",
        replace(TUNED_DOWN, max_num_batched_tokens=3072, recommended_max_num_batched_tokens=4096),
        obs(**RAISE),
        ("increase", 3072, 4096),
    ),
    AdviceCase("at the recommendation", CFG, obs(**RAISE), None),
    AdviceCase(
        "recommendation above 8192 caps at 8192",
        replace(CFG, max_num_batched_tokens=6144, recommended_max_num_batched_tokens=16384),
        obs(**RAISE),
        ("increase", 6144, CHUNK_CEILING),
    ),
    AdviceCase(
        "no recommendation: 8192 bounds it",
        replace(TUNED_DOWN, recommended_max_num_batched_tokens=None),
        obs(**RAISE),
        ("increase", 2048, 4096),
    ),
    AdviceCase("tpot at 60 % of its target: no raise", TUNED_DOWN, obs(ttft_p95=3.5, tpot_p95=0.06), None),
    AdviceCase(
        "tpot exactly 50 % counts", TUNED_DOWN, obs(ttft_p95=3.5, tpot_p95=0.05), ("increase", 2048, 4096)
    ),
    AdviceCase("ttft within target", TUNED_DOWN, obs(ttft_p95=1.9, tpot_p95=0.03), None),
    AdviceCase("kv saturated: no raise", TUNED_DOWN, obs(kv_cache_usage=0.92, **RAISE), None),
    AdviceCase("tpot unknown: no raise", TUNED_DOWN, obs(ttft_p95=3.5, tpot_p95=None), None),
    AdviceCase(
        "current unknown: no raise", replace(TUNED_DOWN, max_num_batched_tokens=None), obs(**RAISE), None
    ),
    # hysteresis: between 50 % and 100 % of the TPOT target neither rule fires
    AdviceCase("tpot in the band with a ttft breach", TUNED_DOWN, obs(ttft_p95=3.5, tpot_p95=0.08), None),
]


@pytest.mark.parametrize("case", ADVICE, ids=[c.name for c in ADVICE])
def test_chunk_advice(case: AdviceCase) -> None:
    advice = chunk_advice(case.config, case.obs, ready=2)
    if case.expected is None:
        assert advice is None
        return
    assert advice is not None and advice.setting == MBT
    assert (advice.direction, advice.current, advice.suggested) == case.expected
    if advice.suggested is not None:
        assert f"{advice.current:.0f} -> {advice.suggested:.0f}" in advice.message
    # engine_advice carries it beside the other advice
    assert [a for a in engine_advice(case.config, case.obs, ready=2) if a.setting == MBT] == [advice]


# ------------------------------------------------------------------------------------------------ blocks


@pytest.mark.parametrize(
    ("value", "current", "expected"),
    [
        (4096, 2048, True),  # the blocked value itself
        (4096, None, True),
        (8192, 2048, True),  # a raise that passes a blocked raise
        (3072, 2048, False),  # a smaller raise stays below it
        (1024, 2048, False),  # the other way: not blocked
        (2048, 8192, True),  # a lowering that passes a blocked value from above
        (6144, 8192, False),
        (8192, None, False),  # unknown current: only the value itself
    ],
)
def test_chunk_block_is_relative_to_the_value_in_force(
    value: float, current: float | None, expected: bool
) -> None:
    assert is_blocked(MBT, value, {MBT: 4096.0}, current) is expected


# ------------------------------------------------------------------------------------------------ tuning

DOWN = EngineAdvice(MBT, "decrease", 4096.0, "tpot breach", current=8192.0)
UP = EngineAdvice(MBT, "increase", 4096.0, "ttft breach", current=2048.0)


@dataclass
class TuneCase:
    name: str
    advice: EngineAdvice
    apply: bool = True
    explicit: dict[str, float] = field(default_factory=dict)
    overrides: dict[str, float] = field(default_factory=dict)
    last_change: float | None = None
    blocked: dict[str, float] = field(default_factory=dict)
    expect_overrides: dict[str, float] = field(default_factory=dict)
    expect_skipped: dict[str, str] = field(default_factory=dict)


TUNE = [
    TuneCase("apply lowers", DOWN, expect_overrides={MBT: 4096}),
    TuneCase("apply raises", UP, overrides={MBT: 2048}, expect_overrides={MBT: 4096}),
    TuneCase("advise only advises", DOWN, apply=False, overrides={MBT: 2048}, expect_skipped={MBT: "advise"}),
    TuneCase("explicit wins", DOWN, explicit={MBT: 8192}, expect_skipped={MBT: "explicit"}),
    TuneCase(
        "cool-down",
        UP,
        overrides={MBT: 2048},
        last_change=NOW - 60,
        expect_overrides={MBT: 2048},
        expect_skipped={MBT: "coolDown"},
    ),
    TuneCase(
        "blocked raise",
        UP,
        overrides={MBT: 2048},
        blocked={MBT: 4096},
        expect_overrides={MBT: 2048},
        expect_skipped={MBT: "blocked"},
    ),
    TuneCase(
        "a lowering is not blocked by a failed raise",
        DOWN,
        blocked={MBT: 16384},
        expect_overrides={MBT: 4096},
    ),
    TuneCase(
        "at the floor",
        EngineAdvice(MBT, "decrease", 256.0, "tpot breach", current=512.0),
        expect_skipped={MBT: "atBound"},
    ),
]


@pytest.mark.parametrize("case", TUNE, ids=[c.name for c in TUNE])
def test_plan_chunk_tuning(case: TuneCase) -> None:
    d = plan_engine_tuning(
        [case.advice],
        apply_mode=case.apply,
        explicit=case.explicit,
        overrides=case.overrides,
        last_change=case.last_change,
        now=NOW,
        blocked=case.blocked,
    )
    assert d.overrides == case.expect_overrides
    assert d.skipped == case.expect_skipped
    if case.expect_skipped or case.expect_overrides == case.overrides:
        assert d.change is None
    else:
        assert d.change is not None and d.change.value == case.expect_overrides[MBT]


# ------------------------------------------------------------------------------------- glue and builders


def deployment(mode: str = "Apply", status: dict[str, Any] | None = None, **engine: Any) -> LLMDeployment:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"].update(namespace="ns", uid="uid-1", generation=1)
    doc["spec"]["recommendation"]["mode"] = mode
    doc["spec"]["engine"].update(engine)
    if status is not None:
        doc["status"] = status
    return LLMDeployment.model_validate(doc)


def chunk_pass(d: LLMDeployment, old: dict[str, Any], now: float) -> Any:
    """One autoscaler pass (the operator's order) over a fleet whose TPOT breaches in prefill-dominated
    steps: 2 running sequences, 20 prompt tokens per generated token, KV 30 %."""
    target = make_target(d, d.spec.replicas)
    engine = target.inputs.engine
    rec = target.recommendation
    rec_mbt = rec.values.get("max_num_batched_tokens") if rec is not None else None
    config = scaling_config(
        d,
        engine.max_num_seqs,
        engine.gpu_memory_utilization,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        recommended_max_num_batched_tokens=None if rec_mbt is None else int(rec_mbt),
    )
    o = FleetObservation(
        now - 1,
        ttft_p95=0.5,
        tpot_p95=0.5,
        waiting=0,
        running=2,
        kv_cache_usage=0.3,
        prompt_token_rate=20_000.0,
        generation_token_rate=1_000.0,
    )
    decision = compute_desired_replicas(config, o, CapacityView(current=1, ready=1), AutoscalerState(), now)
    tuning = engine_tuning(d, decision, old, now, [], target)
    return autoscaler_patch(decision, config, o, old, now, STAMP, 1, None, tuning), engine


def _env(d: LLMDeployment) -> list[str]:
    target = make_target(d, 1)
    (pod,) = build_replica_pods(target.inputs, 0, target.spec_hash)
    return [
        f"{e.get('name')}={e.get('value')}" for c in pod["spec"]["containers"] for e in c.get("env") or []
    ]


def test_apply_mode_lowers_the_chunk_and_the_workers_run_with_it() -> None:
    d = deployment()
    patch, engine = chunk_pass(d, {}, NOW)
    rec = engine.max_num_batched_tokens
    assert rec is not None and "max_num_batched_tokens" in engine.applied
    expected = max(CHUNK_FLOOR, engine.max_num_seqs or 0, -(-rec // 2))
    tuning = patch.fields["engineTuning"]
    assert tuning["overrides"] == {MBT: expected}
    assert isinstance(tuning["overrides"][MBT], int)
    assert tuning["lastChange"]["setting"] == MBT and tuning["lastChange"]["from"] == rec
    (event,) = [e for e in patch.events if e.reason == "EngineTuned"]
    assert f"{MBT} {rec} -> {expected}" in event.message and "prefill-dominated" in event.message
    tuned = deployment(status={"engineTuning": tuning})
    assert tuned_overrides(tuned.status) == {"max_num_batched_tokens": expected}
    assert make_target(tuned, 1).inputs.engine.tuned == ("max_num_batched_tokens",)
    assert make_target(tuned, 1).spec_hash != make_target(d, 1).spec_hash
    assert f"TIDAL_MAX_NUM_BATCHED_TOKENS={expected}" in _env(tuned)
    assert LLMDeploymentStatus.model_validate({"engineTuning": tuning}).engine_tuning is not None


def test_explicit_chunk_is_never_overridden() -> None:
    d = deployment(maxNumBatchedTokens=8192)
    patch, engine = chunk_pass(d, {}, NOW)
    assert engine.max_num_batched_tokens == 8192
    tuning = patch.fields["engineTuning"]
    assert tuning["overrides"] == {} and tuning["skipped"] == {MBT: "explicit"}
    stale = deployment(maxNumBatchedTokens=8192, status={"engineTuning": {"overrides": {MBT: 1024}}})
    assert make_target(stale, 1).inputs.engine.max_num_batched_tokens == 8192


def test_advise_mode_advises_from_vllms_default() -> None:
    d = deployment(mode="Advise")
    patch, engine = chunk_pass(d, {}, NOW)
    assert engine.max_num_batched_tokens is None  # left to vLLM (8192 on an H100)
    tuning = patch.fields["engineTuning"]
    assert tuning["overrides"] == {} and tuning["skipped"] == {MBT: "advise"}
    assert any("max_num_batched_tokens 8192 -> 4096" in a for a in patch.fields["advice"])


@pytest.mark.parametrize(("bad", "restored", "words"), [(8192, 4096, "or higher"), (1024, 2048, "or lower")])
def test_rollback_blocks_the_chunk_in_the_direction_it_failed(bad: int, restored: int, words: str) -> None:
    pod = {
        "metadata": {"name": "p-1", "labels": {"tidal.dev/spec-hash": "h1"}},
        "status": {"containerStatuses": [{"name": "engine", "restartCount": 3, "state": {}}]},
    }
    status = {
        "overrides": {MBT: bad},
        "lastChange": {
            "time": "1970-01-12T13:41:40Z",
            "setting": MBT,
            "from": restored,
            "to": bad,
            "specHash": "h1",
        },
    }
    r = plan_rollback(status, [pod], "h1", NOW)
    assert r is not None and r.overrides == {MBT: restored} and r.blocked == {MBT: bad}
    assert f"{MBT} {bad} {words} is not applied again" in r.message
    # the next pass: the same step again is blocked, a step the other way is not
    again = EngineAdvice(MBT, "x", float(bad), "same advice", current=float(restored))
    other = EngineAdvice(
        MBT, "x", float(restored + (restored - bad) / 2), "the other way", current=float(restored)
    )
    kw: dict[str, Any] = {"apply_mode": True, "explicit": {}, "overrides": r.overrides, "last_change": None}
    assert plan_engine_tuning([again], **kw, now=NOW, blocked=r.blocked).skipped == {MBT: "blocked"}
    assert plan_engine_tuning([other], **kw, now=NOW, blocked=r.blocked).change is not None


def test_config_reads_the_engine_chunk_or_vllms_default() -> None:
    d = deployment()
    assert scaling_config(d).max_num_batched_tokens == 8192  # vLLM's default on an H100
    assert scaling_config(d, max_num_batched_tokens=2048).max_num_batched_tokens == 2048
    assert (
        scaling_config(
            deployment(maxNumBatchedTokens=3072), max_num_batched_tokens=2048
        ).max_num_batched_tokens
        == 3072
    )
    assert (
        scaling_config(d, recommended_max_num_batched_tokens=4096).recommended_max_num_batched_tokens == 4096
    )
