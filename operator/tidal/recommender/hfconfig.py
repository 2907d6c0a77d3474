"""Reading a Hugging Face ``config.json``: the family-specific keys and defaults behind a model profile.

Split from :mod:`tidal.recommender.models` (which owns the profile and its parameter arithmetic) because
every family spells the same fact differently: expert counts and widths (``num_local_experts``,
``n_routed_experts``, ``shared_expert_intermediate_size``, Llama-4 ``intermediate_size_mlp``), which layers
slide (``layer_types``, Gemma-2 alternation, Gemma-3 ``sliding_window_pattern``, Llama-4 chunked attention),
quantization (``quantization_config`` incl. compressed-tensors schemes), and defaults that are not written
in the file at all (Gemma ties its embeddings; Phi's MLP has two matrices). Nothing here imports the
profile, so the parser's rules stay testable on their own.
"""

from __future__ import annotations

from typing import Any


def first_key(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


NON_GATED_MLP_TYPES = frozenset(
    {"phi", "gpt2", "gpt_neox", "gpt_bigcode", "starcoder2", "falcon", "opt", "bloom"}
)
"""``model_type``s whose MLP is fc1/fc2 (two matrices) rather than gate/up/down."""
TIED_BY_DEFAULT_TYPES = ("gemma",)
"""``model_type`` prefixes whose config class ties the embeddings when ``tie_word_embeddings`` is absent."""


def layer_types(cfg: dict[str, Any], model_type: str, layers: int) -> tuple[str, ...]:
    """Attention kind per layer, as vLLM builds its KV cache groups (empty when every layer is full)."""
    kinds = cfg.get("layer_types")
    if isinstance(kinds, list) and len(kinds) == layers:
        out = tuple(
            "sliding" if "sliding" in str(k) else "chunked" if "chunk" in str(k) else "full" for k in kinds
        )
        return out if len(set(out)) > 1 or out[0] != "full" else ()
    window = cfg.get("sliding_window")
    if model_type == "gemma2" and window:
        return tuple("sliding" if i % 2 == 0 else "full" for i in range(layers))
    if model_type.startswith("gemma3") and window:
        pattern = int(first_key(cfg, "sliding_window_pattern", default=6))
        return tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(layers))
    no_rope = cfg.get("no_rope_layers")
    if model_type.startswith("llama4") and cfg.get("attention_chunk_size") and isinstance(no_rope, list):
        return tuple("chunked" if no_rope[i] else "full" for i in range(min(layers, len(no_rope))))
    if isinstance(window, int) and window > 0 and cfg.get("use_sliding_window", True) is not False:
        return tuple("sliding" for _ in range(layers))
    return ()


def quant_details(cfg: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    """(method, bits, group size) of ``quantization_config`` (compressed-tensors: its weight scheme)."""
    q = cfg.get("quantization_config") or {}
    if not isinstance(q, dict):
        return None, None, None
    method = q.get("quant_method")
    bits, group = q.get("bits"), q.get("group_size")
    for group_cfg in (q.get("config_groups") or {}).values():
        weights = group_cfg.get("weights") if isinstance(group_cfg, dict) else None
        if isinstance(weights, dict):
            bits = weights.get("num_bits", bits)
            group = weights.get("group_size", group)
            if weights.get("type") == "float" and bits == 8:
                method = "fp8"
            elif bits == 4 and method == "compressed-tensors":
                method = "int4"
            break
    return (
        str(method).lower() if method else None,
        int(bits) if bits is not None else None,
        int(group) if group is not None else None,
    )


def unwrap_text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        inner = dict(cfg["text_config"])
        inner.setdefault("architectures", cfg.get("architectures"))
        inner.setdefault("quantization_config", cfg.get("quantization_config"))
        inner.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
        return inner
    return cfg


def moe_fields(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    """Expert layout: counts, widths, shared experts, which layers have experts."""
    num_experts = int(first_key(cfg, "num_local_experts", "n_routed_experts", "num_experts", default=0))
    if not num_experts:
        return {}
    fields: dict[str, Any] = {
        "num_experts": num_experts,
        "num_experts_per_tok": int(first_key(cfg, "num_experts_per_tok", "experts_per_token", default=0)),
        "moe_intermediate_size": int(first_key(cfg, "moe_intermediate_size", default=0)),
        "num_shared_experts": int(first_key(cfg, "n_shared_experts", default=0)),
        "first_k_dense_layers": int(first_key(cfg, "first_k_dense_replace", default=0)),
        "moe_layer_step": int(first_key(cfg, "interleave_moe_layer_step", "decoder_sparse_step", default=1)),
        "dense_only_layers": tuple(int(x) for x in cfg.get("mlp_only_layers") or ()),
    }
    shared = int(first_key(cfg, "shared_expert_intermediate_size", default=0))
    if shared:
        fields["num_shared_experts"] = max(1, fields["num_shared_experts"])
        fields["shared_expert_width"] = shared
    if model_type.startswith("llama4"):
        # Llama 4: every MoE layer has one shared expert of the routed width; dense layers are wider.
        fields["num_shared_experts"] = 1
        fields["moe_intermediate_size"] = int(cfg["intermediate_size"])
        fields["intermediate_size"] = int(
            first_key(cfg, "intermediate_size_mlp", default=cfg["intermediate_size"])
        )
    return fields
