"""Live advice on ``max_num_batched_tokens``, the prefill chunk budget of one engine step.

The recommender picks the budget from the TPOT target and the *expected* prompt mix
(:mod:`tidal.recommender.chunking`). When the live mix differs, the two latency targets pull the budget in
opposite directions, and more replicas fix neither:

* **Lower** it when TPOT p95 breaches its target while the steps are dominated by prefill chunks: the
  window's prompt tokens are at least :data:`PREFILL_DOMINANT` times its generated tokens, the batch runs
  below :data:`BATCH_BELOW_LIMIT` of ``max_num_seqs`` per replica (a full batch makes long steps by itself:
  that is the batch's or the fleet size's problem) and the KV cache is below :data:`KV_SATURATED` (a full
  cache is the memory advice's problem). Every decode sharing a step with a full chunk waits for it, so a
  smaller chunk shortens those steps. Suggested: half the current budget, never below
  :data:`tidal.scaling.tuning.CHUNK_FLOOR` nor below ``max_num_seqs`` (vLLM refuses a budget under it;
  unknown ``max_num_seqs`` reads as vLLM's large-GPU default, :data:`UNKNOWN_MAX_NUM_SEQS`).
* **Raise** it when TTFT p95 breaches its target while TPOT p95 has clear headroom (at most
  :data:`TPOT_HEADROOM` of its target) and the KV cache is not saturated: long prompts take
  ``prompt / chunk`` steps to prefill, and the decodes can afford longer steps. Suggested: double the
  current budget, never above the recommendation nor :data:`tidal.scaling.tuning.CHUNK_CEILING`; without a
  recommendation only the ceiling bounds it. The raise thus only gives back what a lowering (or a small
  vLLM default) took.

The TPOT band between the two rules (over :data:`TPOT_HEADROOM` of the target, within the target) is
hysteresis: neither rule fires there, so one pass never asks for both directions. Each piece of advice is
bounded by :func:`tidal.scaling.tuning.bounded_value` (at most halved or doubled per change) and applied only
in ``Apply`` mode for a budget left ``"auto"`` (:func:`tidal.scaling.tuning.plan_engine_tuning`).
"""

from __future__ import annotations

from typing import Final

from tidal.scaling.tuning import CHUNK_CEILING, CHUNK_FLOOR, MAX_NUM_BATCHED_TOKENS, bounded_value
from tidal.scaling.types import EngineAdvice, FleetObservation, ScalingConfig

PREFILL_DOMINANT: Final = 4.0
"""Prompt tokens per generated token over the window at or above which the steps are prefill-dominated."""
BATCH_BELOW_LIMIT: Final = 0.5
"""Lowering needs fewer running sequences per replica than this fraction of ``max_num_seqs``."""
KV_SATURATED: Final = 0.9
"""KV-cache usage at or above which neither rule fires (the memory advice owns that case)."""
TPOT_HEADROOM: Final = 0.5
"""Raising needs TPOT p95 at most this fraction of its target."""
UNKNOWN_MAX_NUM_SEQS: Final = 1024
"""``max_num_seqs`` assumed when unknown (vLLM's API-server default on large GPUs: the safe floor)."""


def chunk_floor(config: ScalingConfig) -> int:
    """The lowest budget chunk advice suggests: :data:`CHUNK_FLOOR`, and never below ``max_num_seqs``."""
    return max(CHUNK_FLOOR, config.max_num_seqs or UNKNOWN_MAX_NUM_SEQS)


def chunk_ceiling(config: ScalingConfig) -> int:
    """The highest budget chunk advice suggests: the recommendation, capped at :data:`CHUNK_CEILING`."""
    rec = config.recommended_max_num_batched_tokens
    return CHUNK_CEILING if rec is None else min(CHUNK_CEILING, rec)


