"""The baselines Tidal is compared against, each a :class:`~tidal.scaling.policies.ScalingPolicy`, with
the simulator that alone runs them. Parameters are the published defaults (docs/autoscaling.md cites them):

* ``hpa`` — Kubernetes HPA: 15 s sync, ``ceil(ready x value/target)`` outside a 10 % tolerance, scale-down
  to the highest recommendation of the last 300 s (a new window starts with the current count, as the
  controller initialises it), scale-up limited to max(+100 %, +4 pods) per sync.
  Metric: running requests per replica (a utilisation-like metric: running / max_num_seqs vs a target).
* ``kpa`` — Knative KPA with config-autoscaler's defaults (knative.dev/docs/serving/autoscaling/
  kpa-specific; knative/serving config/config-autoscaler.yaml): concurrency averaged over a 60 s stable
  window and a 6 s panic window (panic-window-percentage 10), panic when the panic-window demand is
  ≥ 2x the ready pods (panic-threshold-percentage 200), no scale-down while panicking (until a stable
  window passes without reason to panic), max-scale-up-rate 1000 and max-scale-down-rate 2 against the
  ready pods; fed at Knative's cadence: the autoscaler scrapes every 1 s (``scrapeTickInterval``) and
  decides every 2 s (tick-interval).
* ``apa`` — AIBrix APA defaults: up tolerance 10 %, down tolerance 20 %, 60 s metric window, at most
  2x up / 1/2 down per decision.
* ``queue-threshold`` — ``vllm:num_requests_waiting`` per replica > 5 → +1; no request waiting for
  300 s → -1 (a hand-written rule of thumb).
* ``keda`` — the KEDA queue rule as users deploy it: a Prometheus trigger on
  ``sum(vllm:num_requests_waiting)`` with threshold 5 becomes an HPA external metric with an
  ``AverageValue`` target of 5, so the HPA asks for ``ceil(waiting / 5)`` replicas (outside the 10 %
  tolerance of ``waiting / (5 x current)``), with the HPA's default behaviour (15 s sync, 300 s
  scale-down stabilisation, scale-up by at most max(+100 %, +4 pods) per 15 s).
* ``enova`` — our reading of ENOVA (Huang et al., 2024, arXiv:2407.09486): a performance detector
  flags an anomaly (service-quality or saturation metrics out of their normal range: TTFT/TPOT over
  the SLO, a KV cache ≥ 95 %, or requests waiting on 3 consecutive samples), and on an anomaly the
  replica count is recomputed from the live concurrency and the per-replica ``max_num_seqs`` its
  configuration module chose; after 300 s without anomaly it releases one replica at a time when the
  concurrency fits in one fewer. The paper's detector is a semi-supervised VAE; this deterministic
  rule stands in for its trigger. It runs every 30 s, the ``detect_interval`` of ENOVA's released
  escaler settings (Emerging-AI/ENOVA, escaler/conf/settings.json).
* ``static-peak`` — a fixed count (the count that serves the trace's peak); ``static:N`` — N replicas.
* ``clairvoyant`` — a precomputed schedule (the simulator builds it knowing the trace and the cold start,
  and verifies it reaches the SLO-attainment target: :mod:`tidal.sim.clairvoyant`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from tidal.scaling.types import CapacityView, FleetObservation, Reason, ScalingDecision

STALE_AFTER_S = 60.0


def _limit(
    name: str,
    proposed: int,
    capacity: CapacityView,
    lo: int,
    hi: int,
    why: str,
    hold_reason: Reason = Reason.NO_CHANGE,
) -> ScalingDecision:
    """Bounds and free-GPU limit shared by the baselines; builds the decision."""
    current = capacity.current
    desired = min(max(proposed, lo), hi)
    reason = hold_reason
    if desired > current and capacity.free_gpus is not None:
        affordable = current + capacity.free_gpus // max(capacity.gpus_per_replica, 1)
        if desired > affordable:
            desired = max(current, affordable)
            reason = Reason.INSUFFICIENT_GPU
    if desired > current and reason is not Reason.INSUFFICIENT_GPU:
        reason = Reason.SCALED_UP
    elif desired < current:
        reason = Reason.SCALED_DOWN
    return ScalingDecision(
        desired=desired,
        proposed=proposed,
        current=current,
        reason=reason,
        message=f"{name}: {current} -> {desired}: {why}",
        limiting_factor=name,
    )


def _stale(
    name: str, obs: FleetObservation | None, capacity: CapacityView, now: float
) -> ScalingDecision | None:
    if obs is None or now - obs.time > STALE_AFTER_S or not obs.has_any_signal():
        return ScalingDecision(
            desired=capacity.current,
            proposed=capacity.current,
            current=capacity.current,
            reason=Reason.METRICS_STALE,
            message=f"{name}: holding at {capacity.current}: no fresh metrics",
            metrics_available=False,
        )
    return None


class HpaPolicy:
    """Kubernetes HPA on running requests per ready replica."""

    name = "hpa"

    def __init__(
        self,
        target_running_per_replica: float,
        min_replicas: int = 1,
        max_replicas: int = 10,
        tolerance: float = 0.1,
        scale_down_stabilization_s: float = 300.0,
        sync_period_s: float = 15.0,
    ):
        self.target = target_running_per_replica
        self.lo, self.hi = min_replicas, max_replicas
        self.tolerance = tolerance
        self.window = scale_down_stabilization_s
        self.sync_period_s = sync_period_s
        self.recs: deque[tuple[float, int]] = deque()

    def recommend(self, obs: FleetObservation, capacity: CapacityView) -> tuple[int | None, str]:
        """The metric's raw recommendation (None: within tolerance) and why: a per-pod average metric."""
        ready = max(capacity.ready, 1)
        value = (obs.running or 0.0) / ready
        ratio = value / self.target
        why = f"running/replica {value:.1f} vs target {self.target:.1f} (ratio {ratio:.2f})"
        if abs(ratio - 1) <= self.tolerance:
            return None, why
        return math.ceil(ready * ratio - 1e-9), why

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        stale = _stale(self.name, obs, capacity, now)
        if stale is not None or obs is None:
            return stale or _limit(self.name, capacity.current, capacity, self.lo, self.hi, "no metrics")
        cur = capacity.current
        if not self.recs:
            self.recs.append((now, cur))  # as the HPA controller: a new window starts at the current count
        raw, why = self.recommend(obs, capacity)
        rec = min(max(cur if raw is None else raw, self.lo), self.hi)
        self.recs.append((now, rec))
        while self.recs and now - self.recs[0][0] > self.window:
            self.recs.popleft()
        if rec < cur:
            rec = min(cur, max(n for _, n in self.recs))
        elif rec > cur:
            rec = min(rec, max(2 * cur, cur + 4))
        return _limit(self.name, rec, capacity, self.lo, self.hi, why)


