"""The desired state of an ``LLMDeployment``: what model to serve, with which engine settings, on which GPUs,
how many replicas, and how to scale and tune them.

Every field is either required or has a default, and carries a docstring that becomes its description in the
CRD and in ``docs/api.md``. Constraints live in the types (bounds, enums, patterns) and in :class:`~tidal.api.
base.Rule` s that are enforced both here and by the API server through CEL, so the same bad document is
refused by ``kubectl apply`` and by :meth:`LLMDeployment.model_validate` with the same message.

The parts of the spec live in their own modules and are re-exported here: the model
(:mod:`tidal.api.modelsource`), the engine (:mod:`tidal.api.enginesettings`), autoscaling and the
recommendation mode (:mod:`tidal.api.autoscaling`). This module keeps the GPU resources, the spec itself and
the rules that cross those parts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tidal.api.autoscaling import (
    DEFAULT_PROMETHEUS_URL,
    Autoscaling,
    AutoscalingTargets,
    PrometheusSource,
    Recommendation,
)
from tidal.api.base import AUTO, ApiModel, Quantity, Rule
from tidal.api.enginesettings import DEFAULT_ENGINE_IMAGE, Engine, SpeculativeDecoding
from tidal.api.modelsource import ModelArchitecture, ModelSource, SecretKeyRef, derive_served_model_name
from tidal.api.workload import PodSecurity

__all__ = [
    "DEFAULT_ENGINE_IMAGE",
    "DEFAULT_PROMETHEUS_URL",
    "Autoscaling",
    "AutoscalingTargets",
    "Engine",
    "LLMDeploymentSpec",
    "ModelArchitecture",
    "ModelSource",
    "PrometheusSource",
    "Recommendation",
    "Resources",
    "SecretKeyRef",
    "SpeculativeDecoding",
    "Toleration",
    "derive_served_model_name",
]


class Toleration(ApiModel):
    """A Kubernetes pod toleration (core/v1 ``Toleration``)."""

    key: str | None = Field(default=None, max_length=317)
    """Taint key to tolerate; empty with ``Exists`` tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """``Equal`` matches ``value``; ``Exists`` matches any value."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value for ``Equal``."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; unset tolerates every effect."""
    toleration_seconds: int | None = None
    """For ``NoExecute``: how long the pod stays bound after the taint appears."""


class Resources(ApiModel):
    """GPU and node resources of each worker."""

    gpu_type: str = Field(
        default="H100-80GB", min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$"
    )
    """GPU type, a name from the GPU catalogue (``H100-80GB``, ``H200``, ``A100-80GB``, ``L40S``, ...).
    Used by the recommender and to select nodes by the GPU product label."""
    gpus_per_node: int = Field(default=8, ge=1, le=16)
    """GPUs on each node of this type. A replica whose TP x PP exceeds it spans several nodes."""
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32
    )
    """Extra node labels the workers must run on."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations for tainted GPU nodes."""
    shm_size: Quantity = "16Gi"
    """Size of the memory-backed ``/dev/shm`` (NCCL and the engine use shared memory between processes)."""
    cpu: Quantity | None = None
    """CPU request of each worker pod. Unset: 2 cores plus 2 per GPU of the pod (the API server,
    tokenizer and one engine process per GPU)."""
    memory: Quantity | None = None
    """Memory request of each worker pod. Unset: the pod's share of the checkpoint (read through the page
    cache while the weights load; the recommender's weight bytes for the model) plus 4 GiB and 2 GiB per
    GPU; for a model the recommender does not know, a 16 GiB floor in place of the weights."""
    ephemeral_storage: Quantity | None = None
    """Ephemeral-storage request of each worker pod. Unset: 10 GiB (logs, ``/tmp``, compile caches) plus
    the ``emptyDir`` model cache's size limit when that is the cache."""


def _tp_divides(s: LLMDeploymentSpec) -> bool:
    tp = s.engine.tensor_parallel_size
    return tp == AUTO or (
        isinstance(tp, int) and tp <= s.resources.gpus_per_node and s.resources.gpus_per_node % tp == 0
    )


