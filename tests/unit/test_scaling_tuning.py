"""Engine tuning from live advice (tidal.scaling.tuning) and how it reaches the workers: advice carries a
concrete bounded value; Apply mode applies one change per cool-down and never an explicit spec value; Advise
mode changes nothing; the override lands in status.engineTuning with an EngineTuned Event, and the pod
builders run with explicit value > tuned override > recommendation (a new spec hash: a normal rollout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import LLMDeployment
from tidal.builders.engine import recommend_for_spec, resolve_engine, tuned_overrides
from tidal.builders.pods import build_replica_pods
from tidal.plan.autoscale.config import scaling_config
from tidal.plan.autoscale.status import autoscaler_patch
from tidal.plan.autoscale.tuning import RENOTIFY_SECONDS, engine_tuning, tuning_status
from tidal.plan.documents import without_nulls
from tidal.plan.target import make_target, resolve
from tidal.scaling import (
    AutoscalerState,
    CapacityView,
    EngineAdvice,
    FleetObservation,
    ScalingConfig,
    compute_desired_replicas,
)
from tidal.scaling.detection import engine_advice
from tidal.scaling.tuning import (
    COOL_DOWN_S,
    GPU_MEMORY_CEILING,
    TuningDecision,
    bounded_value,
    plan_engine_tuning,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_000_000.0
STAMP = "1970-01-12T13:46:40Z"  # NOW as RFC 3339


# ------------------------------------------------------------------------------------------------ bounds


@pytest.mark.parametrize(
    ("setting", "current", "suggested", "expected"),
    [
        ("maxNumSeqs", 256, 160, 160),
        ("maxNumSeqs", 256, 10, 128),  # at most halved per step
        ("maxNumSeqs", 256, 300, 255),  # a decrease is a decrease
        ("maxNumSeqs", 3, 1, 2),  # ceil(3 / 2)
        ("maxNumSeqs", 2, 1, 1),
        ("maxNumSeqs", 1, 1, None),  # never below 1
        ("gpuMemoryUtilization", 0.90, 0.99, 0.92),  # one step
        ("gpuMemoryUtilization", 0.94, 0.99, GPU_MEMORY_CEILING),  # never above the ceiling
        ("gpuMemoryUtilization", GPU_MEMORY_CEILING, 0.99, None),
        ("gpuMemoryUtilization", 0.97, 0.99, None),  # above the ceiling already (explicit): no raise
        ("maxModelLen", 8192, 4096, None),  # advice only
    ],
)
def test_bounded_value(setting: str, current: float, suggested: float, expected: float | None) -> None:
    assert bounded_value(setting, current, suggested) == (
        None if expected is None else pytest.approx(expected)
    )


# ------------------------------------------------------------------------------------------------ advice

CFG = ScalingConfig(max_num_seqs=256, gpu_memory_utilization=0.9)


@pytest.mark.parametrize(
    ("config", "obs", "expected"),
    [
        (CFG, FleetObservation(NOW, kv_cache_usage=0.97, running=30), [("gpuMemoryUtilization", 0.9, 0.92)]),
        (
            ScalingConfig(max_num_seqs=256),  # vLLM's default fraction when the engine leaves it unset
            FleetObservation(NOW, kv_cache_usage=0.97, running=30),
            [("gpuMemoryUtilization", 0.9, 0.92)],
        ),
        (
            ScalingConfig(max_num_seqs=256, gpu_memory_utilization=GPU_MEMORY_CEILING),
            FleetObservation(NOW, kv_cache_usage=0.97, running=30),
            [("maxModelLen", None, None)],
        ),
        (CFG, FleetObservation(NOW, running=400, preemption_rate=1.0), [("maxNumSeqs", 256, 160)]),
        (CFG, FleetObservation(NOW, running=40, preemption_rate=1.0), [("maxNumSeqs", 256, 128)]),
        (
            ScalingConfig(max_num_seqs=1),
            FleetObservation(NOW, running=2, preemption_rate=1.0),
            [("maxNumSeqs", 1, None)],
        ),
        (
            ScalingConfig(),
            FleetObservation(NOW, running=400, preemption_rate=1.0),
            [("maxNumSeqs", None, 160)],
        ),
        (CFG, FleetObservation(NOW, kv_cache_usage=0.5, running=400, preemption_rate=0.01), []),
    ],
)
def test_advice_carries_the_current_and_a_bounded_value(
    config: ScalingConfig, obs: FleetObservation, expected: list[tuple[str, float | None, float | None]]
) -> None:
    advice = engine_advice(config, obs, ready=2)
    assert [(a.setting, a.current, a.suggested) for a in advice] == [
        (s, c, None if v is None else pytest.approx(v)) for s, c, v in expected
    ]
    for a in advice:
        if a.suggested is not None and a.current is not None:
            assert (
                f"{a.suggested:.2f}".rstrip("0").rstrip(".") in a.message or f"{a.suggested:.0f}" in a.message
            )


# ------------------------------------------------------------------------------------------------ tuning

SEQS = EngineAdvice("maxNumSeqs", "decrease", 160.0, "1.20 preemptions/s per replica", current=256.0)
MEM = EngineAdvice("gpuMemoryUtilization", "increase", 0.92, "KV cache 97% full", current=0.9)
LEN = EngineAdvice("maxModelLen", "decrease", None, "lower max_model_len", current=None)


@dataclass
class Case:
    name: str
    advice: tuple[EngineAdvice, ...]
    apply: bool = True
    explicit: dict[str, float] = field(default_factory=dict)
    overrides: dict[str, float] = field(default_factory=dict)
    last_change: float | None = None
    expect_overrides: dict[str, float] = field(default_factory=dict)
    expect_change: tuple[str, float, float] | None = None
    expect_skipped: dict[str, str] = field(default_factory=dict)
    in_message: str = ""


CASES = [
    Case(
        "apply lowers max_num_seqs",
        (SEQS,),
        expect_overrides={"maxNumSeqs": 160},
        expect_change=("maxNumSeqs", 256, 160),
    ),
    Case(
        "advise changes nothing",
        (SEQS,),
        apply=False,
        expect_skipped={"maxNumSeqs": "advise"},
        in_message="Advise",
    ),
    Case(
        "advise drops earlier overrides",
        (),
        apply=False,
        overrides={"maxNumSeqs": 160},
        in_message="maxNumSeqs=160 dropped",
    ),
    Case(
        "explicit value wins",
        (SEQS,),
        explicit={"maxNumSeqs": 256},
        expect_skipped={"maxNumSeqs": "explicit"},
        in_message="spec.engine.maxNumSeqs=256 is set explicitly and wins",
    ),
    Case(
        "explicit value drops an old override",
        (),
        explicit={"maxNumSeqs": 64},
        overrides={"maxNumSeqs": 160},
    ),
    Case(
        "one change per cool-down",
        (SEQS,),
        overrides={"gpuMemoryUtilization": 0.92},
        last_change=NOW - COOL_DOWN_S + 1,
        expect_overrides={"gpuMemoryUtilization": 0.92},
        expect_skipped={"maxNumSeqs": "coolDown"},
        in_message="cool-down",
    ),
    Case(
        "after the cool-down",
        (SEQS,),
        overrides={"gpuMemoryUtilization": 0.92},
        last_change=NOW - COOL_DOWN_S,
        expect_overrides={"gpuMemoryUtilization": 0.92, "maxNumSeqs": 160},
        expect_change=("maxNumSeqs", 256, 160),
    ),
    Case(
        "one change per pass",
        (MEM, SEQS),
        expect_overrides={"gpuMemoryUtilization": 0.92},
        expect_change=("gpuMemoryUtilization", 0.9, 0.92),
        expect_skipped={"maxNumSeqs": "coolDown"},
    ),
    Case(
        "explicit memory, tunable seqs",
        (MEM, SEQS),
        explicit={"gpuMemoryUtilization": 0.9},
        expect_overrides={"maxNumSeqs": 160},
        expect_change=("maxNumSeqs", 256, 160),
        expect_skipped={"gpuMemoryUtilization": "explicit"},
    ),
    Case("max_model_len is advice only", (LEN,), expect_skipped={"maxModelLen": "adviceOnly"}),
    Case(
        "unknown current value",
        (EngineAdvice("maxNumSeqs", "decrease", 160.0, "preemptions", current=None),),
        expect_skipped={"maxNumSeqs": "unknownCurrent"},
    ),
    Case(
        "bounded again",
        (EngineAdvice("maxNumSeqs", "decrease", 3.0, "preemptions", current=256.0),),
        expect_overrides={"maxNumSeqs": 128},
        expect_change=("maxNumSeqs", 256, 128),
    ),
    Case(
        "at the bound",
        (EngineAdvice("maxNumSeqs", "decrease", 1.0, "preemptions", current=1.0),),
        expect_skipped={"maxNumSeqs": "atBound"},
    ),
    Case(
        "nothing to do keeps overrides",
        (),
        overrides={"maxNumSeqs": 160},
        expect_overrides={"maxNumSeqs": 160},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_engine_tuning(case: Case) -> None:
    d = plan_engine_tuning(
        case.advice,
        apply_mode=case.apply,
        explicit=case.explicit,
        overrides=case.overrides,
        last_change=case.last_change,
        now=NOW,
    )
    assert d.overrides == pytest.approx(case.expect_overrides)
    change = None if d.change is None else (d.change.setting, d.change.previous, d.change.value)
    assert change == (None if case.expect_change is None else pytest.approx(case.expect_change))
    assert d.skipped == case.expect_skipped
    assert case.in_message in d.message


# ------------------------------------------------------------------------------------- glue and builders


def deployment(mode: str = "Apply", status: dict[str, Any] | None = None, **engine: Any) -> LLMDeployment:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"].update(namespace="ns", uid="uid-1", generation=1)
    doc["spec"]["recommendation"]["mode"] = mode
    doc["spec"]["engine"].update(engine)
    if status is not None:
        doc["status"] = status
    return LLMDeployment.model_validate(doc)


def preempting_pass(
    d: LLMDeployment, old: dict[str, Any], now: float, pods: list[dict[str, Any]] | None = None
) -> Any:
    """One autoscaler pass over a fleet that preempts a lot (the operator's order: target, config, decision,
    tuning, patch)."""
    target = make_target(d, d.spec.replicas)
    engine = target.inputs.engine
    config = scaling_config(d, engine.max_num_seqs, engine.gpu_memory_utilization)
    obs = FleetObservation(now - 1, ttft_p95=0.5, tpot_p95=0.02, waiting=0, running=60, preemption_rate=2.0)
    decision = compute_desired_replicas(config, obs, CapacityView(current=1, ready=1), AutoscalerState(), now)
    tuning = engine_tuning(d, decision, old, now, pods or [], target)
    return autoscaler_patch(decision, config, obs, old, now, STAMP, 1, None, tuning), engine


def test_apply_mode_records_the_override_and_the_builders_use_it() -> None:
    d = deployment()
    patch, engine = preempting_pass(d, {}, NOW)
    rec_seqs = engine.max_num_seqs
    assert rec_seqs is not None and rec_seqs > 2 and "max_num_seqs" in engine.applied
    tuning = patch.fields["engineTuning"]
    expected = max(-(-rec_seqs // 2), 48)  # 0.8 x 60 running, at most halved
    assert tuning["overrides"] == {"maxNumSeqs": expected}
    assert tuning["lastChange"]["from"] == rec_seqs and tuning["lastChange"]["to"] == expected
    assert tuning["coolDownUntil"] == "1970-01-12T13:56:40Z"  # NOW + 600 s
    (event,) = [e for e in patch.events if e.reason == "EngineTuned"]
    assert event.type == "Normal" and f"maxNumSeqs {rec_seqs} -> {expected}" in event.message
    assert "preemptions/s" in event.message and "1970-01-12T13:56:40Z" in event.message
    # The next reconcile plans from the status with the override: the workers run with it, a new hash.
    tuned = deployment(status={"engineTuning": tuning})
    assert tuned_overrides(tuned.status) == {"max_num_seqs": expected}
    t_before, t_after = make_target(d, 1), make_target(tuned, 1)
    assert t_after.inputs.engine.max_num_seqs == expected and t_after.inputs.engine.tuned == ("max_num_seqs",)
    assert t_after.spec_hash != t_before.spec_hash
    assert f"TIDAL_MAX_NUM_SEQS={expected}" in _engine_env(t_after)  # the worker contract
    assert f"TIDAL_MAX_NUM_SEQS={rec_seqs}" in _engine_env(t_before)
    # Still preempting inside the cool-down: no second change, no second Event.
    again, engine2 = preempting_pass(tuned, {"engineTuning": tuning}, NOW + 60)
    assert engine2.max_num_seqs == expected
    assert again.fields["engineTuning"]["overrides"] == {"maxNumSeqs": expected}
    assert again.fields["engineTuning"]["skipped"] == {"maxNumSeqs": "coolDown"}
    assert not [e for e in again.events if e.reason == "EngineTuned"]


def _engine_env(target: Any) -> list[str]:
    (pod,) = build_replica_pods(target.inputs, 0, target.spec_hash)
    return [
        f"{e.get('name')}={e.get('value')}" for c in pod["spec"]["containers"] for e in c.get("env") or []
    ]


def test_advise_mode_changes_nothing_but_status() -> None:
    d = deployment(mode="Advise")
    patch, _ = preempting_pass(d, {}, NOW)
    tuning = patch.fields["engineTuning"]
    assert tuning["overrides"] == {} and tuning["lastChange"] is None
    assert tuning["skipped"] == {"maxNumSeqs": "advise"} and "Advise mode" in tuning["message"]
    assert not [e for e in patch.events if e.reason.startswith("EngineTun")]
    assert any("preemptions/s" in a for a in patch.fields["advice"])
    # An override left by an earlier Apply is neither used by the builders nor kept.
    stale = {"overrides": {"maxNumSeqs": 10}, "message": "x"}
    held = deployment(mode="Advise", status={"engineTuning": stale})
    assert make_target(held, 1).spec_hash == make_target(d, 1).spec_hash
    patch, _ = preempting_pass(held, {"engineTuning": stale}, NOW)
    assert patch.fields["engineTuning"]["overrides"] == {"maxNumSeqs": None}  # merge patch: removed


def test_explicit_setting_is_never_overridden_and_says_so_once() -> None:
    d = deployment(maxNumSeqs=64)
    patch, engine = preempting_pass(d, {}, NOW)
    assert engine.max_num_seqs == 64
    tuning = patch.fields["engineTuning"]
    assert tuning["overrides"] == {} and tuning["skipped"] == {"maxNumSeqs": "explicit"}
    (event,) = [e for e in patch.events if e.reason == "EngineTuningSkipped"]
    assert "spec.engine.maxNumSeqs=64 is set explicitly and wins" in event.message
    again, _ = preempting_pass(d, {"engineTuning": tuning}, NOW + 15)
    assert not [e for e in again.events if e.reason == "EngineTuningSkipped"]
    # A stale override of a setting that is explicit now does not reach the workers.
    stale = deployment(maxNumSeqs=64, status={"engineTuning": {"overrides": {"maxNumSeqs": 10}}})
    assert make_target(stale, 1).inputs.engine.max_num_seqs == 64


def test_resolve_engine_order_explicit_then_override_then_recommendation() -> None:
    d = deployment()
    rec = recommend_for_spec(d.spec, 1)
    assert rec is not None
    plain = resolve_engine(d.spec, rec)
    tuned = resolve_engine(d.spec, rec, {"max_num_seqs": 7, "gpu_memory_utilization": 0.93})
    assert tuned.max_num_seqs == 7 and tuned.tuned == ("max_num_seqs",)
    assert tuned.gpu_memory_utilization == plain.gpu_memory_utilization == 0.9  # explicit in the example
    advise = deployment(mode="Advise")
    assert resolve_engine(advise.spec, rec, {"max_num_seqs": 7}).max_num_seqs is None


def test_no_advice_no_tuning_status() -> None:
    d = deployment()
    engine = make_target(d, 1).inputs.engine
    config = scaling_config(d, engine.max_num_seqs, engine.gpu_memory_utilization)
    obs = FleetObservation(NOW - 1, ttft_p95=0.5, tpot_p95=0.02, waiting=0, running=2)
    decision = compute_desired_replicas(config, obs, CapacityView(current=1, ready=1), AutoscalerState(), NOW)
    tuning = engine_tuning(d, decision, {}, NOW)
    assert tuning == TuningDecision({}, None, {}, "no engine advice")
    patch = autoscaler_patch(decision, config, obs, {}, NOW, STAMP, 1, None, tuning)
    assert patch.fields["engineTuning"] is None


def test_skipped_event_is_not_repeated_when_advice_comes_and_goes() -> None:
    """Advice that disappears and comes back within the hour does not post ``EngineTuningSkipped`` again;
    another reason, or the same one an hour later, does."""
    d = deployment(maxNumSeqs=64)
    first, _ = preempting_pass(d, {}, NOW)
    assert [e.reason for e in first.events].count("EngineTuningSkipped") == 1
    tuning = first.fields["engineTuning"]
    assert tuning["notified"] == {"maxNumSeqs": {"reason": "explicit", "time": STAMP}}
    # The advice goes away: nothing skipped now, but the notice is kept.
    no_advice = TuningDecision({}, None, {}, "no engine advice")
    status, events = tuning_status(no_advice, {"engineTuning": tuning}, STAMP, NOW + 60, 600)
    assert status is not None and not events
    assert status["skipped"] == {"maxNumSeqs": None} and status["notified"] == tuning["notified"]
    # ... and comes back within the hour: no second Event.
    back, _ = preempting_pass(d, {"engineTuning": status}, NOW + 120)
    assert not [e for e in back.events if e.reason == "EngineTuningSkipped"]
    # An hour after the first one it is said again.
    later, _ = preempting_pass(d, {"engineTuning": status}, NOW + RENOTIFY_SECONDS + 1)
    assert [e.reason for e in later.events].count("EngineTuningSkipped") == 1
    # Another reason for the same setting is said at once.
    other = {**status, "notified": {"maxNumSeqs": {"reason": "atBound", "time": STAMP}}}
    changed, _ = preempting_pass(d, {"engineTuning": other}, NOW + 120)
    assert [e.reason for e in changed.events].count("EngineTuningSkipped") == 1


# ------------------------------------------------------------------------------------------------ rollback


def _stored(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``status.engineTuning`` after the merge patch ``patch`` on ``old`` (nulls delete)."""
    out = dict(old)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _stored(out[k], v)
        else:
            out[k] = without_nulls(v)
    return out


