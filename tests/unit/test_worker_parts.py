"""Unit tests of the worker's pure parts: vLLM argv, model URIs, preflight, drain state, Ray group status."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tidal_worker.contract import WorkerContract
from tidal_worker.drain import DrainController, Phase
from tidal_worker.engine_args import build_vllm_argv
from tidal_worker.preflight import BUILTIN_QUANTIZATIONS, installed_quantizations, preflight_problems
from tidal_worker.ray_bootstrap import group_status, ray_address, ray_start_argv
from tidal_worker.sources import (
    HfSource,
    LocalSource,
    ModelSourceError,
    PvcSource,
    local_path_for,
    parse_model_uri,
    resolve_model,
)


def _c(**env: str) -> WorkerContract:
    return WorkerContract.from_env({"TIDAL_MODEL_URI": "/m", **env})


LLAMA8B: dict[str, Any] = {
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "max_position_embeddings": 131072,
}

# --- engine_args -------------------------------------------------------------------------------------------


def test_argv_minimal() -> None:
    argv = build_vllm_argv(_c(), "/m", python="py")
    assert argv == (
        "py", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m", "--served-model-name", "m",
        "--host", "0.0.0.0", "--port", "8000", "--middleware", "tidal_worker.middleware.TidalMiddleware",
        "--tensor-parallel-size", "1",
        "--pipeline-parallel-size", "1",
    )  # fmt: skip


def test_argv_all_options() -> None:
    c = _c(
        TIDAL_TP="4", TIDAL_PP="1", TIDAL_GPU_MEMORY_UTILIZATION="0.85", TIDAL_KV_CACHE_MEMORY_BYTES="1024",
        TIDAL_MAX_NUM_SEQS="64", TIDAL_MAX_MODEL_LEN="4096", TIDAL_MAX_NUM_BATCHED_TOKENS="2048",
        TIDAL_DTYPE="bfloat16", TIDAL_QUANTIZATION="awq", TIDAL_KV_CACHE_DTYPE="fp8",
        TIDAL_ENABLE_PREFIX_CACHING="false", TIDAL_ENFORCE_EAGER="true", TIDAL_TRUST_REMOTE_CODE="true",
        TIDAL_EXTRA_ARGS='["--seed", "7"]', TIDAL_SERVED_MODEL_NAME="x", TIDAL_PORT="9001",
    )  # fmt: skip
    argv = " ".join(build_vllm_argv(c, "/m"))
    for part in (
        "--served-model-name x", "--port 9001", "--tensor-parallel-size 4", "--gpu-memory-utilization 0.85",
        "--kv-cache-memory-bytes 1024", "--max-num-seqs 64", "--max-model-len 4096",
        "--max-num-batched-tokens 2048", "--dtype bfloat16", "--quantization awq", "--kv-cache-dtype fp8",
        "--no-enable-prefix-caching", "--enforce-eager", "--trust-remote-code",
    ):  # fmt: skip
        assert part in argv
    assert argv.endswith("--seed 7"), "extra args come last so they can override"
    assert "--distributed-executor-backend" not in argv


def test_argv_ray_head_and_cpu() -> None:
    head = _c(TIDAL_ROLE="ray-head", TIDAL_GROUP_SIZE="2", TIDAL_TP="8", TIDAL_PP="2")
    assert "--distributed-executor-backend ray" in " ".join(build_vllm_argv(head, "/m"))
    assert "--enforce-eager" in build_vllm_argv(_c(TIDAL_DEVICE="cpu"), "/m")
    assert "--enable-prefix-caching" in build_vllm_argv(_c(TIDAL_ENABLE_PREFIX_CACHING="1"), "/m")


# --- sources -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://meta-llama/Llama-3.1-8B", HfSource("meta-llama/Llama-3.1-8B")),
        ("hf://meta-llama/Llama-3.1-8B@v1.0", HfSource("meta-llama/Llama-3.1-8B", "v1.0")),
        ("hf://gpt2", HfSource("gpt2")),
        ("pvc://models/llama/8b", PvcSource("models", "llama/8b")),
        ("pvc://models", PvcSource("models", "")),
        ("/opt/model", LocalSource("/opt/model")),
        ("file:///opt/model", LocalSource("/opt/model")),
    ],
)
def test_parse_model_uri(uri: str, expected: object) -> None:
    assert parse_model_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bucket/model", "s3:// model URIs are not supported yet"),
        ("hf://", "bad hf:// URI"),
        ("hf://a/b/c", "bad hf:// URI"),
        ("hf://a/b@", "bad hf:// URI"),
        ("pvc://", "bad pvc:// URI"),
        ("pvc://claim/../etc", "'..' is not allowed"),
        ("relative/path", "unsupported model URI"),
        ("gs://bucket/m", "unsupported model URI"),
    ],
)
def test_parse_model_uri_errors(uri: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_model_uri(uri)


def test_pvc_path() -> None:
    assert local_path_for(PvcSource("models", "llama/8b"), "/models") == Path("/models/models/llama/8b")
    assert local_path_for(PvcSource("c", ""), "/mnt") == Path("/mnt/c")


def test_resolve_hf_calls_snapshot_download(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(snap)

    c = WorkerContract.from_env(
        {"TIDAL_MODEL_URI": "hf://org/m@rev1", "TIDAL_MODEL_CACHE_DIR": str(tmp_path), "HF_TOKEN": "tok"}
    )
    assert resolve_model(c, downloader=fake_download) == snap
    assert calls == [{"repo_id": "org/m", "revision": "rev1", "cache_dir": str(tmp_path), "token": "tok"}]


def test_resolve_hf_failure_is_clear(tmp_path: Path) -> None:
    def failing(**kwargs: Any) -> str:
        raise OSError("connection refused")

    c = WorkerContract.from_env({"TIDAL_MODEL_URI": "hf://org/m"})
    with pytest.raises(ModelSourceError, match=r"downloading hf://org/m failed: OSError: connection refused"):
        resolve_model(c, downloader=failing)


def test_resolve_pvc_and_missing(tmp_path: Path) -> None:
    model = tmp_path / "claim" / "llama"
    model.mkdir(parents=True)
    c = WorkerContract.from_env({"TIDAL_MODEL_URI": "pvc://claim/llama", "TIDAL_PVC_ROOT": str(tmp_path)})
    with pytest.raises(ModelSourceError, match=r"has no config\.json"):
        resolve_model(c)
    (model / "config.json").write_text("{}")
    assert resolve_model(c) == model
    gone = WorkerContract.from_env({"TIDAL_MODEL_URI": "pvc://other/x", "TIDAL_PVC_ROOT": str(tmp_path)})
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model(gone)


# --- preflight ---------------------------------------------------------------------------------------------


def test_preflight_ok() -> None:
    assert preflight_problems(_c(TIDAL_TP="8", TIDAL_EXPECTED_GPUS="8"), LLAMA8B, BUILTIN_QUANTIZATIONS) == []
    # TP above the KV heads replicates them: allowed when it is a multiple.
    assert preflight_problems(_c(TIDAL_TP="16"), LLAMA8B, BUILTIN_QUANTIZATIONS) == []


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"TIDAL_TP": "64"}, "TIDAL_TP=64 is larger than the model's 32 attention heads"),
        ({"TIDAL_TP": "6"}, "TIDAL_TP=6 does not divide the model's 32 attention heads"),
        ({"TIDAL_PP": "40"}, "TIDAL_PP=40 is larger than the model's 32 layers"),
        ({"TIDAL_QUANTIZATION": "nope"}, "TIDAL_QUANTIZATION='nope' is not a quantization method"),
        ({"TIDAL_TP": "4", "TIDAL_EXPECTED_GPUS": "8"}, "= 4 does not match TIDAL_EXPECTED_GPUS=8"),
        ({"TIDAL_MAX_MODEL_LEN": "200000"}, "exceeds the model's max_position_embeddings 131072"),
    ],
)
def test_preflight_problems(env: dict[str, str], problem: str) -> None:
    problems = preflight_problems(_c(**env), LLAMA8B, BUILTIN_QUANTIZATIONS)
    assert any(problem in p for p in problems), problems


def test_preflight_kv_heads_and_text_config() -> None:
    cfg = {"text_config": {"num_attention_heads": 12, "num_key_value_heads": 6, "num_hidden_layers": 4}}
    assert any("key/value heads" in p for p in preflight_problems(_c(TIDAL_TP="4"), cfg, []))
    assert preflight_problems(_c(TIDAL_TP="3"), cfg, []) == []


def test_installed_quantizations_read_without_import() -> None:
    known = installed_quantizations()
    assert {"awq", "gptq", "fp8"} <= known


# --- drain -------------------------------------------------------------------------------------------------


def test_drain_controller_phases() -> None:
    async def scenario() -> None:
        ctl = DrainController()
        assert ctl.phase is Phase.STARTING and not ctl.ready
        ctl.mark_ready()
        assert ctl.ready
        with ctl.track():
            assert ctl.in_flight == 1
            ctl.begin_drain()
            assert not ctl.ready and ctl.draining
            ctl.mark_ready()  # a late health check must not undo the drain
            assert ctl.phase is Phase.DRAINING
            assert not await ctl.wait_idle(0.05)
        assert await ctl.wait_idle(0.05)
        assert ctl.served_total == 1
        ctl.mark_stopped()
        assert ctl.phase is Phase.STOPPED

    asyncio.run(scenario())


def test_drain_waits_for_in_flight() -> None:
    async def scenario() -> float:
        ctl = DrainController()
        ctl.mark_ready()

        async def request() -> None:
            with ctl.track():
                await asyncio.sleep(0.2)

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0.01)
        ctl.begin_drain()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await ctl.wait_idle(5)
        await task
        return loop.time() - t0

    assert 0.1 < asyncio.run(scenario()) < 2


# --- ray ---------------------------------------------------------------------------------------------------


def test_group_status() -> None:
    nodes = [
        {"Alive": True, "Resources": {"GPU": 8.0, "CPU": 64.0}},
        {"Alive": False, "Resources": {"GPU": 8.0}},
    ]
    s = group_status(nodes, resource="GPU", want_nodes=2, want_resource=16)
    assert not s.complete
    assert s.reason == "1/2 nodes joined (TIDAL_GROUP_SIZE), GPU 8/16 (TIDAL_EXPECTED_GPUS)"
    nodes[1]["Alive"] = True
    assert group_status(nodes, resource="GPU", want_nodes=2, want_resource=16).complete
    assert not group_status(nodes, resource="GPU", want_nodes=3, want_resource=16).complete


def test_ray_start_argv() -> None:
    head = _c(
        TIDAL_ROLE="ray-head", TIDAL_GROUP_SIZE="2", TIDAL_RAY_PORT="6380", TIDAL_RAY_START_ARGS='["--x"]'
    )
    assert ray_start_argv(head) == (
        "ray", "start", "--head", "--port=6380", "--include-dashboard=false", "--block",
        "--disable-usage-stats", "--x",
    )  # fmt: skip
    worker = WorkerContract.from_env(
        {"TIDAL_ROLE": "ray-worker", "TIDAL_GROUP_SIZE": "2", "TIDAL_RAY_HEAD_ADDRESS": "h.svc"}
    )
    assert ray_start_argv(worker)[:3] == ("ray", "start", "--address=h.svc:6379")
    assert ray_address(worker) == "h.svc:6379"
    with pytest.raises(ValueError):
        ray_start_argv(_c())