def _multinode_tp(s: LLMDeploymentSpec) -> bool:
    tp, pp, gpn = s.engine.tensor_parallel_size, s.engine.pipeline_parallel_size, s.resources.gpus_per_node
    if not (isinstance(tp, int) and isinstance(pp, int)):
        return True
    return tp * pp <= gpn or tp == gpn


def _quantization_agrees(s: LLMDeploymentSpec) -> bool:
    arch = s.model.architecture
    own = arch.quantization if arch is not None else None
    return own is None or s.engine.quantization in ("none", own)


class LLMDeploymentSpec(ApiModel):
    """Desired state of an ``LLMDeployment``."""

    __rules__ = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="spec.minReplicas must be less than or equal to spec.maxReplicas",
            check=lambda s: s.min_replicas <= s.max_replicas,
            field_path=".minReplicas",
        ),
        Rule(
            cel="self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas",
            message="spec.replicas must be between spec.minReplicas and spec.maxReplicas",
            check=lambda s: s.min_replicas <= s.replicas <= s.max_replicas,
            field_path=".replicas",
        ),
        Rule(
            cel="type(self.engine.tensorParallelSize) == string || "
            "(self.engine.tensorParallelSize <= self.resources.gpusPerNode && "
            "self.resources.gpusPerNode % self.engine.tensorParallelSize == 0)",
            message="spec.engine.tensorParallelSize must divide spec.resources.gpusPerNode",
            check=_tp_divides,
            field_path=".engine.tensorParallelSize",
        ),
        Rule(
            cel="type(self.engine.tensorParallelSize) == string || "
            "type(self.engine.pipelineParallelSize) == string || "
            "self.engine.tensorParallelSize * self.engine.pipelineParallelSize "
            "<= self.resources.gpusPerNode || "
            "self.engine.tensorParallelSize == self.resources.gpusPerNode",
            message="spec.engine.tensorParallelSize must equal spec.resources.gpusPerNode when "
            "tensorParallelSize x "
            "pipelineParallelSize spans several nodes",
            check=_multinode_tp,
            field_path=".engine.tensorParallelSize",
        ),
        Rule(
            cel="!has(self.autoscaling) || !has(self.autoscaling.enabled) || !self.autoscaling.enabled "
            "|| self.minReplicas >= 1",
            message="spec.minReplicas must be at least 1 when spec.autoscaling.enabled is true: nothing "
            "holds requests while a deployment scales up from zero, and with no replica there are no "
            "metrics to scale up on",
            check=lambda s: not s.autoscaling.enabled or s.min_replicas >= 1,
            field_path=".minReplicas",
        ),
        Rule(
            cel="!has(self.model.architecture) || !has(self.model.architecture.quantization) || "
            "!has(self.engine.quantization) || self.engine.quantization == 'none' || "
            "self.engine.quantization == self.model.architecture.quantization",
            message="spec.engine.quantization conflicts with spec.model.architecture.quantization, the "
            "checkpoint's own method: leave spec.engine.quantization none (vLLM reads the checkpoint's)",
            check=_quantization_agrees,
            field_path=".engine.quantization",
        ),
    )

    model: ModelSource
    """The model to serve."""
    engine: Engine = Field(default_factory=Engine)
    """vLLM engine settings."""
    resources: Resources = Field(default_factory=Resources)
    """GPU and node resources."""
    replicas: int = Field(default=1, ge=0)
    """Replicas (a replica is one engine: one pod, or one group of pods across nodes). The scale subresource
    and the autoscaler write this field; it must lie within [minReplicas, maxReplicas]."""
    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas the autoscaler keeps."""
    max_replicas: int = Field(default=1, ge=1)
    """Most replicas the autoscaler asks for."""
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    """SLO-driven autoscaling."""
    recommendation: Recommendation = Field(default_factory=Recommendation)
    """Engine-setting recommendation."""
    pod_security: PodSecurity = Field(default_factory=PodSecurity)
    """Security settings of the worker pods (defaults pass Pod Security ``restricted``)."""

    @property
    def gpus_per_replica(self) -> int | None:
        """TP x PP when both are explicit, else ``None`` (known only once the recommendation is made)."""
        tp, pp = self.engine.tensor_parallel_size, self.engine.pipeline_parallel_size
        if isinstance(tp, int) and isinstance(pp, int):
            return tp * pp
        return None
