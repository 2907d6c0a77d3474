"""The ``ScalingPolicy`` interface, Tidal's algorithm as a policy, and the names of all policies.

Every policy is a small stateful object: ``decide(obs, capacity, now)`` is called every
``sync_period_s`` seconds and returns a :class:`ScalingDecision` (with a reason, like Tidal's).
:class:`TidalPolicy` carries :func:`compute_desired_replicas`'s state between calls; the baselines it is
compared against (HPA, KPA, APA, queue-threshold, KEDA, ENOVA, static, clairvoyant) are in
:mod:`tidal.sim.baselines`, with the simulator that alone runs them. ``POLICY_NAMES`` lists them all.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, runtime_checkable

from tidal.scaling.algorithm import compute_desired_replicas
from tidal.scaling.headroom import HISTORY_S
from tidal.scaling.types import (
    AutoscalerState,
    CapacityView,
    FleetObservation,
    ScalingConfig,
    ScalingDecision,
)


@runtime_checkable
class ScalingPolicy(Protocol):
    """A stateful scaling policy, called every ``sync_period_s`` seconds."""

    name: str
    sync_period_s: float

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        """Desired replicas given the newest observation (``None`` = none yet) and the capacity."""
        ...


class TidalPolicy:
    """Tidal's own algorithm (:func:`compute_desired_replicas`) with its state carried between calls."""

    name = "tidal"

    def __init__(
        self, config: ScalingConfig, state: AutoscalerState | None = None, sync_period_s: float = 15.0
    ):
        self.config = config
        self.state = state or AutoscalerState()
        self.sync_period_s = sync_period_s
        self.history: deque[tuple[float, float]] = deque()
        """Demand samples (time, replicas of work) of earlier decisions, ``HISTORY_S`` back: in the
        simulator the policy records its own history (the operator reads it from Prometheus)."""

    def decide(self, obs: FleetObservation | None, capacity: CapacityView, now: float) -> ScalingDecision:
        decision = compute_desired_replicas(self.config, obs, capacity, self.state, now, self.history)
        self.state = decision.state
        if decision.demand is not None:
            self.history.append((now, decision.demand))
            while self.history and self.history[0][0] < now - HISTORY_S:
                self.history.popleft()
        return decision


POLICY_NAMES = (
    "tidal", "static-peak", "hpa", "kpa", "apa", "queue-threshold", "keda", "enova", "clairvoyant",
)  # fmt: skip
"""The named policies; ``static:N`` (any N >= 1) is accepted beside them."""


def static_count(name: str) -> int | None:
    """N for a ``static:N`` policy name, None for any other name; a malformed ``static:`` name raises."""
    if not name.startswith("static:"):
        return None
    text = name.removeprefix("static:")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name!r}: static:N needs a whole number N >= 1")
    return int(text)


def is_policy_name(name: str) -> bool:
    """Whether ``name`` is a named policy or a well-formed ``static:N``."""
    try:
        return name in POLICY_NAMES or static_count(name) is not None
    except ValueError:
        return False
