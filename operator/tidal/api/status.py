"""The observed state of an ``LLMDeployment``, written only by the operator through the status subresource.

It is what an SRE reads with ``kubectl get/describe llmd``: replica counts (``replicas`` and ``selector`` also
back the scale subresource), standard conditions, the engine recommendation with its reasons, the last
scaling decision and a bounded history of them, the key signal against its target (a printer column), and
GPU-hours. ``autoscaler`` holds the autoscaler's windows (owned by
:class:`tidal.scaling.types.AutoscalerState`) so an operator restart does not reset them; it is the one
opaque field. Lists are bounded (``maxItems``) so the object stays small and the API server's CEL cost
stays bounded.

Times are RFC 3339 strings (``2025-01-01T00:00:00Z``), as in every Kubernetes status.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from tidal.api.base import ApiModel

MAX_HISTORY = 20
"""Entries kept in ``status.scalingHistory``."""

ConditionType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    ),
]
Timestamp = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})]
Message = Annotated[str, Field(max_length=1024)]


class Condition(ApiModel):
    """A standard Kubernetes condition (the ``metav1.Condition`` shape)."""

    type: ConditionType
    """``Ready``, ``Progressing``, ``Degraded``, ``ScalingActive``, ``MetricsAvailable``, ..."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """CamelCase reason for the last transition, e.g. ``InsufficientGPU``."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details."""
    last_transition_time: Timestamp
    """When ``status`` last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` the condition was computed from."""


class RecommendedValues(ApiModel):
    """Engine settings the recommender chose."""

    tensor_parallel_size: int | None = Field(default=None, ge=1)
    """Recommended ``--tensor-parallel-size``."""
    pipeline_parallel_size: int | None = Field(default=None, ge=1)
    """Recommended ``--pipeline-parallel-size``."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """Recommended ``--gpu-memory-utilization`` (a number here; the spec takes it as a string)."""
    max_num_seqs: int | None = Field(default=None, ge=1)
    """Recommended ``--max-num-seqs``."""
    max_model_len: int | None = Field(default=None, ge=1)
    """Recommended ``--max-model-len``."""
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    """Recommended ``--max-num-batched-tokens``."""


class PredictedPerformance(ApiModel):
    """What the performance model predicts for the recommended settings at the expected lengths."""

    ttft_seconds: float | None = Field(default=None, ge=0)
    """Predicted time to first token."""
    tpot_seconds: float | None = Field(default=None, ge=0)
    """Predicted time per output token."""
    output_tokens_per_second: float | None = Field(default=None, ge=0)
    """Predicted output tokens per second of one replica."""


class RecommendationStatus(ApiModel):
    """The engine recommendation, its arithmetic and whether it was applied."""

    values: RecommendedValues = Field(default_factory=RecommendedValues)
    """The recommended settings."""
    applied: bool = False
    """Whether the settings left ``"auto"`` use these values (``Apply`` mode)."""
    feasible: bool = True
    """False when vLLM would refuse to start with these settings (weights or one max-length sequence do not
    fit); ``reasons`` says why."""
    reasons: list[Message] = Field(default_factory=list, max_length=32)
    """Why each value was chosen, with the arithmetic (weights, KV bytes per token, KV capacity)."""
    differences: list[Message] = Field(default_factory=list, max_length=16)
    """Explicit spec values that differ from the recommendation (explicit values win)."""
    arithmetic: dict[str, float] = Field(default_factory=dict, max_length=32)
    """Intermediate numbers, e.g. ``weightsGiBPerGpu``, ``kvCacheGiBPerGpu``, ``kvCacheTokens``."""
    predicted: PredictedPerformance | None = None
    """Predicted latency and throughput."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` the recommendation was made for."""


