"""Rolling back an applied engine-tuning change whose rollout crash-loops (tidal.scaling.rollback): only pods
at the hash the change produced, only soon after it, only while it is in force, once; the failed value is
blocked for the next tuning passes."""

from __future__ import annotations

from typing import Any

import pytest

from tidal.scaling import EngineAdvice
from tidal.scaling.rollback import ROLLBACK_WINDOW_S, crash_loop, plan_rollback
from tidal.scaling.tuning import is_blocked, plan_engine_tuning

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
CHANGED = "1970-01-12T13:41:40Z"  # NOW - 300 s
TUNED = "abc123"
OLD = "old999"


def pod(
    name: str,
    spec_hash: str = TUNED,
    *,
    restarts: int = 0,
    waiting: str | None = None,
    last: str | None = None,
    exit_code: int = 1,
    terminating: bool = False,
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "engine", "restartCount": restarts, "ready": False, "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting}}
    else:
        cs["state"] = {"running": {"startedAt": CHANGED}}
    if last:
        cs["lastState"] = {"terminated": {"reason": last, "exitCode": exit_code}}
    meta: dict[str, Any] = {"name": name, "labels": {"tidal.dev/spec-hash": spec_hash}}
    if terminating:
        meta["deletionTimestamp"] = CHANGED
    return {"metadata": meta, "status": {"containerStatuses": [cs]}}


def healthy(name: str, spec_hash: str = TUNED) -> dict[str, Any]:
    return pod(name, spec_hash)


def tuning(**extra: Any) -> dict[str, Any]:
    """``status.engineTuning`` right after ``gpuMemoryUtilization`` 0.9 -> 0.92 rolled to hash TUNED."""
    return {
        "overrides": {"gpuMemoryUtilization": 0.92},
        "lastChange": {
            "time": CHANGED,
            "setting": "gpuMemoryUtilization",
            "from": 0.9,
            "to": 0.92,
            "message": "kv full",
            "specHash": TUNED,
        },
        "coolDownUntil": "1970-01-12T13:51:40Z",
        **extra,
    }


OOM = pod("llama-1", restarts=3, waiting="CrashLoopBackOff", last="OOMKilled", exit_code=137)


def test_crash_loop_at_the_tuned_hash_rolls_back() -> None:
    r = plan_rollback(tuning(), [healthy("llama-0", OLD), OOM, healthy("llama-2")], TUNED, NOW)
    assert r is not None
    assert (r.setting, r.bad, r.restored, r.reason) == ("gpuMemoryUtilization", 0.92, 0.9, "OOMKilled")
    assert r.overrides == {"gpuMemoryUtilization": 0.9}
    assert r.blocked == {"gpuMemoryUtilization": 0.92}
    for text in ("pod llama-1 container engine OOMKilled", "3 restarts", "exit code 137", "1/2 pods", TUNED):
        assert text in r.message
    assert (
        "gpuMemoryUtilization 0.92 -> 0.9" in r.message and "0.92 or higher is not applied again" in r.message
    )


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (pod("p", waiting="CrashLoopBackOff", last="Error", restarts=1), "CrashLoopBackOff"),
        (pod("p", restarts=2), "Restarting"),
        (pod("p", restarts=1, last="Error"), "Error"),
        (pod("p", restarts=1, last="OOMKilled", exit_code=137), "OOMKilled"),
    ],
)
def test_each_crash_sign_counts(bad: dict[str, Any], reason: str) -> None:
    r = plan_rollback(tuning(), [bad], TUNED, NOW)
    assert r is not None and r.reason == reason


def test_oom_is_quoted_before_another_crash() -> None:
    crash = crash_loop([pod("a", waiting="CrashLoopBackOff", restarts=4), OOM], TUNED)
    assert crash is not None and (crash.pod, crash.reason, crash.crashing, crash.pods) == (
        "llama-1",
        "OOMKilled",
        2,
        2,
    )


