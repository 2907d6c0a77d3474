"""Pure autoscaling core: the scaling algorithm, sick-replica detection and comparison policies.

Nothing in this package performs I/O or reads a clock: observations, capacity and the time are
passed in, and every result is a typed :class:`~tidal.scaling.types.ScalingDecision` that carries a
CamelCase ``reason`` and a message quoting the numbers. The operator shell (Prometheus client, kopf
handlers) and the fleet simulator (:mod:`tidal.sim`) both run this exact code.
"""

from __future__ import annotations

from tidal.scaling.algorithm import compute_desired_replicas
from tidal.scaling.types import (
    AutoscalerState,
    CapacityView,
    EngineAdvice,
    FleetObservation,
    Reason,
    ReplicaStats,
    ScalingConfig,
    ScalingDecision,
    SickReplica,
)

__all__ = [
    "AutoscalerState",
    "CapacityView",
    "EngineAdvice",
    "FleetObservation",
    "Reason",
    "ReplicaStats",
    "ScalingConfig",
    "ScalingDecision",
    "SickReplica",
    "compute_desired_replicas",
]