class KVCapacityStatus(ApiModel):
    """The online check of the KV-capacity prediction: what the ready engines report
    (``vllm:cache_config_info``) beside what the memory model predicted for the settings they run with."""

    predicted_tokens: int = Field(ge=0)
    """KV tokens per GPU the memory model predicts for the running engine's settings."""
    measured_tokens: int = Field(ge=0)
    """KV tokens the smallest ready engine reports: ``numBlocks x blockSize``."""
    num_blocks: int = Field(ge=0)
    """``num_gpu_blocks`` of that engine (on vLLM's CPU build: its CPU KV blocks)."""
    block_size: int = Field(ge=1)
    """Tokens per KV block of that engine."""
    pod: str = Field(default="", max_length=253)
    """The pod whose engine reported the smallest capacity."""
    engines: int = Field(default=1, ge=1)
    """Ready engines that reported a capacity."""
    relative_error: float
    """(predicted - measured) / measured."""
    mismatch: bool = False
    """The two differ by more than 5 % (a ``KVCapacityMismatch`` Warning Event)."""
    tokens_in_use: int | None = Field(default=None, ge=1)
    """The KV capacity the recommendation (and so ``Apply`` mode) and the autoscaler's capacity model size
    with instead of the prediction: set after a mismatch, while the engines run on ``basis``."""
    basis: str = Field(default="", max_length=256)
    """The engine settings the measurement depends on (TP, PP, memory fraction)."""
    measured_at: Timestamp | None = None
    """When these numbers were first seen."""
    message: Message = ""
    """The comparison in words."""


class ScaleEvent(ApiModel):
    """One scaling decision that changed ``spec.replicas`` (or was blocked)."""

    time: Timestamp
    """When it was decided."""
    from_: int = Field(ge=0, alias="from")
    """Replicas before."""
    to: int = Field(ge=0)
    """Replicas after (equal to ``from`` for a blocked decision)."""
    reason: str = Field(min_length=1, max_length=128)
    """CamelCase reason (``ScaledUp``, ``ScaledDown``, ``ScaleBlocked``, ``InsufficientGPU``, ...)."""
    message: Message = ""
    """The inputs: signal, value, target, window, proposed versus applied replicas."""


class Signal(ApiModel):
    """The scaling signal furthest from its target, for ``kubectl get``."""

    name: str = Field(max_length=64)
    """Signal name (``ttft_p95``, ``tpot_p95``, ``queue``, ``kv_cache``, ...)."""
    value: float | None = None
    """Observed value; unset when the metric is missing."""
    target: float | None = None
    """Its target."""
    summary: str = Field(default="", max_length=128)
    """Printable ``name value/target``, e.g. ``ttft_p95 0.8s/2.0s`` (the ``Signal`` printer column)."""