def _crashing(spec_hash: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "llama-0", "labels": {"tidal.dev/spec-hash": spec_hash}},
        "status": {
            "containerStatuses": [
                {
                    "name": "engine",
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ]
        },
    }


def test_crash_looping_tuned_rollout_is_rolled_back_once_and_blocked() -> None:
    d = deployment()
    first, engine = preempting_pass(d, {}, NOW)
    rec_seqs, tuned_status = engine.max_num_seqs, first.fields["engineTuning"]
    to = int(tuned_status["lastChange"]["to"])
    tuned = deployment(status={"engineTuning": tuned_status})
    tuned_hash = make_target(tuned, 1).spec_hash
    assert tuned_status["lastChange"]["specHash"] == tuned_hash != make_target(d, 1).spec_hash
    # Healthy at the tuned hash: nothing happens (cool-down as before).
    ok, _ = preempting_pass(tuned, {"engineTuning": tuned_status}, NOW + 120)
    assert ok.fields["engineTuning"]["rolledBack"] is None
    assert not [e for e in ok.events if e.reason == "EngineTuningRolledBack"]
    # OOM-killed in a crash loop at the tuned hash, inside the cool-down: rolled back anyway.
    crash = [_crashing(tuned_hash)]
    at = NOW + 300
    patch, _ = preempting_pass(tuned, {"engineTuning": tuned_status}, at, crash)
    status = patch.fields["engineTuning"]
    assert status["overrides"] == {"maxNumSeqs": rec_seqs}
    assert status["blocked"] == {"maxNumSeqs": to}
    rolled = status["rolledBack"]
    assert (rolled["setting"], rolled["from"], rolled["to"], rolled["reason"]) == (
        "maxNumSeqs",
        to,
        rec_seqs,
        "OOMKilled",
    )
    assert status["coolDownUntil"] == "1970-01-12T14:01:40Z"  # restarted: NOW + 300 + 600 s
    assert status["lastChange"] == tuned_status["lastChange"]  # the change it undid
    (event,) = [e for e in patch.events if e.reason == "EngineTuningRolledBack"]
    assert event.type == "Warning"
    for text in (f"maxNumSeqs {to} -> {rec_seqs}", "pod llama-0 container engine OOMKilled", "3 restarts"):
        assert text in event.message
    assert "exit code 137" in event.message and tuned_hash in event.message
    assert not [e for e in patch.events if e.reason == "EngineTuned"]
    # The planner runs the workers with the restored value again.
    back_status = _stored(tuned_status, status)
    back = deployment(status={"engineTuning": back_status})
    assert make_target(back, 1).inputs.engine.max_num_seqs == rec_seqs
    # The next pass (pods still crashing at the tuned hash, replaced soon): no second rollback or Event.
    again, _ = preempting_pass(back, {"engineTuning": back_status}, at + 15, crash)
    assert again.fields["engineTuning"]["rolledBack"] == rolled
    assert not [e for e in again.events if e.reason.startswith("EngineTun")]
    # The cool-down runs from the rollback (not from the change it undid): no change before it ends.
    rolled_at = {**rolled, "time": "1970-01-12T13:51:40Z"}  # NOW + 300 s (the pass's STAMP is fixed)
    unblocked = {**back_status, "blocked": {}, "rolledBack": rolled_at}
    held, _ = preempting_pass(back, {"engineTuning": unblocked}, NOW + 700)
    assert held.fields["engineTuning"]["skipped"] == {"maxNumSeqs": "coolDown"}
    # After the cool-down the same advice comes back: the blocked value is not applied again.
    later, _ = preempting_pass(back, {"engineTuning": back_status}, at + 601)
    later_status = later.fields["engineTuning"]
    assert later_status["overrides"] == {"maxNumSeqs": rec_seqs}
    assert later_status["skipped"] == {"maxNumSeqs": "blocked"}
    assert not [e for e in later.events if e.reason == "EngineTuned"]
    assert f"maxNumSeqs -> {to} is blocked" in later_status["message"]
    # The rollback Event said so: EngineTuningSkipped only an hour after it.
    assert not [e for e in later.events if e.reason == "EngineTuningSkipped"]
    assert later_status["notified"]["maxNumSeqs"] == {"reason": "blocked", "time": STAMP}
    hour, _ = preempting_pass(back, {"engineTuning": later_status}, at + RENOTIFY_SECONDS + 1)
    (skipped,) = [e for e in hour.events if e.reason == "EngineTuningSkipped"]
    assert f"maxNumSeqs -> {to} is blocked: maxNumSeqs {to} crash-looped" in skipped.message
    assert hour.fields["engineTuning"]["overrides"] == {"maxNumSeqs": rec_seqs}


