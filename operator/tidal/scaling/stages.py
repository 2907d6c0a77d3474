"""Stages 5-7 of :func:`~tidal.scaling.algorithm.compute_desired_replicas`: the scale-up and scale-down
rules, the bounds and the free-GPU limit, and the decision's reason and message.

They refine one :class:`Step` (the target, what limits it, why) in turn; the pipeline and its rules are
described in :mod:`tidal.scaling.algorithm`, which calls them in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tidal.scaling.types import AutoscalerState, CapacityView, Reason, ScalingConfig

LAGGING = ("ttft", "tpot", "queue")
PROPORTIONAL = ("load", "kv")
EPS = 1e-9


def bound(config: ScalingConfig, n: int) -> tuple[int, Reason | None]:
    """The single place where min/max replicas are applied."""
    if n > config.max_replicas:
        return config.max_replicas, Reason.MAX_REPLICAS_REACHED
    if n < config.min_replicas:
        return config.min_replicas, Reason.MIN_REPLICAS_REACHED
    return n, None


def ask(ready: int, ratio: float) -> int:
    """The replicas a signal at ``ratio`` asks for: ``ceil(ready x ratio)``."""
    return max(0, math.ceil(ready * ratio - EPS))


@dataclass
class Step:
    """Where the decision goes, refined stage by stage: the target, what limits it, why, and a note."""

    target: int
    limiting: str
    why: str
    reason: Reason | None = None
    note: str = ""


def scale_up(
    config: ScalingConfig,
    capacity: CapacityView,
    state: AutoscalerState,
    now: float,
    step: Step,
    ratios: dict[str, float],
    text: dict[str, str],
    proposed: int,
    recs: tuple[tuple[float, int], ...],
    panic: bool,
) -> None:
    """5. Scale-up to ``proposed``: paced by the cold start, stepwise for lagging signals, step-limited."""
    current, ready, signal, why = capacity.current, capacity.ready, step.limiting, step.why
    cold = capacity.cold_start_s if capacity.cold_start_s is not None else config.cold_start_s
    last_up = state.last_scale_up_time
    cold_pending = capacity.starting > 0 and (cold is None or last_up is None or now - last_up < cold)
    step.target = proposed
    if cold_pending and signal in LAGGING:
        prop = [ask(ready, ratios[k]) for k in PROPORTIONAL if k in ratios]
        alt = max(prop) if prop else 0
        if alt > current:
            step.target = alt
            step.limiting = max((k for k in PROPORTIONAL if k in ratios), key=lambda k: ratios[k])
            why = step.why = f"{text[step.limiting]} (ratio {ratios[step.limiting]:.2f})"
        else:
            step.target = current
            step.reason = Reason.COLD_START_PENDING
            elapsed = "" if last_up is None else f", {now - last_up:.0f}s since the last scale-up"
            cs = "unknown" if cold is None else f"{cold:.0f}s"
            step.note = (
                f"{why} asks for {proposed}, but {capacity.starting} replica(s) are still starting "
                f"(cold start {cs}{elapsed}) and count as coming"
            )
    if step.reason is None and signal in LAGGING and "load" in ratios and step.target > current:
        # The modelled load does not explain the breach: a queued burst or an optimistic capacity
        # model. Add capacity one step at a time (never a jump); ColdStartPending paces the steps.
        prop_ask = max([ask(ready, ratios[k]) for k in PROPORTIONAL if k in ratios] or [0])
        up = config.lagging_scale_up_step
        step.target = max(min(step.target, current + up), min(prop_ask, step.target))
        step.note = f"{why} while the modelled load ratio is {ratios['load']:.2f}: +{up}"
        step.limiting = f"{signal} (stepwise)"
    if config.scale_up_stabilization_s > 0 and step.reason is None:
        window = [n for t, n in recs if now - t <= config.scale_up_stabilization_s + EPS]
        step.target = max(current, min([*window, step.target]))
    # One-step sizing: a proportional signal goes where it points; the step limit is a safety bound
    # (max_scale_up_factor x ready), not the pace. Panic lifts the limit only for lagging-only fleets.
    jump = panic and signal not in PROPORTIONAL and "load" not in ratios
    step_limit = config.max_scale_up_step
    if signal in PROPORTIONAL:
        step_limit = max(step_limit, math.ceil(config.max_scale_up_factor * max(ready, 1)))
    if not jump and step.target > current + step_limit:
        step.target = current + step_limit
        step.limiting = "maxScaleUpStep"
        step.note = f"{why} asks for {proposed}; step limited to +{step_limit}"


def scale_down(
    config: ScalingConfig,
    current: int,
    now: float,
    step: Step,
    proposed: int,
    recs: tuple[tuple[float, int], ...],
    consecutive: int,
    panic_until: float | None,
) -> None:
    """6. Scale-down to ``proposed``, held by minReplicas, panic and the stabilization window."""
    why = step.why
    window_max = max(n for t, n in recs if now - t <= config.scale_down_stabilization_s + EPS)
    if current <= config.min_replicas:
        step.reason = Reason.MIN_REPLICAS_REACHED
        step.limiting = "minReplicas"
        step.note = f"{why} would allow {proposed}; bounded by minReplicas {config.min_replicas}"
    elif panic_until is not None and now < panic_until:
        step.reason = Reason.PANIC_HOLD
        step.note = f"{why} would allow {proposed}, but panic mode holds until t={panic_until:.0f}"
    elif consecutive < config.scale_down_consecutive:
        step.reason = Reason.STABILIZATION_WINDOW
        step.note = (
            f"{why} would allow {proposed}; {consecutive} of {config.scale_down_consecutive} "
            "consecutive below-target decisions"
        )
    elif window_max >= current:
        step.reason = Reason.STABILIZATION_WINDOW
        step.note = (
            f"{why} would allow {proposed}, but the highest recommendation in the last "
            f"{config.scale_down_stabilization_s:.0f}s window is {window_max}"
        )
    else:
        step.target = max(window_max, proposed, current - config.max_scale_down_step)
        if step.target > max(window_max, proposed):
            step.limiting = "maxScaleDownStep"


def apply_limits(config: ScalingConfig, capacity: CapacityView, step: Step, proposed: int) -> int:
    """7. Bounds, in one place; then free GPUs: the desired count."""
    current, why = capacity.current, step.why
    desired, bound_reason = bound(config, step.target)
    if bound_reason is not None and desired == current and step.reason is None:
        step.reason = bound_reason
        step.limiting = "maxReplicas" if bound_reason is Reason.MAX_REPLICAS_REACHED else "minReplicas"
        step.note = f"{why} asks for {proposed}; bounded by {step.limiting} {desired}"
    elif bound_reason is not None:
        step.limiting = "maxReplicas" if bound_reason is Reason.MAX_REPLICAS_REACHED else "minReplicas"
    if desired > current and capacity.free_gpus is not None:
        gpr = max(capacity.gpus_per_replica, 1)
        affordable = current + capacity.free_gpus // gpr
        if desired > affordable:
            wanted = desired
            desired = max(current, affordable)
            step.reason = Reason.INSUFFICIENT_GPU
            step.limiting = "freeGPUs"
            step.note = (
                f"{why} asks for {wanted} replicas ({wanted - current} more x {gpr} GPU), "
                f"but only {capacity.free_gpus} GPU(s) are free"
            )
    return desired


def explain(
    config: ScalingConfig,
    current: int,
    desired: int,
    step: Step,
    worst: float,
    panic: bool,
    scale_down: tuple[float, int, int],
) -> tuple[Reason, str]:
    """The final reason and message; ``scale_down``: (seconds below target, consecutive below-target
    decisions, the highest recommendation in the window)."""
    why, note = step.why, step.note
    if desired > current:
        final = step.reason if step.reason is Reason.INSUFFICIENT_GPU else Reason.SCALED_UP
        extra = " [panic]" if panic else ""
        message = f"scaling up {current} -> {desired}{extra}: {why}"
        if final is Reason.INSUFFICIENT_GPU or step.limiting in ("maxScaleUpStep", "maxReplicas"):
            message += f" ({note or step.limiting})"
        return final, message
    if desired < current:
        below_for, consecutive, window_max = scale_down
        stab = config.scale_down_stabilization_s
        return Reason.SCALED_DOWN, (
            f"scaling down {current} -> {desired}: {why}; below target for "
            f"{below_for:.0f}s, {consecutive} consecutive "
            f"decisions, highest recommendation in the {stab:.0f}s window {window_max}"
        )
    reason = step.reason
    if reason is None:
        if abs(worst - 1.0) <= config.tolerance:
            reason = Reason.WITHIN_TOLERANCE
            note = f"{why} is within tolerance {config.tolerance:.0%}"
        else:
            reason = Reason.NO_CHANGE
            note = f"{why}"
    return reason, f"holding at {current}: {note}"