@pytest.mark.parametrize(
    ("status", "pods", "spec_hash", "now"),
    [
        pytest.param(tuning(), [healthy("a"), pod("b", restarts=1)], TUNED, NOW, id="healthy"),
        pytest.param(
            tuning(), [pod("a", OLD, restarts=5, waiting="CrashLoopBackOff")], TUNED, NOW, id="old-hash"
        ),
        pytest.param(
            tuning(),
            [pod("a", restarts=5, waiting="CrashLoopBackOff", terminating=True)],
            TUNED,
            NOW,
            id="going",
        ),
        pytest.param({"overrides": {"gpuMemoryUtilization": 0.92}}, [OOM], TUNED, NOW, id="no-last-change"),
        pytest.param(tuning(), [OOM], TUNED, NOW - 300 + ROLLBACK_WINDOW_S + 1, id="change-too-old"),
        # A later spec edit rolled the replicas on: the tuned hash is not what they run with now.
        pytest.param(
            tuning(), [pod("a", "edited", restarts=3, last="OOMKilled")], "edited", NOW, id="spec-edit"
        ),
        pytest.param(
            {**tuning(), "overrides": {"gpuMemoryUtilization": None}},
            [OOM],
            TUNED,
            NOW,
            id="change-not-in-force",
        ),
        pytest.param(
            {**tuning(), "lastChange": {**tuning()["lastChange"], "specHash": None}},
            [OOM],
            TUNED,
            NOW,
            id="hash-not-recorded",
        ),
    ],
)
def test_no_rollback(status: dict[str, Any], pods: list[dict[str, Any]], spec_hash: str, now: float) -> None:
    assert plan_rollback(status, pods, spec_hash, now) is None


def test_second_pass_after_the_rollback_does_nothing() -> None:
    first = plan_rollback(tuning(), [OOM], TUNED, NOW)
    assert first is not None
    done = tuning(
        overrides=first.overrides,
        blocked=first.blocked,
        rolledBack={"time": "1970-01-12T13:46:40Z", "setting": first.setting, "from": 0.92, "to": 0.9},
    )
    assert plan_rollback(done, [OOM], TUNED, NOW + 15) is None
    # Even with the override still at the failed value (the write not seen yet), the record stops it.
    assert (
        plan_rollback({**done, "overrides": {"gpuMemoryUtilization": 0.92}}, [OOM], TUNED, NOW + 15) is None
    )


def test_an_earlier_rollback_does_not_stop_a_later_change() -> None:
    earlier = {"time": "1970-01-12T13:00:00Z", "setting": "maxNumSeqs", "from": 64, "to": 128}
    r = plan_rollback(tuning(rolledBack=earlier, blocked={"maxNumSeqs": 64}), [OOM], TUNED, NOW)
    assert r is not None and r.blocked == {"maxNumSeqs": 64, "gpuMemoryUtilization": 0.92}


def test_blocked_value_and_beyond() -> None:
    blocked = {"gpuMemoryUtilization": 0.92, "maxNumSeqs": 64.0}
    assert is_blocked("gpuMemoryUtilization", 0.92, blocked)
    assert is_blocked("gpuMemoryUtilization", 0.94, blocked)
    assert not is_blocked("gpuMemoryUtilization", 0.91, blocked)
    assert is_blocked("maxNumSeqs", 64, blocked) and is_blocked("maxNumSeqs", 32, blocked)
    assert not is_blocked("maxNumSeqs", 96, blocked)
    assert not is_blocked("maxNumSeqs", 64, {})


def test_next_tuning_pass_does_not_apply_the_blocked_value() -> None:
    advice = [EngineAdvice("gpuMemoryUtilization", "increase", 0.99, "kv full", current=0.9)]
    kwargs: dict[str, Any] = {
        "apply_mode": True,
        "explicit": {},
        "overrides": {},
        "last_change": None,
        "now": NOW,
    }
    free = plan_engine_tuning(advice, **kwargs)
    assert free.change is not None and free.change.value == pytest.approx(0.92)
    held = plan_engine_tuning(advice, **kwargs, blocked={"gpuMemoryUtilization": 0.92})
    assert held.change is None and held.overrides == {}
    assert held.skipped == {"gpuMemoryUtilization": "blocked"} and held.blocked == {
        "gpuMemoryUtilization": 0.92
    }
    assert "gpuMemoryUtilization -> 0.92 is blocked" in held.message
    # A smaller step (from a lower current value) stays below the blocked value and is applied.
    lower = [EngineAdvice("gpuMemoryUtilization", "increase", 0.91, "kv full", current=0.89)]
    step = plan_engine_tuning(lower, **kwargs, blocked={"gpuMemoryUtilization": 0.92})
    assert step.change is not None and step.change.value == pytest.approx(0.91)