def test_blocked_status_round_trips_through_the_model() -> None:
    d = deployment()
    first, _ = preempting_pass(d, {}, NOW)
    tuned_status = first.fields["engineTuning"]
    tuned = deployment(status={"engineTuning": tuned_status})
    crash = [_crashing(make_target(tuned, 1).spec_hash)]
    patch, _ = preempting_pass(tuned, tuned.status.to_dict(), NOW + 300, crash)
    stored = _stored(tuned_status, patch.fields["engineTuning"])
    model = deployment(status={"engineTuning": stored}).status
    assert model.engine_tuning is not None and model.engine_tuning.rolled_back is not None
    assert model.engine_tuning.rolled_back.reason == "OOMKilled"
    assert model.engine_tuning.blocked == {"maxNumSeqs": stored["blocked"]["maxNumSeqs"]}
    assert model.engine_tuning.last_change is not None
    assert model.engine_tuning.last_change.spec_hash == crash[0]["metadata"]["labels"]["tidal.dev/spec-hash"]


class _PreemptingPrometheus:
    """What ``autoscale_pass`` reads from Prometheus: a fleet that preempts a lot."""

    def observe(self, *_: Any, **__: Any) -> tuple[FleetObservation, None]:
        obs = FleetObservation(
            NOW - 1, ttft_p95=0.5, tpot_p95=0.02, waiting=0, running=60, preemption_rate=2.0
        )
        return obs, None