class KedaPolicy(HpaPolicy):
    """KEDA's Prometheus trigger on ``sum(vllm:num_requests_waiting)``, threshold 5 (module docstring)."""

    name = "keda"

    def __init__(self, threshold: float = 5.0, min_replicas: int = 1, max_replicas: int = 10):
        super().__init__(threshold, min_replicas, max_replicas)

    def recommend(self, obs: FleetObservation, capacity: CapacityView) -> tuple[int | None, str]:
        waiting = obs.waiting or 0.0
        ratio = waiting / (self.target * max(capacity.current, 1))
        why = f"{waiting:.0f} waiting vs {self.target:g} per replica (ratio {ratio:.2f})"
        if abs(ratio - 1) <= self.tolerance:
            return None, why
        return math.ceil(waiting / self.target - 1e-9), why


class KpaPolicy:
    """Knative KPA: stable (60 s) and panic (6 s) windows over observed concurrency per pod."""

    name = "kpa"

    def __init__(
        self,
        target_concurrency_per_replica: float,
        min_replicas: int = 1,
        max_replicas: int = 10,
        stable_window_s: float = 60.0,
        panic_window_s: float = 6.0,
        panic_threshold: float = 2.0,
        sync_period_s: float = 2.0,
        max_scale_up_rate: float = 1000.0,
        max_scale_down_rate: float = 2.0,
        metric_interval_s: float = 1.0,
    ):
        self.target = target_concurrency_per_replica
        self.lo, self.hi = min_replicas, max_replicas
        self.stable, self.panic_w, self.panic_threshold = stable_window_s, panic_window_s, panic_threshold
        self.sync_period_s = sync_period_s
        self.up_rate, self.down_rate = max_scale_up_rate, max_scale_down_rate
        self.metric_interval_s = metric_interval_s
        """How often the simulator must scrape for this policy (Knative scrapes every second)."""
        self.samples: deque[tuple[float, float]] = deque()
        self.panic_since: float | None = None
        self.max_panic = 0

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        stale = _stale(self.name, obs, capacity, now)
        if stale is not None or obs is None:
            return stale or _limit(self.name, capacity.current, capacity, self.lo, self.hi, "no metrics")
        conc = (obs.running or 0.0) + (obs.waiting or 0.0)
        if not self.samples or self.samples[-1][0] != obs.time:
            self.samples.append((obs.time, conc))
        while self.samples and now - self.samples[0][0] > self.stable:
            self.samples.popleft()
        stable_avg = sum(c for _, c in self.samples) / len(self.samples)
        recent = [c for t, c in self.samples if now - t <= self.panic_w] or [self.samples[-1][1]]
        panic_avg = sum(recent) / len(recent)
        ready = max(capacity.ready, 1)
        want_stable = math.ceil(stable_avg / self.target - 1e-9)
        want_panic = math.ceil(panic_avg / self.target - 1e-9)
        if want_panic / ready >= self.panic_threshold:
            if self.panic_since is None:
                self.max_panic = 0
            self.panic_since = now
        elif self.panic_since is not None and now - self.panic_since >= self.stable:
            self.panic_since = None
        if self.panic_since is not None:
            self.max_panic = max(self.max_panic, want_panic, capacity.current)
            rec = self.max_panic
            why = f"panic: concurrency {panic_avg:.0f} over {self.panic_w:.0f}s vs {self.target:.0f}/pod"
        else:
            rec = want_stable
            why = f"concurrency {stable_avg:.0f} over {self.stable:.0f}s vs {self.target:.0f}/pod"
        # Knative's rate limits against the ready pods: x max-scale-up-rate up, / max-scale-down-rate down.
        rec = min(rec, math.ceil(self.up_rate * ready))
        rec = max(rec, math.floor(ready / self.down_rate))
        return _limit(self.name, rec, capacity, self.lo, self.hi, why)


