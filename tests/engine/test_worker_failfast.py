"""Impossible settings end fast with a clear log line and a non-zero exit, never a hang.

Preflight catches what it can from the model's config.json in about a second (exit 3); what only vLLM knows
still ends the worker with vLLM's non-zero status (here: an argument vLLM rejects).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.support.engine import start_worker, tiny_model_dir

__all__ = ["tiny_model_dir"]


def _run_to_exit(
    tiny: Path, log: Path, env: dict[str, str], extra: tuple[str, ...] = ()
) -> tuple[int, float, str]:
    handle = start_worker(tiny, log, env=env, extra_args=extra, startup_timeout=120)
    t0 = time.monotonic()
    try:
        handle.proc.wait(timeout=90)
    finally:
        handle.stop(timeout=10)
    return int(handle.proc.returncode), time.monotonic() - t0, handle.log_text()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TIDAL_TP": "8"}, "preflight failed: TIDAL_TP=8 is larger than the model's 4 attention heads"),
        ({"TIDAL_TP": "3"}, "preflight failed: TIDAL_TP=3 does not divide the model's 4 attention heads"),
        (
            {"TIDAL_QUANTIZATION": "superquant"},
            "preflight failed: TIDAL_QUANTIZATION='superquant' is not a quantization method this vLLM knows",
        ),
        (
            {"TIDAL_TP": "2", "TIDAL_EXPECTED_GPUS": "4"},
            "TIDAL_TP x TIDAL_PP = 2 x 1 = 2 does not match TIDAL_EXPECTED_GPUS=4",
        ),
    ],
)
def test_preflight_fails_fast(
    tiny_model_dir: Path, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    code, seconds, log = _run_to_exit(tiny_model_dir, tmp_path / "w.log", env)
    assert code == 3, log
    assert message in log
    assert seconds < 15, f"took {seconds:.1f} s"
    assert "starting vllm" not in log


def test_bad_contract_fails_fast(tiny_model_dir: Path, tmp_path: Path) -> None:
    code, seconds, log = _run_to_exit(
        tiny_model_dir, tmp_path / "w.log", {"TIDAL_ROLE": "boss", "TIDAL_PP": "x"}
    )
    assert code == 2, log
    assert "invalid worker contract: TIDAL_ROLE='boss' is not one of single, ray-head, ray-worker" in log
    assert "TIDAL_PP='x' is not an integer" in log
    assert seconds < 15


def test_missing_model_fails_fast(tmp_path: Path) -> None:
    code, seconds, log = _run_to_exit(tmp_path / "nope", tmp_path / "w.log", {})
    assert code == 4, log
    assert f"model directory {tmp_path / 'nope'}" in log and "does not exist" in log
    assert seconds < 15


def test_engine_error_exits_nonzero(tiny_model_dir: Path, tmp_path: Path) -> None:
    """vLLM itself refuses an argument: the worker reports and passes its failure on, it does not hang."""
    code, seconds, log = _run_to_exit(tiny_model_dir, tmp_path / "w.log", {}, extra=("--no-such-vllm-flag",))
    assert code != 0, log
    assert "engine exited unexpectedly with status" in log
    assert seconds < 80
