"""Engine tuning inside an autoscaler pass: what to do with the decision's engine advice
(:func:`tidal.scaling.tuning.plan_engine_tuning`), a rollback of a change that crash-loops
(:func:`tidal.scaling.rollback.plan_rollback`), and ``status.engineTuning`` with its Events.

Its own module because tuning is the one part of a pass that changes the pod template (an applied change is
recorded in ``status.engineTuning.overrides``, which the pod builders read, so it rolls out like any spec
change): it needs the pass's resolved target to hash the template it would produce.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace as dc_replace
from datetime import UTC, datetime
from typing import Any, Final

from tidal.api import AUTO, LLMDeployment
from tidal.api.enginefields import BY_SPEC_NAME
from tidal.builders.engine import resolve_engine
from tidal.builders.pods import compute_spec_hash
from tidal.plan.documents import rfc3339
from tidal.plan.replicas import parse_time
from tidal.plan.target import Target
from tidal.plan.types import EventSpec
from tidal.scaling import ScalingDecision
from tidal.scaling.rollback import plan_rollback
from tidal.scaling.tuning import TUNABLE, TuningDecision, plan_engine_tuning

ENGINE_TUNED: Final = "EngineTuned"
ENGINE_TUNING_SKIPPED: Final = "EngineTuningSkipped"
ENGINE_TUNING_ROLLED_BACK: Final = "EngineTuningRolledBack"
RENOTIFY_SECONDS: Final = 3600.0
"""An ``EngineTuningSkipped`` Event for the same setting and reason is not posted again sooner than this."""


def engine_tuning(
    deployment: LLMDeployment,
    decision: ScalingDecision,
    status: Mapping[str, Any] | None,
    now: float,
    pods: Sequence[Mapping[str, Any]] | None = None,
    target: Target | None = None,
) -> TuningDecision:
    """What to do with the decision's engine advice (:func:`tidal.scaling.tuning.plan_engine_tuning`), from
    the spec (mode, explicit values) and ``status.engineTuning`` (overrides, time of the last change, blocked
    values). With the deployment's worker ``pods`` and the reconcile ``target`` (Apply mode): first whether
    the last change crash-loops at the hash it produced (:func:`tidal.scaling.rollback.plan_rollback`); a
    rollback replaces that override, blocks the failed value and restarts the cool-down (so no other change
    is made in the same pass), whatever the cool-down said. An applied change records the hash it rolls the
    replicas to (``lastChange.specHash``)."""
    spec = deployment.spec
    apply_mode = spec.recommendation.mode == "Apply"
    explicit: dict[str, float] = {}
    for setting in TUNABLE:
        raw = getattr(spec.engine, BY_SPEC_NAME[setting].field)
        if raw != AUTO:
            explicit[setting] = float(raw)
    old = (status or {}).get("engineTuning") or {}
    overrides = {k: float(v) for k, v in (old.get("overrides") or {}).items() if v is not None}
    blocked = {k: float(v) for k, v in (old.get("blocked") or {}).items() if v is not None}
    # The cool-down runs from the last change or rollback, whichever is later (both roll the replicas).
    times = [parse_time(str((old.get(k) or {}).get("time") or "")) for k in ("lastChange", "rolledBack")]
    last_change = max((t.timestamp() for t in times if t is not None), default=None)
    rollback = None
    if apply_mode and pods is not None and target is not None:
        rollback = plan_rollback(old, pods, target.spec_hash, now)
    if rollback is not None:
        overrides, blocked, last_change = rollback.overrides, rollback.blocked, now
    tuning = plan_engine_tuning(
        decision.advice,
        apply_mode=apply_mode,
        explicit=explicit,
        overrides=overrides,
        last_change=last_change,
        now=now,
        blocked=blocked,
    )
    if rollback is not None:
        message = f"{rollback.message}; {tuning.message}"
        tuning = dc_replace(tuning, rollback=rollback, message=message)
    if tuning.change is not None and target is not None:
        change = dc_replace(tuning.change, spec_hash=tuned_hash(deployment, target, tuning.overrides))
        tuning = dc_replace(tuning, change=change)
    return tuning


def tuned_hash(deployment: LLMDeployment, target: Target, overrides: Mapping[str, float]) -> str:
    """The pod template hash the replicas run with once ``overrides`` (by spec field name) are in force:
    the target's inputs with the engine resolved again (as :func:`tidal.plan.target.make_target` does
    from the status that records them)."""
    by_field = {BY_SPEC_NAME[k].field: _value(k, v) for k, v in overrides.items()}
    engine = resolve_engine(deployment.spec, target.recommendation, by_field)
    return compute_spec_hash(dc_replace(target.inputs, engine=engine))


def _stamp_of(t: float) -> str:
    return rfc3339(datetime.fromtimestamp(t, UTC))


def tuning_status(
    tuning: TuningDecision, old_status: Mapping[str, Any] | None, stamp: str, now: float, cool_down_s: float
) -> tuple[dict[str, Any] | None, list[EventSpec]]:
    """``status.engineTuning`` and the Events of one tuning decision: ``EngineTuningRolledBack`` (Warning)
    for a rollback (recorded in ``rolledBack``, the failed value in ``blocked``, the cool-down restarted),
    ``EngineTuned`` for an applied change, ``EngineTuningSkipped`` when advice is held back for a reason
    other than the cool-down or ``Advise`` mode (an explicit spec value, a bound, an unknown current value,
    a blocked value) and no Event said so for that setting and reason within :data:`RENOTIFY_SECONDS`
    (``notified``, kept when the advice goes away). ``None`` (nothing to record) when there is no override,
    no advice, no earlier change, no block and no earlier Event."""
    old = (old_status or {}).get("engineTuning") or {}
    events: list[EventSpec] = []
    last = old.get("lastChange")
    until = old.get("coolDownUntil")
    rolled = old.get("rolledBack")
    if tuning.rollback is not None:
        r = tuning.rollback
        until = _stamp_of(now + cool_down_s)
        frm, to = _value(r.setting, r.bad), _value(r.setting, r.restored)
        rolled = _tuning_entry(stamp, r.setting, frm, to, r.message, reason=r.reason)
        events.append(EventSpec("Warning", ENGINE_TUNING_ROLLED_BACK, r.message))
    if tuning.change is not None:
        c = tuning.change
        until = _stamp_of(now + cool_down_s)
        last = _tuning_entry(stamp, c.setting, c.previous, c.value, c.message, specHash=c.spec_hash)
        events.append(
            EventSpec(
                "Normal",
                ENGINE_TUNED,
                f"{c.message} (Apply mode; rolls out replica by replica; next change not before {until})",
            )
        )
    quiet = ("coolDown", "advise")
    notified: dict[str, Any] = dict(old.get("notified") or {})
    fresh = {
        k: v
        for k, v in tuning.skipped.items()
        if v not in quiet and not _notified_recently(notified.get(k), v, now)
    }
    if tuning.rollback is not None and fresh.get(tuning.rollback.setting) == "blocked":
        # The EngineTuningRolledBack Event already says the value is blocked: noted, not said twice.
        del fresh[tuning.rollback.setting]
        notified[tuning.rollback.setting] = {"reason": "blocked", "time": stamp}
    if fresh:
        events.append(EventSpec("Normal", ENGINE_TUNING_SKIPPED, tuning.message[:1024]))
        notified.update({k: {"reason": v, "time": stamp} for k, v in fresh.items()})
    if not tuning.overrides and not tuning.skipped and last is None and not notified and not tuning.blocked:
        return None, events
    # A merge patch keeps keys it does not name: removed ones are written as null.
    overrides: dict[str, Any] = {k: None for k in old.get("overrides") or {}}
    overrides.update({k: _value(k, v) for k, v in tuning.overrides.items()})
    skipped: dict[str, Any] = {k: None for k in old.get("skipped") or {}}
    skipped.update(tuning.skipped)
    return {
        "overrides": overrides,
        "lastChange": last,
        "coolDownUntil": until,
        "skipped": skipped,
        "message": tuning.message[:1024],
        "notified": notified,
        "rolledBack": rolled,
        "blocked": {
            **{k: None for k in old.get("blocked") or {}},
            **{k: _value(k, v) for k, v in tuning.blocked.items()},
        },
    }, events


def _tuning_entry(
    stamp: str, setting: str, frm: float, to: float, message: str, **extra: Any
) -> dict[str, Any]:
    """A ``lastChange`` or ``rolledBack`` record."""
    return {"time": stamp, "setting": setting, "from": frm, "to": to, "message": message[:1024], **extra}


def _value(setting: str, value: float) -> int | float:
    """A setting's value as the status stores it, by the registry's type (``maxNumSeqs`` is an integer)."""
    known = BY_SPEC_NAME.get(setting)
    return value if known is None else known.parse(value)


def _notified_recently(notice: Mapping[str, Any] | None, reason: str, now: float) -> bool:
    """An ``EngineTuningSkipped`` Event for this reason was posted less than :data:`RENOTIFY_SECONDS` ago."""
    if not notice or notice.get("reason") != reason:
        return False
    posted = parse_time(str(notice.get("time", "")))
    return posted is not None and now - posted.timestamp() < RENOTIFY_SECONDS


__all__ = ["RENOTIFY_SECONDS", "engine_tuning", "tuned_hash", "tuning_status"]
