"""Model architecture profiles: what the recommender needs to know about a model, from its config.json.

A :class:`ModelProfile` is a frozen record of the architecture (layers, hidden size, attention and KV heads,
head dim, MLP/MoE sizes, Multi-head Latent Attention ranks, vocabulary, tied embeddings, native dtype,
checkpoint quantization). :func:`profile_from_config` reads a Hugging Face ``config.json`` dictionary for the
Llama / Mistral / Qwen2 / Qwen3 / Qwen3-MoE / Mixtral / gpt-oss / DeepSeek-V2/V3 families;
:func:`load_profile` reads one from a path (the only file access here; no network).

Parameter counts are computed from the architecture (:meth:`ModelProfile.parameter_breakdown`), not copied
from a model card, so they also work for configs nobody catalogued; ``tests/unit/test_recommender_models.py``
checks them against the published totals.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidal.recommender.hfconfig import (
    NON_GATED_MLP_TYPES,
    TIED_BY_DEFAULT_TYPES,
    first_key,
    layer_types,
    moe_fields,
    quant_details,
    unwrap_text_config,
)

DTYPE_BYTES: dict[str, float] = {
    "float32": 4.0,
    "float": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "half": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
}
"""Bytes per element of the dtypes a model or KV cache can be stored in."""


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype`` (``ValueError`` for an unknown one)."""
    key = dtype.lower().removeprefix("torch.")
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(DTYPE_BYTES))}")
    return DTYPE_BYTES[key]


@dataclass(frozen=True)
class ParameterBreakdown:
    """Parameter counts by where they live (all counts are whole-model, before any parallel split)."""

    embedding: int
    """Input embedding table (vocab x hidden)."""
    lm_head: int
    """Output projection (0 when tied to the embedding)."""
    attention: int
    """Attention projections of all layers (q, k, v, o, MLA down/up projections, biases)."""
    dense_mlp: int
    """Dense MLP weights of all layers (including MoE shared experts)."""
    experts: int
    """Routed expert weights of all MoE layers."""
    other: int
    """Norms, routers, attention sinks: small, kept in the activation dtype."""

    @property
    def total(self) -> int:
        """Every parameter."""
        return self.embedding + self.lm_head + self.attention + self.dense_mlp + self.experts + self.other