class ApaPolicy:
    """AIBrix APA: asymmetric fluctuation tolerances over a 60 s window, rate-limited steps."""

    name = "apa"

    def __init__(
        self,
        target_per_replica: float,
        min_replicas: int = 1,
        max_replicas: int = 10,
        up_tolerance: float = 0.1,
        down_tolerance: float = 0.2,
        window_s: float = 60.0,
        max_up_rate: float = 2.0,
        max_down_rate: float = 2.0,
        sync_period_s: float = 15.0,
    ):
        self.target = target_per_replica
        self.lo, self.hi = min_replicas, max_replicas
        self.up, self.down, self.window = up_tolerance, down_tolerance, window_s
        self.up_rate, self.down_rate = max_up_rate, max_down_rate
        self.sync_period_s = sync_period_s
        self.samples: deque[tuple[float, float]] = deque()

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        stale = _stale(self.name, obs, capacity, now)
        if stale is not None or obs is None:
            return stale or _limit(self.name, capacity.current, capacity, self.lo, self.hi, "no metrics")
        self.samples.append((now, (obs.running or 0.0) + (obs.waiting or 0.0)))
        while self.samples and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        total = sum(c for _, c in self.samples) / len(self.samples)
        ready = max(capacity.ready, 1)
        per = total / ready
        ratio = per / self.target
        cur = capacity.current
        rec = cur
        if ratio > 1 + self.up:
            rec = min(math.ceil(ready * ratio - 1e-9), math.ceil(self.up_rate * cur))
        elif ratio < 1 - self.down:
            rec = max(math.ceil(ready * ratio - 1e-9), math.floor(cur / self.down_rate))
        why = f"concurrency/replica {per:.1f} vs target {self.target:.1f} (ratio {ratio:.2f})"
        return _limit(self.name, rec, capacity, self.lo, self.hi, why, Reason.WITHIN_TOLERANCE)


