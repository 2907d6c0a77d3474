"""Fleet simulator: replay traffic against scaling policies in virtual time (pure, deterministic).

``traces`` (Azure CSV, seeded synthetic generators) → ``fleet.simulate`` (replicas built from
``engine.ReplicaEngine`` with step times from a ``stepmodel.StepTimeModel``, a least-outstanding load
balancer, scrapes producing :class:`tidal.scaling.FleetObservation`, and the policy objects of
:mod:`tidal.scaling.policies` deciding in virtual time) → ``runner.compare`` for all policies, with
``oracle`` computing capacities and the perfect-foresight schedule.
"""

from __future__ import annotations

from tidal.sim.fleet import PolicyResult, SimConfig, simulate
from tidal.sim.runner import Comparison, compare
from tidal.sim.stepmodel import EngineLimits, LinearStepModel, StepTimeModel, load_step_model
from tidal.sim.traces import Trace, load_azure_csv, synthetic

__all__ = [
    "Comparison",
    "EngineLimits",
    "LinearStepModel",
    "PolicyResult",
    "SimConfig",
    "StepTimeModel",
    "Trace",
    "compare",
    "load_azure_csv",
    "load_step_model",
    "simulate",
    "synthetic",
]
