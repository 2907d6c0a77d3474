"""Rolling back an applied engine-tuning change whose rollout crash-loops (``Apply`` mode).

A tuned change (:mod:`tidal.scaling.tuning`) rolls the replicas to a new pod template hash. If the workers at
that hash then crash-loop or are OOM-killed (``gpuMemoryUtilization`` raised past what the GPU really has,
for example), the change is undone: its override goes back to the value the workers ran with before it
(``lastChange.from``), and the value that failed is *blocked* for that setting
(``status.engineTuning.blocked``), so the next tuning pass does not apply it again when the same advice
comes back.

Why a block and not a longer cool-down: the failure is a fact about that value on this deployment, not about
time. A cool-down of hours would also hold back the other setting and any safe smaller step, and once it ran
out the same advice would bring back the same crash. The block holds only that setting at that value or
beyond it (lower ``maxNumSeqs``, higher ``gpuMemoryUtilization``; ``maxNumBatchedTokens`` moves both ways,
so beyond is past it as seen from the restored value: a raised chunk that failed blocks larger ones, a
lowered one smaller ones, :func:`tidal.scaling.tuning.is_blocked`); it stays in the status until an operator
removes it, and an explicit spec value wins over tuning anyway.

The change is blamed only when it is what produced the hash the replicas run with now:
``lastChange.specHash`` (recorded with the change) equals the current target hash, the override still holds
``lastChange.to``, and the change is at most :data:`ROLLBACK_WINDOW_S` old. A crash loop after a later spec
edit (another hash) or long after the change is the planner's ``Degraded`` condition alone.

Pure: the ``engineTuning`` status, the worker pods (the planner's pod dicts), the target hash and ``now``
are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from tidal.builders.names import SPEC_HASH_LABEL
from tidal.scaling.tuning import GPU_MEMORY_UTILIZATION, MAX_NUM_BATCHED_TOKENS, TUNABLE

ROLLBACK_WINDOW_S: Final = 1800.0
"""A crash loop at the tuned hash is blamed on the change for at most this long after it was applied."""
CRASH_RESTARTS: Final = 2
"""A container restarted this many times (or more) at the tuned hash counts as crash-looping."""
_FAILED_TERMINATIONS: Final = ("OOMKilled", "Error")


@dataclass(frozen=True)
class CrashLoop:
    """The evidence: the first crash-looping container at the hash and how many pods there crash."""

    pod: str
    container: str
    reason: str
    """``OOMKilled``, ``CrashLoopBackOff``, ``Error`` or ``Restarting`` (restarts, no recorded reason)."""
    restarts: int
    exit_code: int | None
    crashing: int
    """Pods at the hash with a crash-looping container."""
    pods: int
    """Pods at the hash."""


@dataclass(frozen=True)
class Rollback:
    """Undo ``setting`` from ``bad`` back to ``restored`` and block ``bad``."""

    setting: str
    bad: float
    """The value the change applied (``lastChange.to``)."""
    restored: float
    """The value before it (``lastChange.from``)."""
    reason: str
    message: str
    overrides: dict[str, float]
    """The overrides after the rollback."""
    blocked: dict[str, float]
    """The blocked values after the rollback (setting -> value not applied again, nor any beyond it)."""


def _container_crash(cs: Mapping[str, Any]) -> tuple[str, int, int | None] | None:
    """(reason, restarts, exit code) when the container crash-loops: waiting in ``CrashLoopBackOff``,
    restarted :data:`CRASH_RESTARTS` times or more, or last (or now) terminated ``OOMKilled`` or ``Error``."""
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    restarts = int(cs.get("restartCount") or 0)
    ended = terminated if terminated.get("reason") in _FAILED_TERMINATIONS else last
    code = ended.get("exitCode")
    exit_code = code if isinstance(code, int) else None
    if "OOMKilled" in (terminated.get("reason"), last.get("reason")):
        return "OOMKilled", restarts, exit_code
    if waiting.get("reason") == "CrashLoopBackOff":
        return "CrashLoopBackOff", restarts, exit_code
    if ended.get("reason") in _FAILED_TERMINATIONS:
        return str(ended["reason"]), restarts, exit_code
    if restarts >= CRASH_RESTARTS:
        return "Restarting", restarts, exit_code
    return None


def crash_loop(pods: Sequence[Mapping[str, Any]], spec_hash: str) -> CrashLoop | None:
    """The crash loop among the pods labelled with ``spec_hash`` (terminating ones aside), or ``None``. The
    first pod by name with an ``OOMKilled`` container is quoted, else the first crashing one."""
    at_hash = sorted(
        (
            p
            for p in pods
            if ((p.get("metadata") or {}).get("labels") or {}).get(SPEC_HASH_LABEL) == spec_hash
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ),
        key=lambda p: str((p.get("metadata") or {}).get("name", "")),
    )
    found: list[CrashLoop] = []
    crashing = 0
    for pod in at_hash:
        status = pod.get("status") or {}
        hits = [
            (str(cs.get("name", "?")), hit)
            for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
            if (hit := _container_crash(cs)) is not None
        ]
        if hits:
            crashing += 1
            name = str((pod.get("metadata") or {}).get("name", "?"))
            found += [CrashLoop(name, c, r, n, code, 0, 0) for c, (r, n, code) in hits]
    if not found:
        return None
    first = next((c for c in found if c.reason == "OOMKilled"), found[0])
    return CrashLoop(
        first.pod, first.container, first.reason, first.restarts, first.exit_code, crashing, len(at_hash)
    )


def _time(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def plan_rollback(
    tuning: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    spec_hash: str,
    now: float,
    window_s: float = ROLLBACK_WINDOW_S,
) -> Rollback | None:
    """The rollback to make now, or ``None`` (see the module docstring). ``tuning``: ``status.engineTuning``;
    ``spec_hash``: the hash the replicas are rolled to now (the reconcile target's)."""
    tuning = tuning or {}
    last = tuning.get("lastChange") or {}
    setting = last.get("setting")
    changed_at = _time(last.get("time"))
    if setting not in TUNABLE or changed_at is None or not 0 <= now - changed_at <= window_s:
        return None
    if not spec_hash or last.get("specHash") != spec_hash:
        return None  # not the hash the change produced (a later spec edit, or a change from before specHash)
    done = tuning.get("rolledBack") or {}
    done_at = _time(done.get("time"))
    if done_at is not None and done_at >= changed_at:
        return None  # already rolled back
    overrides = {k: float(v) for k, v in (tuning.get("overrides") or {}).items() if v is not None}
    bad, restored = float(last["to"]), float(last["from"])
    if setting not in overrides or abs(overrides[setting] - bad) > 1e-9:
        return None  # the change is no longer in force
    crash = crash_loop(pods, spec_hash)
    if crash is None:
        return None
    age = now - changed_at
    code = "" if crash.exit_code is None else f", exit code {crash.exit_code}"
    message = (
        f"{setting} {bad:g} -> {restored:g}: rolled back the change of {last.get('time')} "
        f"({restored:g} -> {bad:g}, {age:.0f}s ago): pod {crash.pod} container {crash.container} "
        f"{crash.reason} ({crash.restarts} restarts{code}), {crash.crashing}/{crash.pods} pods crash-looping "
        f"at spec hash {spec_hash}; {setting} {bad:g} {_beyond(setting, bad, restored)} is not applied again"
    )
    blocked = {k: float(v) for k, v in (tuning.get("blocked") or {}).items() if v is not None}
    return Rollback(
        setting,
        bad,
        restored,
        crash.reason,
        message,
        {**overrides, setting: restored},
        {**blocked, setting: bad},
    )


def _beyond(setting: str, bad: float, restored: float) -> str:
    if setting == MAX_NUM_BATCHED_TOKENS:
        return "or higher" if bad > restored else "or lower"
    return "or higher" if setting == GPU_MEMORY_UTILIZATION else "or lower"


__all__ = [
    "CRASH_RESTARTS",
    "ROLLBACK_WINDOW_S",
    "CrashLoop",
    "Rollback",
    "crash_loop",
    "plan_rollback",
]
