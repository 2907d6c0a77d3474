"""The ``LLMDeployment`` resource as a whole, and the helpers that turn documents into it.

``LLMDeployment.model_validate(body)`` accepts what the API server stores (a kopf body, a YAML example); its
errors name the field, e.g. ``spec.engine.tensorParallelSize``. :func:`validation_errors` flattens them into
``path: message`` lines for CLIs and tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from tidal.api.base import API_VERSION, KIND, ApiModel
from tidal.api.spec import LLMDeploymentSpec
from tidal.api.status import LLMDeploymentStatus


class ObjectMeta(ApiModel):
    """The ``metadata`` fields Tidal reads; the rest of Kubernetes' ObjectMeta is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    """Object name."""
    namespace: str | None = None
    """Object namespace."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""
    generation: int | None = None
    """Spec generation, bumped by the API server on every spec change."""
    uid: str | None = None
    """Object UID (for owner references)."""


class LLMDeployment(ApiModel):
    """A model served by vLLM on GPUs: engines sharded with tensor and pipeline parallelism (across nodes with
    Ray when a replica needs more GPUs than a node has), scaled on latency, queue and KV-cache signals."""

    api_version: Literal["tidal.dev/v1alpha1"] = API_VERSION
    """``tidal.dev/v1alpha1``."""
    kind: Literal["LLMDeployment"] = KIND
    """``LLMDeployment``."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: LLMDeploymentSpec
    """Desired state."""
    status: LLMDeploymentStatus = Field(default_factory=LLMDeploymentStatus)
    """Observed state, written by the operator."""


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def validation_errors(document: Mapping[str, Any]) -> list[str]:
    """``path: message`` for every problem of ``document`` (empty when it is a valid ``LLMDeployment``)."""
    try:
        LLMDeployment.model_validate(document)
    except ValidationError as exc:
        return [f"{_loc(e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors(include_url=False)]
    return []
