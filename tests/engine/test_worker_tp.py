"""Tensor parallel 2 through the pod contract (TIDAL_TP=2) on the real CPU engine.

vLLM's CPU build runs TP=2 when its OpenMP threads are bound by hand (VLLM_CPU_OMP_THREADS_BIND="0|1", one
core per rank), which the pod environment carries like any other variable. The worker must launch it, become
ready, serve, and the engine must report the KV capacity of one TP rank: with the KV heads split over 2
ranks, 64 MiB holds twice the tokens (131,072 at 512 bytes per token per rank instead of 65,536 at 1,024).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from tests.support.engine import running_worker, tiny_model_dir

__all__ = ["tiny_model_dir"]


@pytest.mark.timeout(420)
def test_tensor_parallel_2_serves(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"TIDAL_TP": "2", "TIDAL_EXPECTED_GPUS": "2", "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    with running_worker(tiny_model_dir, env=env, log_path=tmp_path / "tp2.log", startup_timeout=360) as w:
        body = {"model": "tiny", "prompt": "Tensor parallel", "max_tokens": 8, "ignore_eos": True}
        req = urllib.request.Request(
            w.base_url + "/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            out = json.loads(resp.read())
        assert out["usage"]["completion_tokens"] == 8
        log = w.log_text()
        print(f"TP=2 worker ready after {w.startup_seconds:.1f} s")
    assert "--tensor-parallel-size 2" in log
    assert "CPU KV cache size: 131,072 tokens" in log, "KV heads split over 2 ranks double the tokens"