def chunk_advice(config: ScalingConfig, obs: FleetObservation, ready: int) -> EngineAdvice | None:
    """Advice to lower or raise ``max_num_batched_tokens`` (see the module docstring), or ``None``."""
    kv = obs.kv_cache_usage
    if kv is not None and kv >= KV_SATURATED:
        return None
    current = config.max_num_batched_tokens
    lower = _lower_reason(config, obs, ready)
    if lower is not None:
        floor = chunk_floor(config)
        suggested = None
        if current is not None:
            suggested = bounded_value(MAX_NUM_BATCHED_TOKENS, current, max(floor, current / 2))
            if suggested is None:
                return None  # at the floor: nothing a chunk change can do
        return _advice("decrease", current, suggested, f"{lower}: lower max_num_batched_tokens", floor)
    raise_ = _raise_reason(config, obs)
    if raise_ is None or current is None:
        return None
    ceiling = chunk_ceiling(config)
    suggested = bounded_value(MAX_NUM_BATCHED_TOKENS, current, min(ceiling, 2 * current))
    if suggested is None:
        return None  # at the recommendation (or the ceiling): more replicas are the answer
    return _advice("increase", current, suggested, f"{raise_}: raise max_num_batched_tokens", ceiling)


def _lower_reason(config: ScalingConfig, obs: FleetObservation, ready: int) -> str | None:
    """Why the chunk makes the TPOT breach, or ``None`` when the pattern is not there."""
    target, tpot = config.tpot_p95_s, obs.tpot_p95
    if target is None or tpot is None or tpot <= target:
        return None
    prompt, generated = obs.prompt_token_rate, obs.generation_token_rate
    if prompt is None or generated is None or prompt < PREFILL_DOMINANT * max(generated, 1e-9):
        return None
    seqs = config.max_num_seqs or UNKNOWN_MAX_NUM_SEQS
    running_per = (obs.running or 0.0) / max(ready, 1)
    if running_per >= BATCH_BELOW_LIMIT * seqs:
        return None
    ratio = prompt / max(generated, 1e-9)
    return (
        f"TPOT p95 {tpot * 1e3:.0f} ms over its {target * 1e3:g} ms target with prefill-dominated steps "
        f"({ratio:.1f} prompt tokens per generated token, {running_per:.0f} running sequences per replica of "
        f"max_num_seqs {seqs})"
    )


def _raise_reason(config: ScalingConfig, obs: FleetObservation) -> str | None:
    """Why a larger chunk would help TTFT at no TPOT risk, or ``None``."""
    ttft_target, tpot_target = config.ttft_p95_s, config.tpot_p95_s
    ttft, tpot = obs.ttft_p95, obs.tpot_p95
    if ttft_target is None or ttft is None or ttft <= ttft_target:
        return None
    if tpot_target is None or tpot is None or tpot > TPOT_HEADROOM * tpot_target:
        return None
    return (
        f"TTFT p95 {ttft:.2f} s over its {ttft_target:g} s target while TPOT p95 {tpot * 1e3:.0f} ms "
        f"is at most {TPOT_HEADROOM:.0%} of its {tpot_target * 1e3:g} ms target"
    )


def _advice(
    direction: str, current: int | None, suggested: float | None, text: str, bound: int
) -> EngineAdvice:
    if current is None:
        detail = " (the engine's current value is unknown)"
    else:
        which = "floor" if direction == "decrease" else "ceiling"
        detail = f" {current} -> {suggested:.0f} ({which} {bound})"
    return EngineAdvice(
        setting=MAX_NUM_BATCHED_TOKENS,
        direction=direction,
        suggested=suggested,
        current=None if current is None else float(current),
        message=text + detail,
    )


__all__ = [
    "BATCH_BELOW_LIMIT",
    "KV_SATURATED",
    "PREFILL_DOMINANT",
    "TPOT_HEADROOM",
    "UNKNOWN_MAX_NUM_SEQS",
    "chunk_advice",
    "chunk_ceiling",
    "chunk_floor",
]
