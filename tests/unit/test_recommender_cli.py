"""``tidal recommend``: table, --json keys, exit codes, catalogue listings, --gpu-catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidal.cli import main

KEYS = {
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "weights_gib_per_gpu",
    "kv_cache_gib_per_gpu",
    "kv_cache_tokens",
    "feasible",
    "reasons",
    "predicted",
}


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--model", "Llama-3.1-8B", "--gpu", "H100-80GB", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) >= KEYS
    assert set(d["predicted"]) == {"ttft_seconds", "tpot_seconds", "output_tokens_per_second"}
    assert d["tensor_parallel_size"] == 1 and d["feasible"] is True


def test_table_shows_the_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--model", "Llama-3.1-70B", "--gpu", "H100-80GB"]) == 0
    out = capsys.readouterr().out
    for text in (
        "weights per GPU",
        "KV bytes per token per GPU",
        "KV cache capacity",
        "predicted TPOT",
        "reserved = 79.18 GiB x 0.90",
        "KV tokens = floor(",
        "TP=2 PP=1 rejected",
        "vLLM flags:",
    ):
        assert text in out


def test_infeasible_exits_1_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--model", "Llama-3.1-70B", "--tp", "1", "--pp", "1", "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["feasible"] is False and any("exceed" in r for r in d["reasons"])
    assert (
        main(
            [
                "recommend",
                "--model",
                "Llama-3.1-8B",
                "--max-model-len",
                "131072",
                "--tp",
                "1",
                "--pp",
                "1",
                "--gpu-memory-utilization",
                "0.25",
            ]
        )
        == 1
    )
    assert "INFEASIBLE" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope-1B"], "unknown model"),
        (["--model", "Llama-3.1-8B", "--gpu", "TPU"], "unknown GPU"),
        (["--model", "Llama-3.1-8B", "--quantization", "int3"], "unknown quantization"),
        ([], "--model is required"),
        (["--model", "Llama-3.1-8B", "--vllm-release", "v0.7"], "calibrated releases: v0.19"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", *args]) == 2
    assert message in capsys.readouterr().err


def test_listings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--list-models"]) == 0
    assert "DeepSeek-V3" in capsys.readouterr().out
    assert main(["recommend", "--list-gpus", "--json"]) == 0
    assert any(g["name"] == "MI300X" for g in json.loads(capsys.readouterr().out))


def test_gpu_catalog_file_and_config_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cat = tmp_path / "gpus.yaml"
    cat.write_text("- name: Tiny-GPU\n  memory_gib: 24\n  bandwidth_tbps: 1\n  bf16_tflops: 100\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "num_hidden_layers": 16,
                "hidden_size": 2048,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "intermediate_size": 8192,
                "vocab_size": 128256,
                "max_position_embeddings": 131072,
                "tie_word_embeddings": True,
                "torch_dtype": "bfloat16",
            }
        )
    )
    rc = main(["recommend", "--model", str(cfg), "--gpu", "tiny-gpu", "--gpu-catalog", str(cat), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["gpu"] == "Tiny-GPU" and d["tensor_parallel_size"] == 1
    (tmp_path / "bad.yaml").write_text("- memory_gib: 1\n")
    assert main(["recommend", "--model", "Llama-3.1-8B", "--gpu-catalog", str(tmp_path / "bad.yaml")]) == 2


def _json_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["recommend", "--model", "Llama-3.1-8B", *args, "--json"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_long_input_tokens_and_vllm_release_reach_the_recommender(capsys: pytest.CaptureFixture[str]) -> None:
    """--long-input-tokens sizes the chunk for the long prompts of the mix (the same answer as the library's
    RecommendInput.long_input_tokens); --vllm-release picks the overheads (named in the arithmetic)."""
    from tidal.recommender.catalog import catalog_profile
    from tidal.recommender.gpus import get_gpu
    from tidal.recommender.recommend import RecommendInput, recommend

    base = ["--input-tokens", "1000", "--slo-tpot", "0.1"]
    short = _json_of(base, capsys)
    long = _json_of([*base, "--long-input-tokens", "4000"], capsys)
    lib = recommend(
        RecommendInput(
            model=catalog_profile("Llama-3.1-8B"),
            gpu=get_gpu("H100-80GB"),
            input_tokens=1000,
            slo_tpot_seconds=0.1,
            long_input_tokens=4000,
        )
    )
    assert long["max_num_batched_tokens"] == lib.max_num_batched_tokens
    assert long["max_num_batched_tokens"] != short["max_num_batched_tokens"]
    pinned = _json_of([*base, "--vllm-release", "0.19.1"], capsys)
    assert pinned["kv_cache_tokens"] == short["kv_cache_tokens"]
    assert any("vLLM v0.19" in str(line) for line in pinned["arithmetic"])  # type: ignore[attr-defined]