@dataclass(frozen=True)
class ModelProfile:
    """The architecture facts the memory and latency models use."""

    name: str
    """Catalogue name or the config path it came from."""
    architecture: str
    """The Hugging Face ``architectures[0]`` (or model_type) for display."""
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    """Dense MLP width (the width of dense layers in a MoE model that has some)."""
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"
    """Native dtype of the checkpoint (vLLM's ``--dtype auto`` uses it)."""
    attention_bias: bool = False
    """q/k/v projections carry biases (Qwen2, gpt-oss)."""
    o_bias: bool = False
    """The output projection carries a bias (gpt-oss)."""
    num_experts: int = 0
    """Routed experts per MoE layer (0 for a dense model)."""
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    """Expert MLP width (defaults to ``intermediate_size`` for Mixtral-style configs)."""
    num_shared_experts: int = 0
    first_k_dense_layers: int = 0
    """Leading layers with a dense MLP instead of experts (DeepSeek ``first_k_dense_replace``)."""
    expert_bias: bool = False
    """Expert and router projections carry biases (gpt-oss)."""
    kv_lora_rank: int = 0
    """MLA compressed KV rank (0: ordinary multi-head/grouped attention)."""
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    quantization: str | None = None
    """Checkpoint quantization from ``quantization_config.quant_method`` (fp8, awq, gptq, mxfp4, ...)."""
    quant_bits: int | None = None
    """``quantization_config.bits`` / ``num_bits`` (AWQ/GPTQ/compressed-tensors), when given."""
    quant_group_size: int | None = None
    """``quantization_config.group_size`` (-1: one scale per output channel), when given."""
    sliding_window: int | None = None
    """Window of the sliding-window layers, if any."""
    layer_types: tuple[str, ...] = ()
    """Attention kind per layer (``full`` / ``sliding`` / ``chunked``); empty: every layer full attention."""
    gated_mlp: bool = True
    """Gate, up and down projections (SwiGLU/GeGLU); False: fc1/fc2 only (Phi, GPT-2 style)."""
    mlp_bias: bool = False
    """MLP projections carry biases (Phi)."""
    lm_head_bias: bool = False
    shared_expert_width: int = 0
    """Width of a shared expert when it differs from the routed ones (Qwen2-MoE); 0: ``expert_width``."""
    moe_layer_step: int = 1
    """Every ``moe_layer_step``-th layer has experts (Llama-4 ``interleave_moe_layer_step``)."""
    dense_only_layers: tuple[int, ...] = ()
    """Layers that keep a dense MLP in a MoE model (Qwen-MoE ``mlp_only_layers``)."""
    rotary_dim: int = 0
    """Rotary embedding width (``head_dim x partial_rotary_factor``); 0: ``head_dim``."""
    checkpoint_bytes: int | None = None
    """Bytes of the checkpoint's tensors (``model.safetensors.index.json`` ``metadata.total_size``)."""
    published_params_b: float | None = None
    """Published total parameter count in billions (catalogue entries; only used to check the arithmetic)."""

    @property
    def is_mla(self) -> bool:
        """Multi-head Latent Attention (DeepSeek-V2/V3): one compressed latent per token and layer."""
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        """Has routed experts."""
        return self.num_experts > 0

    def is_moe_layer(self, layer: int) -> bool:
        """Whether ``layer``'s MLP is a set of routed experts."""
        if not self.is_moe or layer < self.first_k_dense_layers or layer in self.dense_only_layers:
            return False
        return (layer + 1) % max(1, self.moe_layer_step) == 0

    @property
    def num_moe_layers(self) -> int:
        """Layers whose MLP is a set of routed experts."""
        return sum(1 for layer in range(self.num_layers) if self.is_moe_layer(layer))

    @property
    def shared_width(self) -> int:
        """Intermediate size of one shared expert."""
        return self.shared_expert_width or self.expert_width

    def dense_mlp_params(self, width: int) -> int:
        """Parameters of one dense MLP of ``width`` (3 matrices when gated, else 2; biases if any)."""
        h = self.hidden_size
        n = (3 if self.gated_mlp else 2) * h * width
        if self.mlp_bias:
            n += width * (2 if self.gated_mlp else 1) + h
        return n

    @property
    def hybrid_attention(self) -> bool:
        """Some layers use sliding-window or chunked attention and some full attention."""
        return len(set(self.layer_types)) > 1

    @property
    def expert_width(self) -> int:
        """Intermediate size of one routed expert."""
        return self.moe_intermediate_size or self.intermediate_size

    def attention_params_per_layer(self) -> int:
        """q/k/v/o projection parameters (with biases) of one layer."""
        h = self.hidden_size
        if self.is_mla:
            nh = self.num_attention_heads
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * nh * qk_head
            else:
                q = h * nh * qk_head
            kv = (
                h * (self.kv_lora_rank + self.qk_rope_head_dim)
                + self.kv_lora_rank  # kv_a_layernorm
                + self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
            )
            o = nh * self.v_head_dim * h
            return q + kv + o
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        n = h * q_out + 2 * h * kv_out + q_out * h
        if self.attention_bias:
            n += q_out + 2 * kv_out
        if self.o_bias:
            n += h
        return n

    def expert_params(self) -> int:
        """Parameters of one routed expert (gate, up, down projections; biases for gpt-oss)."""
        h, w = self.hidden_size, self.expert_width
        n = 3 * h * w
        if self.expert_bias:
            n += 2 * w + h
        return n

    def parameter_breakdown(self) -> ParameterBreakdown:
        """Whole-model parameter counts by component."""
        h = self.hidden_size
        embedding = self.vocab_size * h
        lm_head = 0 if self.tie_word_embeddings else self.vocab_size * h
        attention = self.num_layers * self.attention_params_per_layer()
        dense_layers = self.num_layers - self.num_moe_layers
        dense_mlp = dense_layers * self.dense_mlp_params(self.intermediate_size)
        dense_mlp += self.num_moe_layers * self.num_shared_experts * 3 * h * self.shared_width
        experts = self.num_moe_layers * self.num_experts * self.expert_params()
        norms = self.num_layers * 2 * h + h
        router = self.num_moe_layers * (h * self.num_experts + (self.num_experts if self.expert_bias else 0))
        if self.shared_expert_width:
            router += self.num_moe_layers * h  # shared_expert_gate (Qwen2-MoE)
        if self.lm_head_bias:
            router += self.vocab_size
        if self.is_mla and self.is_moe:
            router += self.num_moe_layers * self.num_experts  # e_score_correction_bias
        sinks = self.num_layers * self.num_attention_heads if self.architecture.startswith("GptOss") else 0
        qk_norm = self.num_layers * 2 * self.head_dim if self.architecture.startswith("Qwen3") else 0
        return ParameterBreakdown(
            embedding=embedding,
            lm_head=lm_head,
            attention=attention,
            dense_mlp=dense_mlp,
            experts=experts,
            other=norms + router + sinks + qk_norm,
        )

    @property
    def total_params(self) -> int:
        """Every parameter of the model."""
        return self.parameter_breakdown().total

    @property
    def active_params(self) -> int:
        """Parameters one token touches (all but unrouted experts; the embedding lookup is excluded)."""
        b = self.parameter_breakdown()
        routed = self.num_moe_layers * self.num_experts_per_tok * self.expert_params() if self.is_moe else 0
        lm_head = b.lm_head or b.embedding
        return b.attention + b.dense_mlp + routed + b.other + lm_head

    def expected_experts_touched(self, tokens: int) -> float:
        """Expected distinct experts per MoE layer that ``tokens`` tokens route to (uniform routing)."""
        if not self.is_moe or tokens <= 0:
            return 0.0
        e, k = self.num_experts, self.num_experts_per_tok
        return e * (1.0 - (1.0 - k / e) ** tokens)


