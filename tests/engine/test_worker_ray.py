"""Ray bootstrap on loopback with real Ray processes: the head waits for its worker, then emits the Ray argv.

The CPU build of vLLM refuses the Ray executor, so the head runs with ``--print-argv``: it does everything a
GPU head does (preflight, ``ray start --head``, wait for the group with a real Ray driver) and prints the
exact vLLM argv instead of launching it. Each pod advertises one unit of a custom resource, ``tidal_gpu``, in
place of a GPU (TIDAL_RAY_RESOURCE).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tests.support.engine import WorkerHandle, free_port, free_ports, start_worker, tiny_model_dir

__all__ = ["tiny_model_dir"]


def _ray_env(ray_port: int, *, timeout: float, role: str) -> dict[str, str]:
    # Distinct from each other and from the GCS port: Ray refuses two components on one port.
    ports = [p for p in free_ports(7) if p != ray_port][:6]
    start_args = [
        "--num-cpus=1",
        '--resources={"tidal_gpu": 1}',
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=100000000",
        f"--node-manager-port={ports[0]}",
        f"--object-manager-port={ports[1]}",
        f"--dashboard-agent-listen-port={ports[2]}",
        f"--metrics-export-port={ports[3]}",
        f"--runtime-env-agent-port={ports[4]}",
        f"--min-worker-port={ports[5]}",
        "--max-worker-port=0",
    ]
    return {
        "TIDAL_ROLE": role,
        "TIDAL_GROUP_SIZE": "2",
        "TIDAL_TP": "1",
        "TIDAL_PP": "2",
        "TIDAL_RAY_HEAD_ADDRESS": "127.0.0.1",
        "TIDAL_RAY_PORT": str(ray_port),
        "TIDAL_RAY_RESOURCE": "tidal_gpu",
        "TIDAL_RAY_START_ARGS": json.dumps(start_args),
        "TIDAL_RAY_JOIN_TIMEOUT_SECONDS": str(timeout),
        "TIDAL_ENGINE_STOP_TIMEOUT_SECONDS": "15",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def _wait_exit(handle: WorkerHandle, timeout: float) -> int:
    t0 = time.monotonic()
    while handle.proc.poll() is None:
        assert time.monotonic() - t0 < timeout, (
            f"process still running after {timeout} s:\n{handle.log_tail()}"
        )
        time.sleep(0.5)
    return int(handle.proc.returncode)


def _printed_argv(log: str) -> list[str]:
    for line in log.splitlines():
        if line.startswith('["'):
            argv = json.loads(line)
            assert isinstance(argv, list)
            return [str(a) for a in argv]
    raise AssertionError(f"no argv line in the head's output:\n{log}")


@pytest.mark.timeout(240)
def test_head_waits_for_worker_then_emits_ray_argv(tiny_model_dir: Path, tmp_path: Path) -> None:
    ray_port = free_port()
    head = start_worker(
        tiny_model_dir,
        tmp_path / "head.log",
        env=_ray_env(ray_port, timeout=150, role="ray-head"),
        argv=["--print-argv"],
    )
    worker: WorkerHandle | None = None
    try:
        # The head must be waiting (not done) while its worker has not joined yet.
        deadline = time.monotonic() + 90
        while "ray group: 1/2 nodes joined" not in head.log_text():
            assert head.proc.poll() is None, f"head exited early:\n{head.log_tail()}"
            assert time.monotonic() < deadline, f"head never reported its group:\n{head.log_tail()}"
            time.sleep(0.5)
        assert head.proc.poll() is None
        worker = start_worker(
            "", tmp_path / "worker.log", env=_ray_env(ray_port, timeout=60, role="ray-worker")
        )
        assert _wait_exit(head, 120) == 0, head.log_tail()
        log = head.log_text()
        assert "ray group complete: 2/2 nodes joined (TIDAL_GROUP_SIZE), tidal_gpu 2/2" in log
        argv = _printed_argv(log)
        assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        joined = " ".join(argv)
        assert "--distributed-executor-backend ray" in joined
        assert "--tensor-parallel-size 1" in joined
        assert "--pipeline-parallel-size 2" in joined
        assert f"--model {tiny_model_dir}" in joined
        assert worker.proc.poll() is None, f"ray worker must stay up:\n{worker.log_tail()}"
        assert worker.stop(timeout=40) == 0, worker.log_tail()
    finally:
        head.stop(timeout=30)
        if worker is not None:
            worker.stop(timeout=30)


@pytest.mark.timeout(120)
def test_missing_worker_times_out_with_clear_message(tiny_model_dir: Path, tmp_path: Path) -> None:
    head = start_worker(
        tiny_model_dir,
        tmp_path / "head.log",
        env=_ray_env(free_port(), timeout=8, role="ray-head"),
        argv=["--print-argv"],
    )
    try:
        t0 = time.monotonic()
        code = _wait_exit(head, 90)
        elapsed = time.monotonic() - t0
        log = head.log_text()
        assert code == 6, log
        assert (
            "timed out after 8 s (TIDAL_RAY_JOIN_TIMEOUT_SECONDS) waiting for the Ray group: "
            "1/2 nodes joined (TIDAL_GROUP_SIZE), tidal_gpu 1/2 (TIDAL_EXPECTED_GPUS)" in log
        ), log
        assert "vllm.entrypoints" not in "".join(line for line in log.splitlines() if line.startswith("["))
        assert elapsed < 80
    finally:
        head.stop(timeout=30)


@pytest.mark.timeout(240)
def test_head_launches_vllm_with_ray_executor_and_fails_cleanly_on_cpu(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The real serve path of a head: group joined, vLLM launched with the Ray executor against this head.

    The CPU build refuses the Ray executor, so vLLM exits non-zero; the worker must pass that on (never hang)
    and stop its Ray head. On GPUs the same argv serves.
    """
    ray_port = free_port()
    head = start_worker(
        tiny_model_dir, tmp_path / "head.log", env=_ray_env(ray_port, timeout=150, role="ray-head")
    )
    worker = start_worker("", tmp_path / "worker.log", env=_ray_env(ray_port, timeout=90, role="ray-worker"))
    try:
        code = _wait_exit(head, 180)
        log = head.log_text()
        assert code != 0, log
        assert "ray group complete: 2/2 nodes joined" in log
        launch = next(line for line in log.splitlines() if "starting vllm:" in line)
        assert "--distributed-executor-backend ray" in launch
        assert "--pipeline-parallel-size 2" in launch
        assert "current platform cpu does not support ray" in log, "vLLM itself must have refused Ray"
        assert "engine exited unexpectedly with status" in log
        assert "stopping ray head" in log, "the head's Ray processes must be stopped on the way out"
        assert worker.stop(timeout=40) == 0, worker.log_tail()
    finally:
        head.stop(timeout=30)
        worker.stop(timeout=30)
