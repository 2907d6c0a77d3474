"""Online capacity calibration (tidal.scaling.calibration), table-driven per rule, and its wiring into the
decision: a settled fleet whose measured step time is longer than the model's makes the load signal count
the same token rates as more replicas of work.

Every threshold here was fixed when the rule was written, before any simulation with it.
"""

from __future__ import annotations

import pytest

from tidal.scaling import calibration as cal
from tidal.scaling.algorithm import compute_desired_replicas
from tidal.scaling.types import AutoscalerState, CapacityView, FleetObservation, ScalingConfig

pytestmark = pytest.mark.unit

# Model: decode step 10 ms + 0.1 ms per sequence; prefill 10,000 tokens/s per replica.
CFG = ScalingConfig(
    queue_per_replica=None,
    kv_cache_usage=None,
    ttft_p95_s=None,
    prefill_tokens_per_replica_s=10_000.0,
    decode_tokens_per_replica_s=1_000.0,
    decode_step_s=0.010,
    decode_step_per_seq_s=0.0001,
    target_utilization=1.0,
    max_replicas=50,
    cold_start_s=90.0,
    headroom_prior=1.0,
)


def _obs(t: float, running: float, speed: float, prompt: float = 2_000.0) -> FleetObservation:
    """Two replicas, ``running`` sequences in all, an engine ``speed`` times as fast as the model: the
    generated tokens per second follow from the step time by Little's law."""
    b = running / 2
    step = (0.010 + 0.0001 * b) / (1 - prompt / 2 / 10_000.0) / speed
    return FleetObservation(
        time=t,
        tpot_p95=step * 1.5,
        running=running,
        prompt_token_rate=prompt,
        generation_token_rate=2 * b / step,
        request_rate=10.0,
        waiting=0.0,
    )


@pytest.mark.parametrize(
    ("speed", "running", "settled", "expected"),
    [
        (1.0, 40.0, True, 1.0),
        (0.7, 40.0, True, 0.7),
        (1.3, 40.0, True, 1.3),  # a sample may be above 1; the scale is capped, not the sample
        (0.7, 40.0, False, None),  # replicas starting or a queue building: no sample
        (0.7, 2.0, True, None),  # one sequence per replica: mostly fixed cost, no sample
    ],
)
def test_sample(speed: float, running: float, settled: bool, expected: float | None) -> None:
    got = cal.sample(CFG, _obs(0.0, running, speed), CapacityView(2, 2), settled)
    assert got == (None if expected is None else pytest.approx(expected))


def test_sample_needs_a_step_model() -> None:
    cfg = CFG.__class__(**{**CFG.__dict__, "decode_step_s": None})
    assert cal.sample(cfg, _obs(0.0, 40.0, 0.7), CapacityView(2, 2), True) is None


@pytest.mark.parametrize(
    ("samples", "scale", "new", "expected_scale", "kept"),
    [
        ((), 1.0, 0.7, 1.0, 1),  # too few samples: the last scale stands
        (tuple((float(t), 0.6) for t in range(9)), 1.0, 0.7, 0.6, 10),  # ten: the median
        (tuple((float(t), 1.3) for t in range(9)), 1.0, 1.3, 1.0, 10),  # capped at 1
        (tuple((float(t), 0.2) for t in range(9)), 1.0, 0.2, cal.SCALE_MIN, 10),  # floored
        (tuple((float(t), 0.6) for t in range(10)), 0.6, None, 0.6, 0),  # all older than the window
    ],
)
def test_update(
    samples: tuple[tuple[float, float], ...],
    scale: float,
    new: float | None,
    expected_scale: float,
    kept: int,
) -> None:
    now = 9.0 if new is not None else 9.0 + cal.WINDOW_S + 1
    got, window = cal.update(samples, scale, new, now)
    assert got == pytest.approx(expected_scale) and len(window) == kept


def test_calibrated_scales_both_capacities_and_only_below_one() -> None:
    assert cal.calibrated(CFG, 1.0) is CFG
    c = cal.calibrated(CFG, 0.7)
    assert (c.prefill_tokens_per_replica_s, c.decode_tokens_per_replica_s) == pytest.approx((7_000.0, 700.0))
    assert cal.describe(1.0) == "" and "70%" in cal.describe(0.7)


def test_a_slow_engine_is_learnt_and_the_load_signal_counts_more_work() -> None:
    """An engine 30 % slower than the model for 20 decisions: the scale becomes 0.7, the load signal
    counts the same token rates as 1/0.7 times the work, the state keeps the scale (so does the CRD
    status) and the demand sample stays in the model's units."""
    state = AutoscalerState()
    first = last = None
    for i in range(20):
        t = 1_000.0 + 15 * i
        d = compute_desired_replicas(CFG, _obs(t, 40.0, 0.7), CapacityView(2, 2), state, t)
        first = first or d
        state, last = d.state, d
    assert first is not None and last is not None
    assert state.capacity_scale == pytest.approx(0.7)
    assert last.ratios["load"] == pytest.approx(first.ratios["load"] / 0.7, rel=0.01)
    assert last.demand == pytest.approx(first.demand, rel=0.01)
    restored = AutoscalerState.from_dict(state.to_dict())
    assert restored.capacity_scale == pytest.approx(0.7, abs=1e-4) and len(restored.capacity_samples) == 20


def test_a_model_that_holds_is_never_calibrated() -> None:
    state = AutoscalerState()
    for i in range(20):
        t = 1_000.0 + 15 * i
        d = compute_desired_replicas(CFG, _obs(t, 40.0, 1.0), CapacityView(2, 2), state, t)
        state = d.state
    assert state.capacity_scale == 1.0
    assert "calibrated" not in d.message
