"""Benchmark: the Tidal worker (drain-aware proxy, supervisor) against bare vLLM, same run, same model.

Run from the repository root:  .venv/bin/python worker/benchmarks/overhead.py [--rounds 2] [--requests 40]

- Time to ready: each round starts a bare ``python -m vllm.entrypoints.openai.api_server`` with exactly
  the argv the worker would build (engine_args.build_vllm_argv), and the worker (``python -m tidal_worker``)
  with the same contract, one at a time (2 cores), alternating which goes first. Ready = the bare server lists
  the model on /v1/models, or the worker's /ready answers 200; both polled every 0.1 s from outside.
- Steady-state latency: on one running worker, requests alternate between the worker's public port (proxy) and
  the vLLM child's loopback port (bare vLLM, the very same engine), so machine noise hits both equally:
  median/p90 of sequential completions (1 and 16 tokens, ignore_eos) and of bursts of 8 concurrent requests.

It prints the worker/bare ratios; the target is an overhead of at most 5 %. A script, not a test: timings on
shared machines are noisy, so compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "worker"))

from tests.support.engine import free_port, worker_env  # noqa: E402
from tests.support.tinymodel import make_tiny_model  # noqa: E402

from tidal_worker.__main__ import engine_env  # noqa: E402
from tidal_worker.contract import WorkerContract  # noqa: E402
from tidal_worker.engine_args import build_vllm_argv  # noqa: E402


def _get_ok(url: str, predicate: str | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = resp.read().decode()
            return resp.status == 200 and (predicate is None or predicate in body)
    except (urllib.error.URLError, OSError):
        return False


def _complete(base: str, tokens: int) -> float:
    body = json.dumps(
        {"model": "tiny", "prompt": "The tide comes in", "max_tokens": tokens, "ignore_eos": True}
    )
    req = urllib.request.Request(
        base + "/v1/completions", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())
    assert out["usage"]["completion_tokens"] == tokens
    return time.perf_counter() - t0


def _start(kind: str, log_dir: Path) -> tuple[subprocess.Popen[bytes], float, int, int]:
    """Start `kind` (bare|worker) and wait until ready; return the process, seconds to ready and the ports."""
    model = make_tiny_model()
    port, engine_port = free_port(), free_port()
    env = worker_env(model, port=port, engine_port=engine_port)
    base = f"http://127.0.0.1:{port}"
    if kind == "bare":
        contract = WorkerContract.from_env({k: v for k, v in env.items() if k.startswith("TIDAL_")})
        argv = list(build_vllm_argv(contract, str(model), python=sys.executable))
        argv[argv.index("--port") + 1] = str(port)
        env = engine_env(contract, env)  # the environment the worker gives its vLLM child
        ready_url, predicate = f"{base}/v1/models", '"tiny"'
    else:
        argv = [sys.executable, "-m", "tidal_worker"]
        ready_url, predicate = f"{base}/ready", None
    log_path = log_dir / f"{kind}-{time.time_ns()}.log"
    with log_path.open("wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while not _get_ok(ready_url, predicate):
        if proc.poll() is not None or time.monotonic() - t0 > 400:
            _stop(proc)
            raise RuntimeError(f"{kind} did not become ready; see {log_path}")
        time.sleep(0.1)
    return proc, time.monotonic() - t0, port, engine_port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(2)  # let the engine's processes go before the next start


def _latency(proxy: str, bare: str, requests: int) -> list[tuple[str, float, float]]:
    """Interleaved latency on one engine: (metric, bare ms, worker ms)."""
    for _ in range(5):
        _complete(bare, 16)
        _complete(proxy, 16)
    rows: list[tuple[str, float, float]] = []
    for tokens in (1, 16):
        b: list[float] = []
        w: list[float] = []
        for _ in range(requests):
            b.append(_complete(bare, tokens))
            w.append(_complete(proxy, tokens))
        b.sort()
        w.sort()
        p90 = int(0.9 * (requests - 1))
        rows.append((f"p50 {tokens:2d} tok (ms)", 1000 * statistics.median(b), 1000 * statistics.median(w)))
        rows.append((f"p90 {tokens:2d} tok (ms)", 1000 * b[p90], 1000 * w[p90]))
    bb: list[float] = []
    wb: list[float] = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(max(requests // 4, 5)):
            for base, out in ((bare, bb), (proxy, wb)):
                t0 = time.perf_counter()
                list(pool.map(_complete, [base] * 8, [16] * 8))
                out.append(time.perf_counter() - t0)
    rows.append(("burst 8x16 tok (ms)", 1000 * statistics.median(bb), 1000 * statistics.median(wb)))
    return rows


def main() -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/tidal-bench"))
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    ready: dict[str, list[float]] = {"bare": [], "worker": []}
    rows: list[tuple[str, float, float]] = []
    for r in range(args.rounds):
        order = ("bare", "worker") if r % 2 == 0 else ("worker", "bare")
        for kind in order:
            proc, seconds, port, engine_port = _start(kind, args.log_dir)
            ready[kind].append(seconds)
            print(f"round {r + 1}: {kind} ready after {seconds:.2f} s", flush=True)
            try:
                if kind == "worker" and r == args.rounds - 1:
                    rows = _latency(
                        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{engine_port}", args.requests
                    )
            finally:
                _stop(proc)
    rows.insert(
        0, ("time to ready (s)", statistics.median(ready["bare"]), statistics.median(ready["worker"]))
    )
    print(f"\n{'metric':22s} {'bare vLLM':>10s} {'worker':>10s} {'ratio':>7s}")
    worst = 0.0
    for name, bare, work in rows:
        ratio = work / bare
        if not name.startswith("p90"):
            worst = max(worst, ratio)
        print(f"{name:22s} {bare:10.2f} {work:10.2f} {ratio:7.3f}")
    verdict = "within" if worst <= 1.05 else "ABOVE"
    print(f"worst overhead (ready, p50, burst): {100 * (worst - 1):+.1f} % -> {verdict} the 5 % target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
