"""Online capacity calibration: how much slower the engine runs than the capacity model says.

Why it exists: the ``load`` signal, the headroom reserve and one-step sizing all count demand in replicas
of work, token rates over the modelled per-replica capacity (the recommender's performance model, the
simulator's step model). When the engine is slower than that model (other hardware, drivers, a model
family off the calibration), every one of them under-provisions by the same factor, and only the
lagging latency signals catch it, a cold start late and again at every burst (issue 14: at capacity
error -0.3 the attainment fell to 88-97 % on the tuning seeds).

The evidence is the step time, which is measurable at any load, not only at saturation (the p95 TPOT
stays flat until a replica is nearly full, so it says nothing in time). By Little's law the mean time
per output token of a replica is its running sequences over its generated tokens per second,
``b / g``; the model's is ``(d0 + d1 b) / (1 - p / P)``: the decode step of a batch of ``b`` (the
line :class:`tidal.sim.capacity.Capacity` fits through one sequence and its capacity batch) stretched
by the share of time spent on the ``p`` prompt tokens per second at the modelled prefill rate ``P``.
Their ratio, model over measured, is the engine's speed relative to the model. One sample is noisy (the
batch changes within a window; on the tuning traces single samples range 0.84-1.39 with an exact model
and 0.50-0.83 with a 30 % slower engine), so the scale is the median over ``WINDOW_S`` of samples from
a *settled* fleet (nothing starting, no queue building) with at least ``MIN_BATCH`` sequences per
replica, once ``MIN_SAMPLES`` are there; until then the last scale stands.

The scale only ever lowers the modelled capacity (``[SCALE_MIN, 1]``): a faster engine than modelled
costs GPU-hours, not attainment, and a cost saving that rests on a noisy estimate is not worth a missed
burst. (With an exact model the median sits near 1.06, which the cap turns into 1.)

Pure: the samples and the scale are carried in :class:`tidal.scaling.types.AutoscalerState` (so in
the CRD status: they survive an operator restart) and applied to the capacities of
:class:`ScalingConfig`.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from tidal.scaling.types import CapacityView, FleetObservation, ScalingConfig

SCALE_MIN = 0.5
"""The engine is assumed to serve at least half of what the model says (below that the model is wrong
enough that the latency signals are the better guide, and a scale this low doubles the fleet)."""
WINDOW_S = 600.0
"""The median runs over the samples of the last ten minutes."""
MIN_SAMPLES = 10
"""Fewer samples in the window than this: the last scale stands."""
MIN_BATCH = 2.0
"""Running sequences per ready replica below which the step time is mostly fixed cost and says little."""
DEAD_BAND = 0.02
"""A median within this of 1 is the model: the scale stays exactly 1 (no rounding noise in messages)."""
MAX_PREFILL_SHARE = 0.8
"""Prefill shares of a replica's time above this make the model's stretch ``1 / (1 - p / P)`` too steep to
trust."""


def sample(
    config: ScalingConfig, obs: FleetObservation, capacity: CapacityView, settled: bool
) -> float | None:
    """The engine's speed relative to the model from one observation (model step time over measured), or
    ``None`` when it says nothing: no step model, not settled, too small a batch, missing rates."""
    d0, d1 = config.decode_step_s, config.decode_step_per_seq_s
    big_p = config.prefill_tokens_per_replica_s
    ready = capacity.ready
    if d0 is None or d1 is None or not big_p or not settled or ready <= 0:
        return None
    if obs.running is None or not obs.generation_token_rate or obs.prompt_token_rate is None:
        return None
    b = obs.running / ready
    g = obs.generation_token_rate / ready
    share = obs.prompt_token_rate / ready / big_p
    if b < MIN_BATCH or g <= 0 or share >= MAX_PREFILL_SHARE:
        return None
    modelled = (d0 + d1 * b) / (1.0 - share)
    measured = b / g
    return modelled / measured if measured > 0 else None


def update(
    samples: tuple[tuple[float, float], ...], scale: float, new: float | None, now: float
) -> tuple[float, tuple[tuple[float, float], ...]]:
    """(scale, samples) after one observation's sample ``new`` (``None``: no sample this time)."""
    kept = tuple((t, r) for t, r in samples if now - t <= WINDOW_S)
    if new is not None:
        kept = (*kept, (now, new))
    if len(kept) >= MIN_SAMPLES:
        scale = statistics.median(r for _, r in kept)
        scale = 1.0 if scale > 1.0 - DEAD_BAND else scale
    return min(1.0, max(SCALE_MIN, scale)), kept


def calibrated(config: ScalingConfig, scale: float) -> ScalingConfig:
    """``config`` with its per-replica capacities multiplied by ``scale`` (itself when 1 or no model)."""
    if scale >= 1.0 or not (config.prefill_tokens_per_replica_s and config.decode_tokens_per_replica_s):
        return config
    return replace(
        config,
        prefill_tokens_per_replica_s=config.prefill_tokens_per_replica_s * scale,
        decode_tokens_per_replica_s=config.decode_tokens_per_replica_s * scale,
    )


def describe(scale: float) -> str:
    """A clause for messages: empty when uncalibrated."""
    return "" if scale >= 1.0 else f"; engine capacity calibrated to {scale:.0%} of the model"
