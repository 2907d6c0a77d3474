"""What a deployment serves: the model's URI, the name clients ask for, the token that reads it, an
architecture override for the recommender and where downloaded weights are kept (``spec.model``).

It exists apart from :mod:`tidal.api.spec` so each part of the spec reads on its own: this module is about
*which model*, :mod:`tidal.api.enginesettings` about how vLLM runs it, :mod:`tidal.api.autoscaling` about how
many replicas and how the ``"auto"`` settings are chosen.
"""

from __future__ import annotations

from pydantic import Field

from tidal.api.base import (
    DATA_KEY,
    DNS_SUBDOMAIN,
    ApiModel,
    ModelURI,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Rule,
)
from tidal.api.workload import ModelCache


class SecretKeyRef(ApiModel):
    """A key of a Secret in the ``LLMDeployment``'s namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the Secret."""
    key: str = Field(default="token", min_length=1, max_length=253, pattern=DATA_KEY)
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
