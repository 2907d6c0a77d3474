"""Models outside the catalogue, fetched from a Hugging Face Hub: ``tidal recommend --model org/name`` and
the operator's cache, against an in-process Hub on a loopback port (tests/support/hubserver.py), with
``HF_ENDPOINT`` pointing at it. Sockets, so not in the unit tier; no network beyond 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.hubserver import FakeHub, fake_hub

from tidal.cli import main
from tidal.shell.hub import HubFetchError, HubModels, HubSettings, fetch_model_files

LLAMA_32_3B = {  # meta-llama/Llama-3.2-3B-Instruct config.json (the fields that matter, as published)
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "head_dim": 128,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "num_attention_heads": 24,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
INDEX = {"metadata": {"total_size": 6425499648}, "weight_map": {"lm_head.weight": "model-00001.safetensors"}}
REPO = "meta-llama/Llama-3.2-3B-Instruct"
TOKEN = "hf_test_token_123"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    with fake_hub() as h:
        for var in ("HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        yield h


def test_recommend_a_model_outside_the_catalogue(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    hub.add(REPO, {"config.json": LLAMA_32_3B, "model.safetensors.index.json": INDEX})
    assert main(["recommend", "--model", REPO, "--gpu", "L4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] is True and out["tensor_parallel_size"] == 1
    assert 5.5 < out["weights_gib_per_gpu"] < 6.5  # 3.21 B parameters in bfloat16
    paths = {p for _, p, _ in hub.requests}
    assert f"/{REPO}/resolve/main/config.json" in paths
    assert f"/{REPO}/resolve/main/model.safetensors.index.json" in paths


def test_files_index_and_revision(hub: FakeHub) -> None:
    hub.add(REPO, {"config.json": LLAMA_32_3B, "model.safetensors.index.json": INDEX})
    files = fetch_model_files(REPO, "v1.0", HubSettings.from_env())
    assert files.checkpoint_bytes == 6425499648 and files.revision == "v1.0"
    assert abs(files.profile().total_params / 3.21e9 - 1) < 0.01
    assert all("/resolve/v1.0/" in p for _, p, _ in hub.requests)
    hub.add("org/single-file", {"config.json": LLAMA_32_3B})  # no index: a 404 EntryNotFound is fine
    assert fetch_model_files("org/single-file", None, HubSettings.from_env()).safetensors_index is None


def test_unsupported_architecture_is_named(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    hub.add("org/mamba", {"config.json": {**LLAMA_32_3B, "architectures": ["MambaForCausalLM"]}})
    assert main(["recommend", "--model", "hf://org/mamba", "--json"]) == 2
    err = capsys.readouterr().err
    assert "MambaForCausalLM" in err and "not supported" in err
    assert "LlamaForCausalLM" in err and "DeepseekV3ForCausalLM" in err


def test_private_repo_needs_the_token(
    hub: FakeHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub.add("org/private", {"config.json": LLAMA_32_3B}, token=TOKEN)
    assert main(["recommend", "--model", "org/private", "--json"]) == 2
    err = capsys.readouterr().err
    assert "401" in err and "without a token" in err
    assert all(auth is None for _, _, auth in hub.requests)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["recommend", "--model", "org/private", "--json"]) == 0
    assert hub.requests[-1][2] == f"Bearer {TOKEN}"
    # The chart mounts the token as a file (HF_TOKEN_PATH): the operator needs no Secret read access.
    monkeypatch.delenv("HF_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    assert HubSettings.from_env().token == TOKEN
    files = fetch_model_files("org/private", "main", HubSettings.from_env())
    assert files.config["hidden_size"] == 3072


def test_unknown_repo_and_unreachable_hub(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HubFetchError, match="not found"):
        fetch_model_files("org/missing", None, HubSettings.from_env())
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(HubFetchError, match=r"127\.0\.0\.1:9/org/never-cached: the Hub is unreachable"):
        fetch_model_files("org/never-cached", None, HubSettings.from_env())


def test_operator_cache_keeps_success_and_retries_failure(hub: FakeHub) -> None:
    cache = HubModels(HubSettings.from_env(), retry_after_s=60.0)
    failed = cache.fetch(REPO, None, now=0.0)
    assert failed.profile is None and failed.error is not None and "not found" in failed.error
    assert cache.cached(REPO, None, now=30.0) is failed  # within the retry interval
    assert cache.cached(REPO, None, now=61.0) is None  # due for a retry
    hub.add(REPO, {"config.json": LLAMA_32_3B})
    ok = cache.fetch(REPO, None, now=61.0)
    assert ok.profile is not None and ok.profile.num_layers == 28
    before = len(hub.requests)
    assert cache.cached(REPO, None, now=10_000.0) is ok
    assert len(hub.requests) == before


def test_operator_fetches_before_planning(hub: FakeHub) -> None:
    """The reconcile's hook (tidal.shell.hub.fetch_hub_model) fills the planner's table: a 70B-shaped
    model outside the catalogue is sized (TP > 1) instead of running at TP = PP = 1; an unsupported one
    gets ModelResolved=False/UnsupportedArchitecture."""
    import asyncio

    from tests.unit.test_model_resolved import BIG, deployment

    from tidal.api import ModelSource
    from tidal.builders import hubmodels
    from tidal.plan.model import model_condition
    from tidal.plan.target import make_target
    from tidal.shell.hub import fetch_hub_model

    hubmodels.forget_all()
    try:
        hub.add("acme/house-llama-70b", {"config.json": BIG})
        hub.add("acme/mamba", {"config.json": {**BIG, "architectures": ["MambaForCausalLM"]}})
        cache = HubModels(retry_after_s=60.0)
        for uri in ("hf://acme/house-llama-70b", "hf://acme/mamba@v2"):
            asyncio.run(fetch_hub_model(ModelSource(uri=uri), cache))
        big = deployment("hf://acme/house-llama-70b")
        assert make_target(big, 1).inputs.engine.world_size >= 2
        assert model_condition(big).status is True
        cond = model_condition(deployment("hf://acme/mamba@v2"))
        assert cond.reason == "UnsupportedArchitecture" and "MambaForCausalLM" in cond.message
        asked = len(hub.requests)
        asyncio.run(fetch_hub_model(ModelSource(uri="hf://meta-llama/Llama-3.1-8B-Instruct"), cache))
        assert len(hub.requests) == asked  # a catalogue model is never fetched
        hubmodels.forget_all()  # the planner's table is bounded; the cache answers again, no request
        asyncio.run(fetch_hub_model(ModelSource(uri="hf://acme/house-llama-70b"), cache))
        assert len(hub.requests) == asked and model_condition(big).status is True
    finally:
        hubmodels.forget_all()