def profile_from_config(cfg: dict[str, Any], name: str = "config.json") -> ModelProfile:
    """Build a profile from a Hugging Face ``config.json`` dictionary (text configs of VLMs are unwrapped).

    A stable entry point: the Hugging Face fetch and the catalogue call it with the parsed JSON.
    """
    cfg = unwrap_text_config(cfg)
    try:
        layers = int(cfg["num_hidden_layers"])
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        vocab = int(cfg["vocab_size"])
    except KeyError as exc:
        raise ValueError(f"{name}: config.json lacks {exc.args[0]!r}") from exc
    kv_heads = int(first_key(cfg, "num_key_value_heads", default=heads))
    head_dim = int(first_key(cfg, "head_dim", default=hidden // heads))
    archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
    arch = str(archs[0])
    model_type = str(cfg.get("model_type", "")).lower()
    quant, bits, group = quant_details(cfg)
    is_gpt_oss = model_type == "gpt_oss" or arch.startswith("GptOss")
    is_phi = model_type == "phi"
    sliding = cfg.get("sliding_window")
    if is_gpt_oss and not arch.startswith("GptOss"):
        arch = "GptOssForCausalLM"
    if model_type.startswith("qwen3") and not arch.startswith("Qwen3"):
        arch = "Qwen3ForCausalLM"
    tie_default = model_type.startswith(TIED_BY_DEFAULT_TYPES)
    fields: dict[str, Any] = {
        "intermediate_size": int(first_key(cfg, "intermediate_size", default=4 * hidden))
    }
    fields.update(moe_fields(cfg, model_type))
    return ModelProfile(
        name=name,
        architecture=arch,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_position_embeddings=int(first_key(cfg, "max_position_embeddings", default=4096)),
        tie_word_embeddings=bool(first_key(cfg, "tie_word_embeddings", default=tie_default)),
        torch_dtype=str(first_key(cfg, "torch_dtype", "dtype", default="bfloat16")).removeprefix("torch."),
        attention_bias=bool(cfg.get("attention_bias", False))
        or model_type == "qwen2"
        or is_gpt_oss
        or is_phi,
        o_bias=is_gpt_oss or is_phi,
        expert_bias=is_gpt_oss,
        kv_lora_rank=int(first_key(cfg, "kv_lora_rank", default=0)),
        q_lora_rank=int(first_key(cfg, "q_lora_rank", default=0)),
        qk_rope_head_dim=int(first_key(cfg, "qk_rope_head_dim", default=0)),
        qk_nope_head_dim=int(first_key(cfg, "qk_nope_head_dim", default=0)),
        v_head_dim=int(first_key(cfg, "v_head_dim", default=0)),
        quantization=quant,
        quant_bits=bits,
        quant_group_size=group,
        sliding_window=int(sliding) if isinstance(sliding, int) and sliding > 0 else None,
        layer_types=layer_types(cfg, model_type, layers),
        gated_mlp=model_type not in NON_GATED_MLP_TYPES,
        mlp_bias=is_phi,
        lm_head_bias=is_phi,
        rotary_dim=int(head_dim * float(first_key(cfg, "partial_rotary_factor", default=1.0))),
        **fields,
    )


def load_profile(path: str | Path) -> ModelProfile:
    """Read ``config.json`` (or a model directory holding one) into a profile."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    with p.open(encoding="utf-8") as fh:
        cfg = json.load(fh)
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: not a JSON object")
    return profile_from_config(cfg, name=str(path))


def gib(n_bytes: float) -> float:
    """Bytes to GiB."""
    return n_bytes / 2**30


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling division."""
    return -(-a // b)


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return math.ceil(n / multiple) * multiple
