"""Engine tuning from live advice: which advised engine setting Tidal may change on its own, by how much, and
when (``spec.recommendation.mode: Apply`` only).

Detection (:mod:`tidal.scaling.detection`) turns saturation patterns into :class:`EngineAdvice` that names a
setting and a concrete, bounded value. This module decides whether that value becomes an *override*: the
value the workers run with in place of the recommendation for a setting left ``"auto"``. It is built to be
trusted by the SRE on call:

* ``Advise`` mode changes nothing: advice stays advice, and overrides left from an earlier ``Apply`` are
  dropped (the mode says "hands off").
* A setting the user wrote explicitly in the spec is never overridden; the decision says so.
* Changes are bounded (:func:`bounded_value`): ``maxNumSeqs`` never below 1 and at most halved per step;
  ``gpuMemoryUtilization`` at most :data:`GPU_MEMORY_STEP` up per step and never above
  :data:`GPU_MEMORY_CEILING`; ``maxNumBatchedTokens`` (the prefill chunk budget, the one setting tuning
  moves both ways) at most halved or doubled per step and kept within :data:`CHUNK_FLOOR` ..
  :data:`CHUNK_CEILING` (the advice, :mod:`tidal.scaling.chunkadvice`, adds the tighter bounds it knows:
  never below ``max_num_seqs``, never raised above the recommendation). ``maxModelLen`` is advice only: a
  shorter context refuses requests that worked before, which is the user's call.
* At most one change per :data:`COOL_DOWN_S`: the change rolls the replicas (the effective settings are
  part of the pod template hash), and its effect needs time to show in the metrics before the next one.
* A value whose rollout crash-looped was rolled back (:mod:`tidal.scaling.rollback`) and is *blocked*: that
  value, or one beyond it (lower ``maxNumSeqs``, higher ``gpuMemoryUtilization``; for
  ``maxNumBatchedTokens``, which moves both ways, a value at or past the blocked one as seen from the value
  the engine runs with, see :func:`is_blocked`), is not applied again.

Pure: the previous overrides and the time of the last change are passed in (they live in
``status.engineTuning`` so a restart neither forgets nor repeats a change).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from tidal.api.enginefields import BY_FIELD, SETTINGS
from tidal.scaling.types import EngineAdvice

if TYPE_CHECKING:
    from tidal.scaling.rollback import Rollback

MAX_NUM_SEQS: Final = BY_FIELD["max_num_seqs"].spec_name
GPU_MEMORY_UTILIZATION: Final = BY_FIELD["gpu_memory_utilization"].spec_name
MAX_MODEL_LEN: Final = BY_FIELD["max_model_len"].spec_name
MAX_NUM_BATCHED_TOKENS: Final = BY_FIELD["max_num_batched_tokens"].spec_name
TUNABLE: Final = tuple(s.spec_name for s in SETTINGS if s.live_tunable)
"""Settings an override may change (spec field names): the registry's live-tunable ones."""

GPU_MEMORY_CEILING: Final = 0.95
"""Highest ``gpuMemoryUtilization`` tuning ever sets. The recommender stays at vLLM's 0.90 because the rest
covers CUDA-graph pools, NCCL buffers and allocator fragmentation its profiler does not see; with a KV cache
measured full at small batches, half of that margin may go to the KV cache, no more."""
GPU_MEMORY_STEP: Final = 0.02
"""Most ``gpuMemoryUtilization`` is raised by one change."""
CHUNK_FLOOR: Final = 512
"""Lowest ``maxNumBatchedTokens`` tuning ever sets: below it a step's fixed cost (weights read, kernel
launches) dominates and prefill throughput collapses, while the TPOT gain over 512 is small."""
CHUNK_CEILING: Final = 8192
"""Highest ``maxNumBatchedTokens`` tuning ever sets (vLLM's API-server default on large GPUs)."""
COOL_DOWN_S: Final = 600.0
"""At most one applied change per this many seconds."""


def bounded_value(setting: str, current: float, suggested: float) -> float | None:
    """``suggested`` clipped to one bounded step from ``current``; ``None`` when no step is possible (already
    at the bound) or the setting is not tunable."""
    if setting == MAX_NUM_SEQS:
        cur = int(current)
        floor = max(1, math.ceil(cur / 2))
        value = min(cur - 1, max(floor, round(suggested)))
        return float(value) if 1 <= value < cur else None
    if setting == GPU_MEMORY_UTILIZATION:
        ceiling = min(GPU_MEMORY_CEILING, current + GPU_MEMORY_STEP)
        raised = round(min(ceiling, suggested), 4)
        return raised if raised > current + 1e-9 else None
    if setting == MAX_NUM_BATCHED_TOKENS:
        cur = int(current)
        if suggested < cur:
            lowered = max(CHUNK_FLOOR, math.ceil(cur / 2), math.ceil(suggested))
            return float(lowered) if lowered < cur else None
        raised = min(CHUNK_CEILING, 2 * cur, math.floor(suggested))
        return float(raised) if raised > cur else None
    return None


@dataclass(frozen=True)
class TuningChange:
    """One applied change of an engine setting."""

    setting: str
    previous: float
    value: float
    message: str
    spec_hash: str | None = None
    """The pod template hash the change rolls the replicas to (filled in by the glue, which knows the
    builders; :func:`tidal.scaling.rollback.plan_rollback` blames only that hash)."""