class QueueThresholdPolicy:
    """Rule of thumb: waiting per replica above a threshold → +1; nothing waiting for a while → -1."""

    name = "queue-threshold"

    def __init__(
        self,
        threshold: float = 5.0,
        min_replicas: int = 1,
        max_replicas: int = 10,
        idle_s: float = 300.0,
        sync_period_s: float = 15.0,
    ):
        self.threshold = threshold
        self.lo, self.hi = min_replicas, max_replicas
        self.idle_s = idle_s
        self.sync_period_s = sync_period_s
        self.idle_since: float | None = None

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        stale = _stale(self.name, obs, capacity, now)
        if stale is not None or obs is None:
            return stale or _limit(self.name, capacity.current, capacity, self.lo, self.hi, "no metrics")
        waiting = obs.waiting or 0.0
        per = waiting / max(capacity.ready, 1)
        cur = capacity.current
        rec = cur
        if waiting > 0:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        if per > self.threshold and capacity.starting == 0:
            rec = cur + 1
        elif self.idle_since is not None and now - self.idle_since >= self.idle_s:
            rec = cur - 1
            self.idle_since = now
        why = f"{per:.1f} waiting per replica (threshold {self.threshold:g})"
        return _limit(self.name, rec, capacity, self.lo, self.hi, why)


class EnovaPolicy:
    """Our reading of ENOVA's detection-triggered scaling (see the module docstring)."""

    name = "enova"

    def __init__(
        self,
        max_num_seqs_per_replica: float,
        ttft_target_s: float | None = 2.0,
        tpot_target_s: float | None = 0.1,
        min_replicas: int = 1,
        max_replicas: int = 10,
        calm_s: float = 300.0,
        sync_period_s: float = 30.0,
    ):
        self.seqs = max_num_seqs_per_replica
        self.ttft, self.tpot = ttft_target_s, tpot_target_s
        self.lo, self.hi = min_replicas, max_replicas
        self.calm_s = calm_s
        self.sync_period_s = sync_period_s
        self.waiting_streak = 0
        self.last_anomaly: float | None = None

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        stale = _stale(self.name, obs, capacity, now)
        if stale is not None or obs is None:
            return stale or _limit(self.name, capacity.current, capacity, self.lo, self.hi, "no metrics")
        self.waiting_streak = self.waiting_streak + 1 if (obs.waiting or 0) > 0 else 0
        anomalies = []
        if self.ttft and obs.ttft_p95 is not None and obs.ttft_p95 > self.ttft:
            anomalies.append(f"ttft_p95 {obs.ttft_p95:.2f}s")
        if self.tpot and obs.tpot_p95 is not None and obs.tpot_p95 > self.tpot:
            anomalies.append(f"tpot_p95 {obs.tpot_p95 * 1000:.0f}ms")
        if obs.kv_cache_usage is not None and obs.kv_cache_usage >= 0.95:
            anomalies.append(f"kv {obs.kv_cache_usage:.0%}")
        if self.waiting_streak >= 3:
            anomalies.append("requests waiting on 3 samples")
        conc = (obs.running or 0.0) + (obs.waiting or 0.0)
        need = math.ceil(conc / self.seqs - 1e-9)
        cur = capacity.current
        rec = cur
        if anomalies:
            self.last_anomaly = now
            if capacity.starting == 0:
                rec = max(need, cur + 1)
            why = "anomaly: " + ", ".join(anomalies)
        else:
            calm_for = now - (self.last_anomaly if self.last_anomaly is not None else -math.inf)
            if calm_for >= self.calm_s and need < cur:
                rec = cur - 1
                self.last_anomaly = now - self.calm_s + self.sync_period_s * 4
            why = f"normal; concurrency {conc:.0f} vs {self.seqs:.0f}/replica"
        return _limit(self.name, rec, capacity, self.lo, self.hi, why)


class StaticPolicy:
    """A fixed replica count (``static-peak``: the count that serves the trace's peak)."""

    reads_metrics = False

    def __init__(self, replicas: int, name: str = "static-peak", sync_period_s: float = 60.0):
        self.replicas = replicas
        self.name = name
        self.sync_period_s = sync_period_s

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        return _limit(
            self.name, self.replicas, capacity, 0, 10**9, f"fixed at {self.replicas}", Reason.SCHEDULED
        )


class SchedulePolicy:
    """Follows a precomputed ``[(time, replicas), ...]`` schedule (the simulator's ``clairvoyant``)."""

    reads_metrics = False

    def __init__(
        self, schedule: Sequence[tuple[float, int]], name: str = "clairvoyant", sync_period_s: float = 1.0
    ):
        self.schedule = sorted(schedule)
        self.name = name
        self.sync_period_s = sync_period_s
        self._i = 0

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        while self._i + 1 < len(self.schedule) and self.schedule[self._i + 1][0] <= now:
            self._i += 1
        n = self.schedule[self._i][1] if self.schedule else capacity.current
        return _limit(self.name, n, capacity, 0, 10**9, "precomputed schedule", Reason.SCHEDULED)