class EngineOverrides(ApiModel):
    """Engine values tuning applied in place of the recommendation (``Apply`` mode, settings left
    ``"auto"``)."""

    max_num_seqs: int | None = Field(default=None, ge=1)
    """``--max-num-seqs`` lowered after frequent preemptions."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """``--gpu-memory-utilization`` raised after a KV cache full at small batches."""
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    """``--max-num-batched-tokens`` (the prefill chunk budget) lowered after TPOT breaches in
    prefill-dominated steps, or raised back towards the recommendation after TTFT breaches with TPOT
    headroom."""


class EngineTuningChange(ApiModel):
    """One engine setting changed by tuning."""

    time: Timestamp
    """When it was applied."""
    setting: str = Field(min_length=1, max_length=64)
    """The spec field name (``maxNumSeqs``, ``gpuMemoryUtilization``, ``maxNumBatchedTokens``)."""
    from_: float = Field(alias="from")
    """The value before."""
    to: float
    """The value after."""
    message: Message = ""
    """The observation behind it, with the numbers."""
    spec_hash: str | None = Field(default=None, max_length=128)
    """The pod template hash the change rolls the replicas to; a crash loop of pods at this hash soon after
    the change rolls it back (``rolledBack``)."""


class EngineTuningRollback(ApiModel):
    """An applied change undone because the replicas it rolled to crash-looped."""

    time: Timestamp
    """When it was rolled back."""
    setting: str = Field(min_length=1, max_length=64)
    """The spec field name (``maxNumSeqs``, ``gpuMemoryUtilization``, ``maxNumBatchedTokens``)."""
    from_: float = Field(alias="from")
    """The value that crash-looped (the change's ``to``); it is blocked."""
    to: float
    """The value restored (the change's ``from``)."""
    reason: str = Field(min_length=1, max_length=64)
    """What the pods at the change's hash showed: ``OOMKilled``, ``CrashLoopBackOff``, ``Error`` or
    ``Restarting``."""
    message: Message = ""
    """The pod, container, restarts and exit code behind it."""


class EngineTuningNotice(ApiModel):
    """The last ``EngineTuningSkipped`` Event posted for one setting."""

    reason: str = Field(min_length=1, max_length=64)
    """Why its advice was not applied, as in ``skipped``."""
    time: Timestamp
    """When the Event was posted."""


class EngineTuningStatus(ApiModel):
    """Engine tuning from live metrics: in ``Apply`` mode the overrides the workers run with (explicit spec
    values still win), at most one change per cool-down; in ``Advise`` mode only why nothing was applied."""

    overrides: EngineOverrides = Field(default_factory=EngineOverrides)
    """Values in force (they survive operator restarts here)."""
    last_change: EngineTuningChange | None = None
    """The most recent applied change."""
    cool_down_until: Timestamp | None = None
    """No other change before this time."""
    skipped: dict[str, Annotated[str, Field(max_length=64)]] = Field(default_factory=dict, max_length=8)
    """Setting -> why its advice was not applied (``explicit``, ``coolDown``, ``advise``, ``atBound``,
    ``unknownCurrent``, ``adviceOnly``, ``blocked``)."""
    message: Message = ""
    """What the last pass did or did not apply, and why."""
    notified: dict[str, EngineTuningNotice] = Field(default_factory=dict, max_length=8)
    """Setting -> the last ``EngineTuningSkipped`` Event about it. Kept when the advice goes away, so advice
    that comes and goes does not repeat the Event: it is posted again only for another reason or after
    an hour."""
    rolled_back: EngineTuningRollback | None = None
    """The last change rolled back because its rollout crash-looped."""
    blocked: dict[str, float] = Field(default_factory=dict, max_length=8)
    """Setting -> a value that crash-looped and was rolled back: tuning does not apply it again, nor a value
    beyond it (lower ``maxNumSeqs``, higher ``gpuMemoryUtilization``, and for ``maxNumBatchedTokens``, which
    moves both ways, past it as seen from the value in force); skipped advice says ``blocked``."""


class LLMDeploymentStatus(ApiModel):
    """Observed state of an ``LLMDeployment``."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` last reconciled."""
    replicas: int = Field(default=0, ge=0)
    """Replicas that exist (scale subresource ``statusReplicasPath``)."""
    ready_replicas: int = Field(default=0, ge=0)
    """Replicas whose engines are ready to serve."""
    restarts: int = Field(default=0, ge=0)
    """Container restarts by the kubelet, summed over the live worker pods (an ``EngineRestarted`` Event when
    it grows)."""
    desired_replicas: int | None = Field(default=None, ge=0)
    """Replicas the autoscaler (or the spec) asks for."""
    selector: str | None = Field(default=None, max_length=1024)
    """Label selector of the worker pods, as a string (scale subresource ``labelSelectorPath``)."""
    gpus_per_replica: int | None = Field(default=None, ge=0)
    """GPUs one replica uses (TP x PP)."""
    served_model_name: str | None = Field(default=None, max_length=253)
    """The model name the OpenAI API serves (``spec.model.servedModelName`` or the derived default)."""
    spec_hash: str | None = Field(default=None, max_length=128)
    """Hash of the spec fields that shape the workers; a change rolls the replicas."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """``Ready``, ``Progressing``, ``Degraded``, ``ScalingActive``, ``MetricsAvailable``."""
    recommendation: RecommendationStatus | None = None
    """The engine recommendation."""
    advice: list[Message] = Field(default_factory=list, max_length=20)
    """Engine-setting advice from live metrics (KV saturation, preemptions, a degraded replica)."""
    last_scale: ScaleEvent | None = None
    """The most recent scaling decision."""
    scaling_history: list[ScaleEvent] = Field(default_factory=list, max_length=MAX_HISTORY)
    """The most recent scaling decisions, newest last."""
    autoscaler: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Autoscaler windows and counters (``tidal.scaling.types.AutoscalerState.to_dict``), kept so an operator
    restart does not reset them. Opaque."""
    signal: Signal | None = None
    """The key signal against its target."""
    gpu_hours: float = Field(default=0.0, ge=0)
    """GPU-hours consumed by this deployment's workers so far."""
    engine_tuning: EngineTuningStatus | None = None
    """Engine settings tuned from live metrics (``Apply`` mode), or why advice was not applied."""
    kv_capacity: KVCapacityStatus | None = None
    """The engines' reported KV capacity beside the prediction (the online check, read with the autoscaler's
    metrics)."""