def is_blocked(
    setting: str, value: float, blocked: Mapping[str, float], current: float | None = None
) -> bool:
    """``value`` is the blocked value of ``setting`` or beyond it in the direction tuning moves it (lower
    ``maxNumSeqs``, higher ``gpuMemoryUtilization``).

    ``maxNumBatchedTokens`` moves both ways, so "beyond" is relative to ``current``, the value the engine
    runs with (after a rollback, the restored one): a value that reaches the blocked one or passes it, going
    from ``current`` towards it, is blocked; a step the other way is not (a raised chunk that OOM-killed the
    profile run blocks that chunk and larger ones, not a smaller one). Without ``current`` only the blocked
    value itself is."""
    if setting not in blocked:
        return False
    bad = blocked[setting]
    if setting == MAX_NUM_SEQS:
        return value <= bad + 1e-9
    if setting == MAX_NUM_BATCHED_TOKENS:
        if abs(value - bad) <= 1e-9:
            return True
        if current is None or abs(current - bad) <= 1e-9:
            return False
        return value >= bad if current < bad else value <= bad
    return value >= bad - 1e-9


@dataclass(frozen=True)
class TuningDecision:
    """The overrides to keep, the change made now (if any) and why the other advice was not applied."""

    overrides: dict[str, float]
    """Setting (spec field name) -> value the workers run with instead of the recommendation."""
    change: TuningChange | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    """Setting -> why its advice was not applied (a stable key for Events: ``explicit``, ``coolDown``,
    ``advise``, ``unknownCurrent``, ``atBound``, ``adviceOnly``, ``blocked``)."""
    message: str = ""
    """One line for ``status.engineTuning.message``."""
    blocked: dict[str, float] = field(default_factory=dict)
    """Setting -> a value that crash-looped and was rolled back: not applied again, nor any beyond it."""
    rollback: Rollback | None = None
    """The rollback made in this pass (set by the glue, :func:`tidal.scaling.rollback.plan_rollback`)."""


def plan_engine_tuning(
    advice: Sequence[EngineAdvice],
    *,
    apply_mode: bool,
    explicit: Mapping[str, float],
    overrides: Mapping[str, float],
    last_change: float | None,
    now: float,
    cool_down_s: float = COOL_DOWN_S,
    blocked: Mapping[str, float] | None = None,
) -> TuningDecision:
    """What to do with ``advice`` (see the module docstring). ``explicit``: settings the spec sets, with their
    values; ``overrides``: the ones applied earlier; ``last_change``: when the last one was applied;
    ``blocked``: values rolled back earlier (kept in the decision)."""
    blocked = dict(blocked or {})
    if not apply_mode:
        held = {a.setting: "advise" for a in advice if a.suggested is not None}
        dropped = f"; earlier overrides {_fmt(overrides)} dropped" if overrides else ""
        return TuningDecision({}, None, held, f"Advise mode: advice is not applied{dropped}", blocked)
    kept = {k: v for k, v in overrides.items() if k in TUNABLE and k not in explicit}
    skipped: dict[str, str] = {}
    notes: list[str] = []
    change: TuningChange | None = None
    until = None if last_change is None else last_change + cool_down_s
    for a in advice:
        if a.setting not in TUNABLE:
            skipped[a.setting] = "adviceOnly"
            notes.append(f"{a.setting}: advice only, never applied automatically")
            continue
        if a.suggested is None:
            continue
        if a.setting in explicit:
            skipped[a.setting] = "explicit"
            notes.append(
                f"spec.engine.{a.setting}={explicit[a.setting]:g} is set explicitly and wins: not overridden "
                f"(advice: {a.suggested:g})"
            )
            continue
        if a.current is None:
            skipped[a.setting] = "unknownCurrent"
            notes.append(
                f"{a.setting}: the current value is unknown (no feasible recommendation): not changed"
            )
            continue
        value = bounded_value(a.setting, a.current, a.suggested)
        if value is None:
            skipped[a.setting] = "atBound"
            notes.append(f"{a.setting} {a.current:g} is at its bound: not changed")
            continue
        if is_blocked(a.setting, value, blocked, a.current):
            skipped[a.setting] = "blocked"
            notes.append(
                f"{a.setting} -> {value:g} is blocked: {a.setting} {blocked[a.setting]:g} crash-looped "
                "and was rolled back"
            )
            continue
        if change is not None or (until is not None and now < until):
            skipped[a.setting] = "coolDown"
            notes.append(
                f"{a.setting} -> {value:g} waits for the cool-down (one change per {cool_down_s:.0f}s)"
            )
            continue
        kept[a.setting] = value
        change = TuningChange(
            a.setting,
            a.current,
            value,
            f"{a.setting} {a.current:g} -> {value:g}: {a.message}",
        )
    parts = [change.message] if change is not None else []
    parts += notes
    if not parts:
        parts = [f"overrides {_fmt(kept)}" if kept else "no engine advice"]
    return TuningDecision(kept, change, skipped, "; ".join(parts), blocked)


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(values.items())) or "none"


__all__ = [
    "CHUNK_CEILING",
    "CHUNK_FLOOR",
    "COOL_DOWN_S",
    "GPU_MEMORY_CEILING",
    "GPU_MEMORY_STEP",
    "GPU_MEMORY_UTILIZATION",
    "MAX_MODEL_LEN",
    "MAX_NUM_BATCHED_TOKENS",
    "MAX_NUM_SEQS",
    "TUNABLE",
    "TuningChange",
    "TuningDecision",
    "bounded_value",
    "is_blocked",
    "plan_engine_tuning",
]
