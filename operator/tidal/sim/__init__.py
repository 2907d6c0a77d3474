"""Fleet simulator: replay traffic against scaling policies in virtual time (pure, deterministic).

``traces`` (Azure CSV, seeded synthetic generators) → ``fleet.simulate`` (replicas built from
``engine.ReplicaEngine`` with step times from a ``stepmodel.StepTimeModel``, a least-outstanding load
balancer, scrapes producing :class:`tidal.scaling.FleetObservation`, and the policy objects of
:mod:`tidal.scaling.policies` and :mod:`tidal.sim.baselines` deciding in virtual time) → ``runner.compare``
for all policies, with ``oracle`` computing capacities, ``clairvoyant`` the verified perfect-foresight
reference, the right-sized static beside every result, and ``suite`` the families of traces with fixed
tuning and test seeds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidal.sim.fleet import PolicyResult, SimConfig, simulate
    from tidal.sim.runner import Comparison, compare
    from tidal.sim.stepmodel import EngineLimits, LinearStepModel, StepTimeModel, load_step_model
    from tidal.sim.traces import Trace, load_azure_csv, synthetic

# Imported on first use (PEP 562): the operator imports ``tidal.sim.capacity`` and ``tidal.sim.stepmodel``
# for its load signal, and must not pay for numpy and the simulator to get them.
_LAZY = {
    "PolicyResult": "fleet",
    "SimConfig": "fleet",
    "simulate": "fleet",
    "Comparison": "runner",
    "compare": "runner",
    "EngineLimits": "stepmodel",
    "LinearStepModel": "stepmodel",
    "StepTimeModel": "stepmodel",
    "load_step_model": "stepmodel",
    "Trace": "traces",
    "load_azure_csv": "traces",
    "synthetic": "traces",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tidal.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tidal.sim.{module}"), name)


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
