"""Model profiles: config.json parsing and parameter counts computed from the architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidal.recommender.catalog import (
    CATALOG_CONFIGS,
    UnknownModelError,
    catalog_names,
    catalog_profile,
    get_model,
)
from tidal.recommender.models import profile_from_config


@pytest.mark.parametrize("name", list(CATALOG_CONFIGS))
def test_parameter_count_matches_published_total(name: str) -> None:
    p = catalog_profile(name)
    assert p.published_params_b is not None
    computed_b = p.total_params / 1e9
    assert computed_b == pytest.approx(p.published_params_b, rel=0.02), computed_b


@pytest.mark.parametrize(
    ("name", "active_b"),
    [
        ("Mixtral-8x7B", 12.9),
        ("Qwen3-235B-A22B", 22.0),
        ("gpt-oss-20b", 3.6),
        ("gpt-oss-120b", 5.1),
        ("DeepSeek-V3", 37.0),
    ],
)
def test_moe_active_parameters(name: str, active_b: float) -> None:
    assert catalog_profile(name).active_params / 1e9 == pytest.approx(active_b, rel=0.06)


def test_llama_8b_breakdown_by_hand() -> None:
    p = catalog_profile("Llama-3.1-8B")
    b = p.parameter_breakdown()
    assert b.embedding == b.lm_head == 128256 * 4096
    per_layer_attn = 4096 * 4096 * 2 + 4096 * 1024 * 2
    assert b.attention == 32 * per_layer_attn
    assert b.dense_mlp == 32 * 3 * 4096 * 14336
    assert b.experts == 0


def test_config_json_keys_of_each_family() -> None:
    mla = profile_from_config(CATALOG_CONFIGS["DeepSeek-V3"][0])
    assert mla.is_mla and (mla.kv_lora_rank, mla.qk_rope_head_dim) == (512, 64)
    assert mla.num_experts == 256 and mla.first_k_dense_layers == 3 and mla.quantization == "fp8"
    mixtral = profile_from_config(CATALOG_CONFIGS["Mixtral-8x7B"][0])
    assert mixtral.num_experts == 8 and mixtral.expert_width == 14336 and mixtral.head_dim == 128
    oss = profile_from_config(CATALOG_CONFIGS["gpt-oss-20b"][0])
    assert oss.quantization == "mxfp4" and oss.num_experts_per_tok == 4 and oss.attention_bias
    qwen2 = profile_from_config(CATALOG_CONFIGS["Qwen2.5-7B"][0])
    assert qwen2.attention_bias and qwen2.num_kv_heads == 4


def test_get_model_by_name_alias_and_path(tmp_path: Path) -> None:
    assert get_model("meta-llama/Llama-3.1-8B-Instruct").name == "Llama-3.1-8B"
    assert get_model("llama-3.1-70b").name == "Llama-3.1-70B"
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 2,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "intermediate_size": 512,
        "vocab_size": 512,
        "torch_dtype": "float32",
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    p = get_model(tmp_path)
    assert (p.num_layers, p.num_kv_heads, p.head_dim, p.torch_dtype) == (2, 2, 64, "float32")
    assert p.parameter_breakdown().lm_head == 0
    assert get_model(tmp_path / "config.json").total_params == p.total_params


def test_unknown_model() -> None:
    with pytest.raises(UnknownModelError, match="not a catalogue name"):
        get_model("no-such-model-xyz")


def test_catalogue_covers_the_issue_list() -> None:
    names = set(catalog_names())
    for n in (
        "Llama-3.1-8B",
        "Llama-3.1-70B",
        "Llama-3.1-405B",
        "Llama-3.3-70B",
        "Qwen2.5-7B",
        "Qwen2.5-72B",
        "Qwen3-8B",
        "Qwen3-32B",
        "Qwen3-235B-A22B",
        "Mistral-7B",
        "Mixtral-8x7B",
        "gpt-oss-20b",
        "gpt-oss-120b",
        "DeepSeek-V3",
    ):
        assert n in names