def test_the_operator_pass_rolls_back_a_crash_looping_tuned_rollout() -> None:
    """The operator's autoscaler pass (``tidal.shell.autoscale.autoscale_pass``) hands the deployment's pods
    and its target to the rollback decision."""
    from datetime import UTC, datetime

    from tidal.shell.autoscale import autoscale_pass

    d = deployment()
    first, engine = preempting_pass(d, {}, NOW)
    tuned_status = first.fields["engineTuning"]
    tuned = deployment(status={"engineTuning": tuned_status})
    target = make_target(tuned, tuned.spec.replicas)
    crash = [_crashing(target.spec_hash)]
    result = autoscale_pass(
        tuned,
        resolve(tuned, crash, datetime.fromtimestamp(NOW + 300, UTC)),
        {"engineTuning": tuned_status},
        crash,
        crash,
        None,
        _PreemptingPrometheus(),  # type: ignore[arg-type]
        NOW + 300,
        datetime.fromtimestamp(NOW + 300, UTC),
        "1970-01-12T13:51:40Z",
    )
    status = result.patch.fields["engineTuning"]
    assert status["overrides"] == {"maxNumSeqs": engine.max_num_seqs}
    assert status["rolledBack"]["reason"] == "OOMKilled"
    assert [e.reason for e in result.patch.events if e.reason == "EngineTuningRolledBack"] == [
        "EngineTuningRolledBack"
    ]
