"""The memory model's KV-token arithmetic against the real vLLM engine (CPU build), issue 5 must-show 1.

For several tiny Llama architectures generated locally (layers, KV heads, head dim, KV-cache dtype and block
size all vary, plus a tensor-parallel-2 run where one KV head is replicated on both ranks), the engine is
started with an exact ``--kv-cache-memory-bytes`` and the "KV cache size: N tokens" it logs is compared with
:func:`tidal.recommender.memory.kv_tokens_for_kv_memory` for the profile read from the generated
``config.json``. The budget is deliberately not a multiple of the block size, so the flooring is checked too.
The server is killed as soon as the line is logged (the engine never has to become ready).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.tinymodel import make_tiny_model

from tidal.recommender.memory import kv_bytes_per_token, kv_tokens_for_kv_memory
from tidal.recommender.models import load_profile

# The engine tier needs vLLM (the CPU build the venv installs): without it this module fails at collection,
# loudly, instead of being skipped (it was an importorskip).
if importlib.util.find_spec("vllm") is None:
    raise ImportError(
        "vllm is not installed: the engine tier needs it (make install builds the venv with it)"
    )

KV_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")
START_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Arch:
    """One tiny architecture and how the engine is started for it."""

    id: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_cache_dtype: str = "auto"
    block_size: int | None = None
    tp: int = 1
    kv_bytes: int = 48 * 2**20 + 12_345


ARCHS = [
    Arch("l2-kv2-hd64-auto", 2, 256, 4, 2, 64),
    Arch("l3-kv4-hd64-auto-bs32", 3, 256, 4, 4, 64, block_size=32),
    Arch("l2-kv1-hd128-fp8", 2, 256, 2, 1, 128, kv_cache_dtype="fp8"),
    Arch("l5-kv2-hd128-fp8", 5, 512, 4, 2, 128, kv_cache_dtype="fp8", kv_bytes=40 * 2**20 + 777),
    Arch("l2-kv1-hd64-tp2-replicated", 2, 256, 4, 1, 64, tp=2),
]


def _engine_kv_tokens(model_dir: Path, arch: Arch, log_path: Path) -> int:
    """Start the real vLLM API server, wait for its KV-capacity log line, kill it, return N."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--dtype", "bfloat16", "--enforce-eager",
        "--max-model-len", "256", "--max-num-seqs", "8", "--max-num-batched-tokens", "256",
        "--kv-cache-memory-bytes", str(arch.kv_bytes), "--kv-cache-dtype", arch.kv_cache_dtype,
        "--tensor-parallel-size", str(arch.tp), "--host", "127.0.0.1", "--port", "0",
    ]  # fmt: skip
    if arch.block_size:
        cmd += ["--block-size", str(arch.block_size)]
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"})
    if arch.tp > 1:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            m = KV_LINE.search(text)
            if m:
                return int(m.group(1).replace(",", ""))
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode} before logging its KV size:\n{text[-4000:]}")
            time.sleep(0.5)
        pytest.fail(
            f"no KV size logged in {START_TIMEOUT_S}s:\n{log_path.read_text(errors='replace')[-4000:]}"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("arch", ARCHS, ids=[a.id for a in ARCHS])
def test_kv_tokens_match_vllm(arch: Arch, tmp_path: Path) -> None:
    model_dir = make_tiny_model(
        None,
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_heads=arch.num_heads,
        num_kv_heads=arch.num_kv_heads,
        head_dim=arch.head_dim,
    )
    profile = load_profile(model_dir / "config.json")
    assert (profile.num_layers, profile.num_kv_heads, profile.head_dim) == (
        arch.num_layers,
        arch.num_kv_heads,
        arch.head_dim,
    )
    block = arch.block_size or 128  # vLLM's CPU backend default block size
    predicted = kv_tokens_for_kv_memory(profile, arch.kv_bytes, arch.tp, arch.kv_cache_dtype, block)
    measured = _engine_kv_tokens(model_dir, arch, tmp_path / "vllm.log")
    per_token = kv_bytes_per_token(profile, arch.tp, 1, arch.kv_cache_dtype)
    print(
        f"{arch.id}: KV bytes/token/GPU {per_token}, budget {arch.kv_bytes:,} B, block {block}: "
        f"predicted {predicted:,} tokens, vLLM {measured:,}"
    )
    assert predicted > 0
    assert abs(predicted - measured) <= 0.01 * measured, (predicted, measured)
