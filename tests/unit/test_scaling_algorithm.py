"""Table-driven tests of compute_desired_replicas: bounds, tolerance, panic, stabilisation, steps,
capacity, stale metrics, cold start, and the state round-trip."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from tidal.scaling import (
    AutoscalerState,
    CapacityView,
    FleetObservation,
    Reason,
    ScalingConfig,
    compute_desired_replicas,
)

NOW = 10_000.0
CFG = ScalingConfig(
    min_replicas=1,
    max_replicas=10,
    queue_per_replica=None,
    kv_cache_usage=None,
    tpot_p95_s=None,
    headroom_prior=1.0,
)


def obs(ttft: float | None = 1.0, **kw: Any) -> FleetObservation:
    return FleetObservation(time=kw.pop("time", NOW - 5), ttft_p95=ttft, **kw)


def cap(current: int = 3, ready: int | None = None, **kw: Any) -> CapacityView:
    return CapacityView(current=current, ready=current if ready is None else ready, **kw)


# A state whose window already lies fully below target: scale-down allowed if consecutive is met.
LOW_HISTORY = AutoscalerState(recommendations=((NOW - 400, 2),), consecutive_below=5)


@dataclass
class Case:
    name: str
    o: FleetObservation | None
    c: CapacityView
    desired: int
    reason: Reason
    cfg: ScalingConfig = CFG
    state: AutoscalerState = field(default_factory=AutoscalerState)
    in_message: tuple[str, ...] = ()
    metrics_available: bool = True


CASES = [
    Case(
        "within tolerance holds",
        obs(1.9),
        cap(3),
        3,
        Reason.WITHIN_TOLERANCE,
        in_message=("1.90s", "2.00s", "10%"),
    ),
    Case("within tolerance above target", obs(2.15), cap(3), 3, Reason.WITHIN_TOLERANCE),
    Case(
        "breach scales up proportionally",
        obs(3.0),
        cap(4),
        6,
        Reason.SCALED_UP,
        in_message=("ttft_p95 3.00s",),
    ),
    Case("small breach adds at least one", obs(2.3), cap(4), 5, Reason.SCALED_UP),
    Case(
        "step limit outside panic",
        obs(3.8),
        cap(8),
        12,
        Reason.SCALED_UP,
        cfg=replace(CFG, max_replicas=40),
        in_message=("step limited",),
    ),
    Case(
        "panic lifts the step limit",
        obs(10.0),
        cap(4),
        20,
        Reason.SCALED_UP,
        cfg=replace(CFG, max_replicas=40),
        in_message=("panic",),
    ),
    Case("max replicas bounds the ask", obs(10.0), cap(4), 10, Reason.SCALED_UP),
    Case("already at max", obs(6.0), cap(10), 10, Reason.MAX_REPLICAS_REACHED, in_message=("maxReplicas",)),
    Case("below min is raised", obs(1.0), cap(0, 0), 1, Reason.SCALED_UP),
    Case("min bounds a scale-down", obs(0.1), cap(2), 1, Reason.SCALED_DOWN, state=LOW_HISTORY),
    Case(
        "at min holds",
        obs(0.1),
        cap(2),
        2,
        Reason.MIN_REPLICAS_REACHED,
        state=LOW_HISTORY,
        cfg=replace(CFG, min_replicas=2),
        in_message=("minReplicas 2",),
    ),
    Case(
        "scale-down one step at a time",
        obs(0.1),
        cap(6),
        5,
        Reason.SCALED_DOWN,
        state=LOW_HISTORY,
        in_message=("below target",),
    ),
    Case(
        "scale-down needs consecutive decisions",
        obs(0.1),
        cap(6),
        6,
        Reason.STABILIZATION_WINDOW,
        state=replace(LOW_HISTORY, consecutive_below=0),
        in_message=("1 of 3",),
    ),
    Case(
        "scale-down waits for the window max",
        obs(0.1),
        cap(6),
        6,
        Reason.STABILIZATION_WINDOW,
        state=AutoscalerState(recommendations=((NOW - 100, 6),), consecutive_below=5),
        in_message=("300s",),
    ),
    Case(
        "fresh start holds a full window",
        obs(0.1),
        cap(6),
        6,
        Reason.STABILIZATION_WINDOW,
        state=AutoscalerState(consecutive_below=5),
    ),
    Case(
        "panic holds scale-down",
        obs(0.1),
        cap(6),
        6,
        Reason.PANIC_HOLD,
        state=replace(LOW_HISTORY, panic_until=NOW + 3),
    ),
    Case(
        "insufficient GPU",
        obs(4.0),
        cap(3, free_gpus=4, gpus_per_replica=2),
        5,
        Reason.INSUFFICIENT_GPU,
        in_message=("4 GPU(s) are free", "asks for 6"),
    ),
    Case(
        "no GPU at all holds", obs(4.0), cap(3, free_gpus=1, gpus_per_replica=2), 3, Reason.INSUFFICIENT_GPU
    ),
    Case(
        "stale metrics hold",
        obs(0.1, time=NOW - 120),
        cap(5),
        5,
        Reason.METRICS_STALE,
        state=LOW_HISTORY,
        metrics_available=False,
        in_message=("120s old",),
    ),
    Case("missing metrics hold", None, cap(5), 5, Reason.METRICS_STALE, metrics_available=False),
    Case(
        "empty observation holds",
        FleetObservation(time=NOW),
        cap(5),
        5,
        Reason.METRICS_STALE,
        metrics_available=False,
    ),
    Case(
        "starting replicas count as coming",
        obs(5.0),
        cap(6, 3, starting=3, cold_start_s=120),
        6,
        Reason.COLD_START_PENDING,
        state=AutoscalerState(last_scale_up_time=NOW - 30),
        in_message=("3 replica(s) are still starting",),
    ),
    Case(
        "after the cold start, still breaching adds",
        obs(5.0),
        cap(6, 3, starting=3, cold_start_s=120),
        8,
        Reason.SCALED_UP,
        state=AutoscalerState(last_scale_up_time=NOW - 300),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(case: Case) -> None:
    d = compute_desired_replicas(case.cfg, case.o, case.c, case.state, NOW)
    assert (d.desired, d.reason) == (case.desired, case.reason), d.message
    assert d.metrics_available is case.metrics_available
    for text in case.in_message:
        assert text in d.message, d.message
    assert d.message  # every result explains itself
    assert case.cfg.min_replicas <= d.desired <= case.cfg.max_replicas


def test_load_signal_proportional_and_proportional_signals_bypass_cold_start() -> None:
    cfg = replace(
        CFG,
        prefill_tokens_per_replica_s=10_000,
        decode_tokens_per_replica_s=2_000,
        target_utilization=0.8,
        max_replicas=30,
    )
    # 4 replicas of work (20k prompt tok/s = 2, 4k gen tok/s = 2) at 80 % → 5 replicas.
    o = obs(0.5, prompt_token_rate=20_000.0, generation_token_rate=4_000.0)
    d = compute_desired_replicas(cfg, o, cap(2), AutoscalerState(), NOW)
    assert d.desired == 5 and d.limiting_factor == "load", d.message
    assert d.ratios["load"] == pytest.approx(2.5)
    # While 3 are starting, a proportional ask larger than the coming total still goes through.
    o2 = obs(9.0, prompt_token_rate=60_000.0, generation_token_rate=12_000.0)
    d2 = compute_desired_replicas(
        cfg, o2, cap(5, 2, starting=3, cold_start_s=120), AutoscalerState(last_scale_up_time=NOW - 10), NOW
    )
    # 12 replicas of work at 80 % on 2 ready: ratio 7.5 asks ceil(2 x 7.5) = 15 in one step, past
    # max_scale_up_step; the safety bound max_scale_up_factor x ready (4 x 2 = +8) stops it at 13.
    assert d2.desired == 13 and d2.reason is Reason.SCALED_UP and d2.panic, d2.message


def test_panic_sets_window_and_blocks_scale_down_afterwards() -> None:
    cfg = replace(CFG, panic_window_s=60)
    d = compute_desired_replicas(cfg, obs(8.0), cap(2), AutoscalerState(), NOW)
    assert d.panic and d.state.panic_until == NOW + 60
    later = replace(d.state, recommendations=((NOW - 400, 1),), consecutive_below=5)
    d2 = compute_desired_replicas(cfg, obs(0.1, time=NOW + 10), cap(8), later, NOW + 15)
    assert d2.reason is Reason.PANIC_HOLD and d2.desired == 8


def test_stabilisation_over_a_sequence_of_decisions() -> None:
    """Load falls at t=0: the count stays for the window, then steps down one every 3 decisions."""
    cfg = replace(CFG, scale_down_stabilization_s=120)
    state = AutoscalerState()
    current = 6
    history = []
    for i in range(40):
        t = NOW + 15 * i
        d = compute_desired_replicas(cfg, obs(0.2, time=t), cap(current), state, t)
        state, current = d.state, d.desired
        history.append(current)
    first_drop = next(i for i, n in enumerate(history) if n < 6)
    assert first_drop * 15 >= 120  # not before the window
    drops = [i for i in range(1, len(history)) if history[i] < history[i - 1]]
    assert all(b - a >= 3 for a, b in itertools.pairwise(drops))  # consecutive requirement
    assert all(history[i - 1] - history[i] <= 1 for i in range(1, len(history)))  # step 1
    assert history[-1] == 1


def test_state_round_trips_through_json() -> None:
    d = compute_desired_replicas(CFG, obs(8.0), cap(2), AutoscalerState(), NOW)
    d2 = compute_desired_replicas(CFG, obs(0.2, time=NOW + 15), cap(d.desired), d.state, NOW + 20)
    blob = json.loads(json.dumps(d2.state.to_dict()))
    assert AutoscalerState.from_dict(blob) == d2.state
    assert AutoscalerState.from_dict(None) == AutoscalerState()
    assert AutoscalerState.from_dict({}) == AutoscalerState()


def test_restart_with_restored_state_does_not_scale_down_early() -> None:
    """Operator restarts mid-window: the restored state keeps the window, a fresh state also holds."""
    state = AutoscalerState()
    current = 5
    for i in range(8):  # 8 x 15 s = 120 s of low load
        t = NOW + 15 * i
        d = compute_desired_replicas(CFG, obs(0.2, time=t), cap(current), state, t)
        state, current = d.state, d.desired
    assert current == 5
    restored = AutoscalerState.from_dict(json.loads(json.dumps(state.to_dict())))
    t = NOW + 15 * 8
    d = compute_desired_replicas(CFG, obs(0.2, time=t), cap(current), restored, t)
    assert d.desired == 5 and d.reason is Reason.STABILIZATION_WINDOW


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ScalingConfig(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError):
        ScalingConfig(tolerance=1.5)


TREND_CFG = replace(
    CFG,
    prefill_tokens_per_replica_s=10_000,
    decode_tokens_per_replica_s=2_000,
    target_utilization=0.8,
    cold_start_s=90,
    max_replicas=30,
)


def _run_trend(prompt: list[float], gen: list[float], current: int = 5, waiting: float = 0.0) -> Any:
    """Feed one observation per 15 s; return the last decision."""
    state = AutoscalerState()
    d = None
    for i, (p, g) in enumerate(zip(prompt, gen, strict=True)):
        t = NOW + 15 * i
        o = obs(0.5, time=t, prompt_token_rate=p, generation_token_rate=g, waiting=waiting)
        d = compute_desired_replicas(TREND_CFG, o, cap(current), state, t)
        state = d.state
    return d


def test_demand_trend_extrapolates_a_clear_rise_over_the_cold_start() -> None:
    # Prompt demand rises 1 %/15 s steadily for 2 min: ~6 % over a 90 s cold start.
    prompt = [20_000.0 * (1 + 0.01 * i) for i in range(9)]
    d = _run_trend(prompt, [4_000.0] * 9)
    assert "trend +" in d.message, d.message
    work = prompt[-1] / 10_000 + 2.0
    assert d.ratios["load"] * 5 * 0.8 == pytest.approx(work * (1 + 0.06 / 1.08), rel=0.05)


def test_demand_trend_is_not_read_while_a_queue_builds() -> None:
    # The same clear rise as above, but 20 requests wait per replica (queue target 5): the served prompt
    # rate follows the capacity then (it jumps when replicas arrive), so it is not taken for demand.
    prompt = [20_000.0 * (1 + 0.01 * i) for i in range(9)]
    cfg_queue = replace(TREND_CFG, queue_per_replica=5.0)
    state = AutoscalerState()
    for i, p in enumerate(prompt):
        t = NOW + 15 * i
        o = obs(0.5, time=t, prompt_token_rate=p, generation_token_rate=4_000.0, waiting=100.0)
        d = compute_desired_replicas(cfg_queue, o, cap(5), state, t)
        state = d.state
        assert "trend +" not in d.message, d.message
    assert d.state.demand_history == ()


@pytest.mark.parametrize(
    ("name", "prompt", "gen"),
    [
        # Noisy but flat demand: a fitted slope is never exactly zero; it is not significant.
        ("noise", [20_000.0 * (1 + 0.05 * ((-1) ** i) * (i % 3)) for i in range(9)], [4_000.0] * 9),
        # Batches filling after a start: generated tokens climb while the demand (prompt tokens) is flat.
        ("pipeline fill", [20_000.0] * 9, [2_000.0 + 300.0 * i for i in range(9)]),
        # Falling demand never adds.
        ("falling", [20_000.0 * (1 - 0.02 * i) for i in range(9)], [4_000.0] * 9),
        # Less than 75 % of the window seen (fresh start): no extrapolation.
        ("short history", [20_000.0 * (1 + 0.05 * i) for i in range(6)], [4_000.0] * 6),
    ],
)
def test_demand_trend_ignores(name: str, prompt: list[float], gen: list[float]) -> None:
    d = _run_trend(prompt, gen)
    assert "trend +" not in d.message, (name, d.message)


def test_state_keeps_old_status_without_demand_history() -> None:
    """A status written before demandHistory existed still loads (the key is optional)."""
    old = {"recommendations": [[NOW, 3]], "consecutiveBelow": 1, "loadHistory": [[NOW, 2.5]]}
    s = AutoscalerState.from_dict(old)
    assert s.demand_history == () and s.load_history == ((NOW, 2.5),)
    assert AutoscalerState.from_dict(s.to_dict()) == s


def test_queue_growth_sizes_the_unserved_demand_once() -> None:
    """Overload while replicas start: the queue grows 60 requests/s, each request is 0.1 replica-seconds
    of work, so 6 replicas of demand are unserved. The ask is served 3 + 6 = 9 replicas of work plus the
    backlog those 6 build during one lead time, drained over one more (+6): 15 at 80 % -> 19, in one
    decision, and stays 19 while the same queue keeps growing during the cold start (a stock of waiting
    requests re-counted every decision would keep adding replicas for work already provided for)."""
    cfg = replace(
        TREND_CFG, queue_per_replica=5.0, cold_start_s=120, panic_threshold=100.0, max_scale_up_step=20
    )
    state = AutoscalerState()
    current, desired = 3, []
    for i in range(8):  # 105 s: the first new replicas are still starting
        t = NOW + 15 * i
        o = obs(
            0.5,
            time=t,
            prompt_token_rate=20_000.0,
            generation_token_rate=2_000.0,
            request_rate=30.0,
            waiting=60.0 * 15 * i,
        )
        c = cap(current, 3, starting=current - 3, cold_start_s=120)
        d = compute_desired_replicas(cfg, o, c, state, t)
        state, current = d.state, d.desired
        desired.append(current)
        if i >= 1:  # 3 served + 60/s x 0.1 unserved + 6 backlog = 15 replicas of work on 3 ready at 80 %
            assert d.ratios["load"] == pytest.approx(15 / (3 * 0.8)), d.message
    assert max(desired) == 19 and desired[1:] == [19] * 7, desired
    assert AutoscalerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
