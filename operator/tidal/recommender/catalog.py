"""Built-in catalogue of popular open models, as the ``config.json`` fields that matter.

Each entry is the subset of the model's published Hugging Face ``config.json`` the recommender reads, passed
through the same :func:`~tidal.recommender.models.profile_from_config` as a user's file, so the catalogue
and a local config cannot disagree. ``published_params_b`` is the total from the model card, used only by
tests to check the computed parameter count.

:func:`get_model` accepts a catalogue name (case-insensitive; ``/`` prefixes such as ``meta-llama/`` and
the aliases below are accepted) or a path to a ``config.json`` / model directory. A model outside the
catalogue comes from its Hub ``config.json`` (fetched by the shell, :mod:`tidal.shell.hub`) through
:func:`hub_profile`, which refuses architectures the recommender cannot size, naming them
(:data:`SUPPORTED_ARCHITECTURES`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tidal.recommender.models import ModelProfile, load_profile, profile_from_config

_LLAMA31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
_LLAMA_70B: dict[str, Any] = {
    **_LLAMA31_8B,
    "num_hidden_layers": 80,
    "hidden_size": 8192,
    "num_attention_heads": 64,
    "intermediate_size": 28672,
}

CATALOG_CONFIGS: dict[str, tuple[dict[str, Any], float]] = {
    # name: (config.json subset, published total parameters in billions)
    "Llama-3.1-8B": (_LLAMA31_8B, 8.03),
    "Llama-3.1-70B": (_LLAMA_70B, 70.6),
    "Llama-3.1-405B": (
        {
            **_LLAMA31_8B,
            "num_hidden_layers": 126,
            "hidden_size": 16384,
            "num_attention_heads": 128,
            "intermediate_size": 53248,
        },
        405.9,
    ),
    "Llama-3.3-70B": (_LLAMA_70B, 70.6),
    "Qwen2.5-7B": (
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "num_hidden_layers": 28,
            "hidden_size": 3584,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "intermediate_size": 18944,
            "vocab_size": 152064,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        7.62,
    ),
    "Qwen2.5-72B": (
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "num_hidden_layers": 80,
            "hidden_size": 8192,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "intermediate_size": 29568,
            "vocab_size": 152064,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        72.7,
    ),
    "Qwen3-8B": (
        {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "num_hidden_layers": 36,
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 12288,
            "vocab_size": 151936,
            "max_position_embeddings": 40960,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        8.2,
    ),
    "Qwen3-32B": (
        {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "num_hidden_layers": 64,
            "hidden_size": 5120,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 25600,
            "vocab_size": 151936,
            "max_position_embeddings": 40960,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        32.8,
    ),
    "Qwen3-235B-A22B": (
        {
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            "num_hidden_layers": 94,
            "hidden_size": 4096,
            "num_attention_heads": 64,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "intermediate_size": 12288,
            "moe_intermediate_size": 1536,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "vocab_size": 151936,
            "max_position_embeddings": 40960,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        235.0,
    ),
    "Mistral-7B": (
        {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "num_hidden_layers": 32,
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 14336,
            "vocab_size": 32768,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        7.25,
    ),
    "Mixtral-8x7B": (
        {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "num_hidden_layers": 32,
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "vocab_size": 32000,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        46.7,
    ),
    "gpt-oss-20b": (
        {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "num_hidden_layers": 24,
            "hidden_size": 2880,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "intermediate_size": 2880,
            "num_local_experts": 32,
            "experts_per_token": 4,
            "vocab_size": 201088,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
            "sliding_window": 128,
            "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": "mxfp4"},
        },
        20.9,
    ),
    "gpt-oss-120b": (
        {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "num_hidden_layers": 36,
            "hidden_size": 2880,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "intermediate_size": 2880,
            "num_local_experts": 128,
            "experts_per_token": 4,
            "vocab_size": 201088,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
            "sliding_window": 128,
            "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": "mxfp4"},
        },
        116.8,
    ),
    "DeepSeek-V3": (
        {
            "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "deepseek_v3",
            "num_hidden_layers": 61,
            "hidden_size": 7168,
            "num_attention_heads": 128,
            "num_key_value_heads": 128,
            "intermediate_size": 18432,
            "moe_intermediate_size": 2048,
            "n_routed_experts": 256,
            "n_shared_experts": 1,
            "num_experts_per_tok": 8,
            "first_k_dense_replace": 3,
            "q_lora_rank": 1536,
            "kv_lora_rank": 512,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "vocab_size": 129280,
            "max_position_embeddings": 163840,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
        },
        671.0,
    ),
}
"""Catalogue name -> (config.json fields, published total parameters in billions)."""

ALIASES: dict[str, str] = {
    "llama-3.1-8b-instruct": "Llama-3.1-8B",
    "llama-3.1-70b-instruct": "Llama-3.1-70B",
    "llama-3.1-405b-instruct": "Llama-3.1-405B",
    "llama-3.3-70b-instruct": "Llama-3.3-70B",
    "qwen2.5-7b-instruct": "Qwen2.5-7B",
    "qwen2.5-72b-instruct": "Qwen2.5-72B",
    "mistral-7b-instruct-v0.3": "Mistral-7B",
    "mistral-7b-v0.3": "Mistral-7B",
    "mixtral-8x7b-instruct-v0.1": "Mixtral-8x7B",
    "mixtral-8x7b-v0.1": "Mixtral-8x7B",
    "deepseek-v3-0324": "DeepSeek-V3",
    "deepseek-r1": "DeepSeek-V3",
}
"""Common Hugging Face repository names (lower-case, without the organisation) -> catalogue name."""


SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "MixtralForCausalLM",
    "GptOssForCausalLM",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
)
"""The ``config.json`` ``architectures`` the profile reader (:func:`profile_from_config`) sizes correctly."""


class UnknownModelError(LookupError):
    """Neither a catalogue name nor a readable config.json."""


class UnsupportedArchitectureError(ValueError):
    """A config.json whose architecture the recommender cannot size."""


def check_architecture(cfg: dict[str, Any], name: str) -> str:
    """The supported architecture ``cfg`` declares (``architectures[0]``; a VLM's ``text_config`` too), or
    :class:`UnsupportedArchitectureError` naming it and listing the supported ones."""
    declared = [str(a) for a in cfg.get("architectures") or []]
    text_cfg = cfg.get("text_config")
    if isinstance(text_cfg, dict):
        declared += [str(a) for a in text_cfg.get("architectures") or []]
    for arch in declared:
        if arch in SUPPORTED_ARCHITECTURES:
            return arch
    shown = ", ".join(declared) or f"none declared (model_type {cfg.get('model_type', 'unknown')!r})"
    raise UnsupportedArchitectureError(
        f"{name}: architecture {shown} is not supported by the recommender; supported: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)} (set spec.model.architecture, or fix TP/PP explicitly)"
    )


def hub_profile(repo_id: str, cfg: dict[str, Any]) -> ModelProfile:
    """The profile of a Hub model from its ``config.json`` (``ValueError`` for an unsupported architecture
    or a config that lacks the sizing fields)."""
    check_architecture(cfg, repo_id)
    return profile_from_config(cfg, name=repo_id)


def hub_repo(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of ``hf://org/name[@rev]`` or a bare ``org/name[@rev]``, else ``None``."""
    text = name.strip()
    scheme, sep, rest = text.partition("://")
    if sep and scheme != "hf":
        return None
    body = rest if sep else text
    repo, _, rev = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        return None
    return repo, rev or None


def catalog_names() -> list[str]:
    """Catalogue names in display order."""
    return list(CATALOG_CONFIGS)


def catalog_profile(name: str) -> ModelProfile:
    """The profile of one catalogue entry (exact name)."""
    cfg, published = CATALOG_CONFIGS[name]
    return dataclasses.replace(profile_from_config(cfg, name=name), published_params_b=published)


def resolve_name(name: str) -> str | None:
    """The catalogue name for ``name`` (case-insensitive, organisation prefix and aliases allowed)."""
    key = name.strip().rsplit("/", 1)[-1].lower()
    for cat in CATALOG_CONFIGS:
        if cat.lower() == key or cat.lower() + "-instruct" == key:
            return cat
    return ALIASES.get(key)


def get_model(name_or_path: str | Path) -> ModelProfile:
    """A catalogue model by name, or a profile read from a ``config.json`` path / model directory."""
    text = str(name_or_path)
    cat = resolve_name(text)
    if cat is not None:
        return catalog_profile(cat)
    path = Path(text)
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        return load_profile(path)
    raise UnknownModelError(
        f"unknown model {text!r}: not a catalogue name ({', '.join(catalog_names())}), "
        "not a config.json path or model directory, and not a Hub repository (org/name)"
    )
