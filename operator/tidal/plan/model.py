"""The ``ModelResolved`` condition: whether the operator knows the architecture it sizes the deployment for.

Why it exists: with ``spec.engine`` settings left ``"auto"`` the recommender chooses TP and PP from the
model's architecture; a model that is neither in the catalogue nor described by ``spec.model.architecture``
and whose Hub ``config.json`` could not be fetched (or declares an architecture the recommender cannot
size) would otherwise run at vLLM's default TP = PP = 1 without a word, an OOM for a large model. The
condition says which, why, and what the workers fall back to.
"""

from __future__ import annotations

from typing import Final

from tidal.api import AUTO, LLMDeployment
from tidal.builders import hubmodels
from tidal.builders.modelprofile import model_name_hint, model_profile
from tidal.plan.conditions import Cond
from tidal.recommender.catalog import hub_repo, resolve_name

MODEL_RESOLVED: Final = "ModelResolved"
MODEL_KNOWN: Final = "ModelKnown"
MODEL_CONFIG_UNAVAILABLE: Final = "ModelConfigUnavailable"
UNSUPPORTED_ARCHITECTURE: Final = "UnsupportedArchitecture"
MODEL_NOT_IN_CATALOGUE: Final = "ModelNotInCatalogue"


def _hub_reason(deployment: LLMDeployment) -> str | None:
    model = deployment.spec.model
    if model.architecture is not None or not model.uri.startswith("hf://"):
        return None
    if resolve_name(model_name_hint(model.uri)) is not None:
        return None
    repo = hub_repo(model.uri)
    found = hubmodels.lookup(*repo) if repo is not None else None
    return found.reason if found is not None else MODEL_CONFIG_UNAVAILABLE


def model_condition(deployment: LLMDeployment) -> Cond:
    """``ModelResolved`` for the deployment's model (see the module docstring)."""
    profile, source = model_profile(deployment.spec.model)
    if profile is not None:
        return Cond(MODEL_RESOLVED, True, MODEL_KNOWN, source)
    reason = _hub_reason(deployment) or MODEL_NOT_IN_CATALOGUE
    eng = deployment.spec.engine
    auto = [
        name
        for name, value in (
            ("tensorParallelSize", eng.tensor_parallel_size),
            ("pipelineParallelSize", eng.pipeline_parallel_size),
        )
        if value == AUTO
    ]
    if auto:
        source += f"; {' and '.join(auto)} fall back to 1 (vLLM's default) until the model is known"
    return Cond(MODEL_RESOLVED, False, reason, source)
