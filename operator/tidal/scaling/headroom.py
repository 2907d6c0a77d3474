"""Attainment-targeted headroom: how much capacity to keep for the demand the autoscaler cannot react to.

Why it exists: a replica asked for now serves only after one *provisioning lead time* ``L`` (the measured
decision-to-Ready time plus the detection delay of the metrics). Any rise of demand inside ``L`` lands on
the replicas already there; no reactive rule can catch it. So the fleet keeps standing capacity for that
rise, sized like safety stock over a replenishment lead time in inventory theory: at the quantile of the
rise that the SLO-attainment target implies, measured on this deployment's own demand history.

The estimate, in order (every step is a pure function of the history and is unit-tested):

1. **Base.** ``base(t)`` is the median demand ``d`` (replicas of work) over the ``base_window_s`` before
   ``t``. Against a median rather than the instantaneous value, so a recurring burst reads as a rise over
   the level it recurs from, and a fleet sized as ``base x headroom`` does not multiply a burst already
   under way.
2. **Factor at the target.** A fleet sized one lead time earlier as ``max(H x base(t - L), d(t - L) +
   backlog / L)`` at the target utilisation serves a fluid queue; every request arriving behind more than
   ``QUEUE_BUDGET_S`` of backlog misses (:func:`unserved_fraction`). The history's factor ``h`` is the
   smallest ``H`` whose misses are at most ``1 - sloAttainment`` of all demand (:func:`required_factor`):
   the growth within one lead time at the quantile the target implies, weighted by requests. Level shifts
   (a rise that holds, :func:`sustained_levels`) are left out: a one-off step is the reactive part's, and
   keeping its multiple as standing headroom would carry it onto the new level. (:func:`growth_samples`
   and :func:`weighted_quantile` give the plain per-sample growth distribution, for tests and
   diagnostics.)
3. **Prior while history is short.** ``n = span / L`` lead times of history count as ``n`` observations, a
   prior of ``prior`` (default 3.0: the fleet can absorb demand tripling within one lead time) as
   ``PRIOR_WEIGHT`` = 4 of them: the estimate is ``max(h, (n h + k prior) / (n + k))`` (the prior adds
   caution to a short history, never discounts growth it has shown), the prior's excess halved after 4
   lead times (about 8 minutes at L = 2 min), a tenth left after 36 (72 minutes). (Weight 10, the first
   choice, kept a second replica for the first half hour of every stationary tuning trace and cost
   0.3-0.5 GPU-h there; weight 4 on the tuning seeds: the 4x step's attainment 96.96/96.69 % -> 97.04/
   97.21 %, the 2x step's 100 % -> 98.5/98.1 %. Prior 2.0, the first default, left the first burst of
   the recurring-burst traces to a fleet sized for 2x: on tuning seeds 11-16 at capacity error 0 bursts
   97.3-100 %, diurnal 98.6-100 %; at 3.0 bursts 98.1-100 %, diurnal 99.0-100 %, and at error -0.3 bursts
   93.7-98.1 % -> 96.8-100 %, for 5-10 % more GPU-hours on stationary traffic and the 2x step; measured
   with a peak test of level shifts since taken out again, see docs/autoscaling.md.) A 0.99
   target rests on about ``1 / (1 - q)`` = 100 lead times of data before its tail is the deployment's
   own, which is why the history read from Prometheus reaches ``HISTORY_S`` (4 h) back.
4. **Feedback.** Measured attainment (an exponential moving average of the SLO misses over
   ``FEEDBACK_TAU_S``, updated only while the fleet is settled: nothing starting, no queue building)
   scales the headroom by a factor in ``[FEEDBACK_MIN, FEEDBACK_MAX]``: misses above the allowed
   ``1 - target`` raise it by up to ``FEEDBACK_UP`` per decision; misses below half the allowed lower it
   by ``FEEDBACK_DOWN`` per decision, never below 1: feedback only adds to what the history asks for. (A
   floor of 0.9 let the quiet minutes between recurring bursts, settled and all within the SLO, take a
   tenth off the headroom the next burst needed.)
5. **Bound.** The factor is at most ``cap`` (``spec.autoscaling.headroomMax``, default :data:`H_MAX`): the
   user's cost bound on standing capacity.

Nothing here reads a clock or does I/O; the history is passed in (the simulator records it, the operator
reads it from Prometheus range queries).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

HISTORY_S = 4 * 3600.0
"""How far back the demand history reaches (the operator's Prometheus range query, the simulator's record)."""
HISTORY_STEP_S = 15.0
"""Resolution of the demand history (one sample per sync period)."""
PRIOR_WEIGHT = 4.0
"""The prior counts as this many lead times of history."""
MIN_SAMPLES = 8
"""Fewer growth samples than this: the prior alone."""
FEEDBACK_TAU_S = 300.0
"""Time constant of the measured-attainment moving average (the rolling window of the feedback)."""
FEEDBACK_MIN = 1.0
FEEDBACK_MAX = 2.0
FEEDBACK_UP = 0.03
"""Largest relative raise of the feedback factor per decision (at 3x the allowed misses or more)."""
FEEDBACK_DOWN = 0.002
"""Relative lowering of the feedback factor per decision while misses stay below half the allowed."""
H_MAX = 10.0
"""Largest headroom the history can ask for; also the default of ``spec.autoscaling.headroomMax``."""
MATERIAL_CHANGE = 0.15
"""A headroom change of this relative size or more is worth an Event."""


@dataclass(frozen=True)
class Headroom:
    """The standing headroom and the numbers behind it (shown in status, Events and metrics)."""

    factor: float
    """Capacity kept over the base demand: ``estimate x feedback`` (>= 1)."""
    estimate: float
    """From history and prior, before feedback."""
    history_quantile: float | None
    """The ``q``-quantile of the lead-time growth in the history alone (``None``: too few samples)."""
    quantile: float
    """``q``, from the SLO-attainment target."""
    lead_time_s: float
    """``L``: cold start plus detection delay."""
    history_s: float
    """Span of demand history behind the estimate."""
    samples: int
    """Growth samples behind the quantile."""
    feedback: float
    """Factor from measured attainment."""
    base: float
    """Base demand now (median over the base window), replicas of work."""
    cap: float = H_MAX
    """The largest factor kept (``spec.autoscaling.headroomMax``)."""

    def describe(self) -> str:
        """One line for messages and Events."""
        hist = "none" if self.history_quantile is None else f"{self.history_quantile:.2f}"
        return (
            f"headroom {self.factor:.2f}x (q{self.quantile:.3g} growth within lead time "
            f"{self.lead_time_s:.0f}s: "
            f"history {hist} over {self.history_s / 60:.0f} min/{self.samples} samples, with prior -> "
            f"{self.estimate:.2f}; attainment feedback x{self.feedback:.2f}"
            + (f"; capped at headroomMax {self.cap:g}" if self.estimate * self.feedback > self.cap else "")
            + ")"
        )


def lead_time(cold_start_s: float | None, detection_delay_s: float, fallback_cold_start_s: float) -> float:
    """Provisioning lead time: the measured cold start (else the fallback) plus the detection delay."""
    cold = cold_start_s if cold_start_s is not None and cold_start_s > 0 else fallback_cold_start_s
    return max(0.0, cold) + max(0.0, detection_delay_s)


def weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total (equal weights if all are 0)."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(max(0.0, w) for _, w in pairs)
    if total <= 0:
        pairs = [(v, 1.0) for v, _ in pairs]
        total = float(len(pairs))
    need = q * total
    acc = 0.0
    for v, w in pairs:
        acc += max(0.0, w)
        if acc >= need - 1e-12:
            return v
    return pairs[-1][0]


def base_levels(history: Sequence[tuple[float, float]], window_s: float) -> list[float]:
    """Median demand over the ``window_s`` up to and including each sample."""
    out: list[float] = []
    lo = 0
    for i, (t, _) in enumerate(history):
        while history[lo][0] < t - window_s:
            lo += 1
        out.append(statistics.median(d for _, d in history[lo : i + 1]))
    return out


def growth_samples(
    history: Sequence[tuple[float, float]], lead_s: float, base_window_s: float
) -> tuple[list[float], list[float]]:
    """(lead-time growth ratios, weights): one per sample with a full lead time of history after it."""
    if not history:
        return [], []
    base = base_levels(history, base_window_s)
    ratios: list[float] = []
    weights: list[float] = []
    window: deque[int] = deque()  # indices of a decreasing run of demand in (t, t + L]
    j = 0
    end = history[-1][0]
    for i, (t, _) in enumerate(history):
        if t + lead_s > end:
            break
        while j < len(history) and history[j][0] <= t + lead_s:
            while window and history[window[-1]][1] <= history[j][1]:
                window.pop()
            window.append(j)
            j += 1
        while window and window[0] <= i:
            window.popleft()
        if not window or base[i] <= 0:
            continue
        ratios.append(history[window[0]][1] / base[i])
        weights.append(base[i])
    return ratios, weights


QUEUE_BUDGET_S = 2.0
"""Backlog (seconds of the fleet's capacity) beyond which the requests arriving are counted as missed in
:func:`unserved_fraction`: the default TTFT target (a queue that deep makes new arrivals wait that long)."""


def unserved_fraction(
    history: Sequence[tuple[float, float]],
    base: Sequence[float],
    lead_s: float,
    factor: float,
    queue_budget_s: float = QUEUE_BUDGET_S,
    sustained: Sequence[bool] | None = None,
    utilization: float = 1.0,
) -> float:
    """Fraction of the demand in ``history`` that arrives while a fleet sized one lead time earlier as
    ``max(factor x base, demand)`` is overloaded past ``queue_budget_s`` of backlog.

    A fluid queue, not a count of the excess: while demand exceeds the fleet, a backlog builds (the excess
    times the interval, in seconds of the fleet's capacity) and drains at the spare capacity afterwards;
    every request arriving while the backlog is deeper than the budget waits longer than it and misses the
    SLO. Counting only the excess demand as missed (the first version) priced a burst 10 % over the fleet
    at 10 % of its requests, while in a queue nearly all of them, and those just after it, miss: the
    headroom it chose kept 3 replicas where the bursts needed 4 (bursts, tuning seed 11).

    ``utilization``: the fleet runs the sized work at this fraction of its capacity (the ``load`` signal's
    target utilisation), so its capacity is the sized work over it; without that margin, noise in demand
    measured at 15 s made the purely reactive fleet miss half the samples of any flat level.

    ``sustained`` (from :func:`sustained_levels`) marks samples whose demand level held afterwards: a miss
    there is the start of a level shift (a one-off step), which standing headroom over the base would
    carry onto the new level long after the shift; the reactive part sizes for shifts."""
    total = missed = 0.0
    backlogs = [0.0] * len(history)  # work-seconds queued after each sample
    shift = False
    j = 0
    prev_t: float | None = None
    for i, (t, d) in enumerate(history):
        if t - lead_s < history[0][0]:
            continue
        while j + 1 < len(history) and history[j + 1][0] <= t - lead_s:
            j += 1
        # What the autoscaler provisioned one lead time ago: the headroom, or the demand it saw then plus
        # the backlog it saw then drained over one lead time (the lead-time backlog of plan_reserve).
        cap = max(factor * base[j], history[j][1] + backlogs[j] / lead_s, 1e-9) / utilization
        dt = 0.0 if prev_t is None else t - prev_t
        prev_t = t
        backlogs[i] = max(0.0, backlogs[i - 1] + (d - cap) * dt)
        if backlogs[i] <= 0:
            shift = False
        elif sustained is not None and sustained[i]:
            shift = True  # this queue episode began with (or met) a level shift: its misses are the shift's
        total += d
        if backlogs[i] / cap > queue_budget_s and not shift:
            missed += d
    return missed / total if total > 0 else 0.0


def required_factor(
    history: Sequence[tuple[float, float]],
    lead_s: float,
    target: float,
    base_window_s: float,
    utilization: float = 1.0,
) -> float:
    """The smallest headroom (bisection within ``[1, H_MAX]``) for which :func:`unserved_fraction` is at
    most ``1 - target``: a request-weighted reading of "the growth within one lead time at the quantile
    the target implies" (a one-off rise counts for the demand it leaves unserved, not for every later
    hour as a time-quantile of growth ratios would)."""
    base = base_levels(history, base_window_s)
    held = sustained_levels(history, base, base_window_s, lead_s)
    budget = 1.0 - target

    def unserved(factor: float) -> float:
        return unserved_fraction(history, base, lead_s, factor, sustained=held, utilization=utilization)

    if unserved(1.0) <= budget:
        return 1.0
    lo, hi = 1.0, H_MAX
    if unserved(hi) > budget:
        return hi
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if unserved(mid) <= budget else (mid, hi)
    return hi


SHIFT_MIN = 1.25
"""Only a rise of at least this factor over its base can be a level shift (the slow growth of a daily cycle
is not one: it is what the reactive part follows)."""
SUSTAINED = 0.5
"""A sample's rise over its base counts as sustained (a level shift) when the median over the next base
window keeps at least this share of the rise."""


def sustained_levels(
    history: Sequence[tuple[float, float]], base: Sequence[float], base_window_s: float, lead_s: float
) -> list[bool]:
    """Per sample: whether its rise over the base held (the median over the following ``base_window_s``,
    or over what there is of it once at least one lead time, keeps ``SUSTAINED`` of ``demand - base``).
    Relative to the rise, not to the sample: a shift measured while the fleet catches up overshoots the
    new level (the queue's growth counts as demand), and the overshoot belongs to the shift. A partial
    window counts so that a fresh shift stops multiplying its new level within a lead time or two (with
    only full windows the 4x step kept 14 replicas where 4 serve it for five minutes); a burst still
    under way may read as sustained until it ends, which only delays a scale-down. Samples with less
    than one lead time after them are not known to be sustained."""
    out: list[bool] = []
    times = [t for t, _ in history]
    end = times[-1] if times else 0.0
    for i, (t, d) in enumerate(history):
        k = bisect.bisect_right(times, t + base_window_s) - 1
        if min(t + base_window_s, end) - t < lead_s or k <= i or d <= SHIFT_MIN * base[i]:
            out.append(False)
            continue
        after = statistics.median(x for _, x in history[i + 1 : k + 1])
        out.append(after >= base[i] + SUSTAINED * (d - base[i]))
    return out


def estimate(
    history: Sequence[tuple[float, float]],
    lead_s: float,
    target: float,
    prior: float,
    base_window_s: float,
    utilization: float = 1.0,
) -> tuple[float, float | None, int, float]:
    """(estimate, history quantile or None, samples, history span): steps 1-3 of the module docstring."""
    span = history[-1][0] - history[0][0] if len(history) > 1 else 0.0
    samples = sum(1 for t, _ in history if t - lead_s >= history[0][0]) if history else 0
    if samples < MIN_SAMPLES or lead_s <= 0:
        return max(1.0, prior), None, samples, span
    h = required_factor(history, lead_s, target, base_window_s, utilization)
    n = span / lead_s
    shrunk = (n * h + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT)
    # The prior stands for growth not yet seen: it may add caution to a short history, never discount
    # growth the history has shown (shrinking a recurring 3.7x burst toward 2.0 missed the next burst).
    return max(1.0, h, shrunk), h, samples, span


def reserve(room: Headroom) -> float:
    """Replicas of work to keep: ``base x factor``.

    No cap at the history's peak any more: it was there because after a one-off step the factor held the
    step's own growth on top of the new level (the 4x step went to 10 replicas where 3 serve it). Level
    shifts are now left out of the factor itself (:func:`sustained_levels`), and the cap had a cost of its
    own: on a daily cycle the level rises past every earlier peak, and the cap took away the headroom the
    flash crowds on top of it needed (diurnal, tuning seeds: 95.5 % and 96.6 % with the cap, 99.3 % and
    100 % without)."""
    return room.base * room.factor


def miss_average(previous: float | None, attainment: float | None, dt: float) -> float | None:
    """Exponential moving average of the SLO miss fraction (time constant ``FEEDBACK_TAU_S``)."""
    if attainment is None:
        return previous
    miss = min(1.0, max(0.0, 1.0 - attainment))
    if previous is None:
        return miss
    a = 1.0 - math.exp(-max(0.0, dt) / FEEDBACK_TAU_S)
    return previous + a * (miss - previous)


def feedback(previous: float, miss: float | None, target: float) -> float:
    """Step 4: the next feedback factor from the averaged misses and the target attainment."""
    if miss is None:
        return previous
    allowed = max(1e-6, 1.0 - target)
    f = previous
    if miss > allowed:
        f *= 1.0 + FEEDBACK_UP * min(1.0, (miss / allowed - 1.0) / 2.0)
    elif miss < 0.5 * allowed:
        f *= 1.0 - FEEDBACK_DOWN
    return min(FEEDBACK_MAX, max(FEEDBACK_MIN, f))


def headroom(
    history: Sequence[tuple[float, float]],
    lead_s: float,
    target: float,
    prior: float,
    base_window_s: float,
    feedback_factor: float,
    utilization: float = 1.0,
    cap: float = H_MAX,
) -> Headroom:
    """The headroom for the newest point of ``history`` (time-ordered (time, demand) samples), at most
    ``cap`` (the user's cost bound, ``spec.autoscaling.headroomMax``)."""
    est, hq, samples, span = estimate(history, lead_s, target, prior, base_window_s, utilization)
    now = history[-1][0] if history else 0.0
    recent = [d for t, d in history if t >= now - base_window_s]
    base = statistics.median(recent) if recent else 0.0
    return Headroom(
        factor=max(1.0, min(cap, est * feedback_factor)),
        estimate=est,
        history_quantile=hq,
        quantile=target,
        lead_time_s=lead_s,
        history_s=span,
        samples=samples,
        feedback=feedback_factor,
        base=base,
        cap=cap,
    )


def material_change(old: float | None, new: float) -> bool:
    """Whether the headroom moved enough (``MATERIAL_CHANGE``) to be worth an Event."""
    return old is None or abs(new - old) >= MATERIAL_CHANGE * max(old, 1e-9)
