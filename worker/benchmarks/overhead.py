"""Benchmark: the Tidal worker (vLLM + Tidal's ASGI middleware, under the supervisor) against bare vLLM.

Run from the repository root:  .venv/bin/python worker/benchmarks/overhead.py [--rounds 3] [--requests 200]

The worker path is now vLLM's own server on the public port with ``--middleware
tidal_worker.middleware.TidalMiddleware`` (probes, in-flight count, drain), started and supervised by
``python -m tidal_worker``: no proxy hop. Bare vLLM is ``python -m vllm.entrypoints.openai.api_server`` with
the very argv the worker builds (engine_args.build_vllm_argv) minus ``--middleware``, and the environment the
worker gives its child.

- Time to ready: each round starts both, one after the other, alternating which goes first. One uncounted
  worker start comes first (``--warmup``): the very first start of a run reads torch and vLLM from a cold
  page cache and would penalise whichever kind goes first. Ready = the bare server lists the model on
  /v1/models, or the worker's /ready answers 200; both polled every 0.1 s from outside.
- Steady-state latency, every round, on whichever server is up: ONE engine at a time (the vLLM CPU engine
  core and its worker process keep the CPUs busy even between requests, so two engines side by side on 2 cores
  measure each other: load average 13-15 with nothing else running). Median/p90, pooled over the rounds
  (which alternate the order), of sequential completions (1 and 16 tokens, ignore_eos) and of bursts of 8
  concurrent requests. Same client (the standard library's http.client) for both, in two connection modes:
  ``close`` (a new TCP connection per request, as urllib does) and ``keepalive`` (one persistent connection
  per client thread, as a gateway or load balancer holds them).

First, without sockets or engine, it times what the middleware adds to one request in-process (an ASGI app
answering at once, called bare and inside the middleware, best of 5): the figure the machine's noise cannot
blur. Then it prints, per mode, bare / worker, the worker/bare ratio and the milliseconds the worker adds;
the target is an overhead of at most 5 %. A script, not a test: timings on shared machines are noisy (the
load average is printed), so compare figures measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
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
from tidal_worker.middleware import (  # noqa: E402
    DRAIN_SIGNAL,
    Message,
    Receive,
    Scope,
    Send,
    TidalMiddleware,
)


def _get_ok(url: str, predicate: str | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = resp.read().decode()
            return resp.status == 200 and (predicate is None or predicate in body)
    except (urllib.error.URLError, OSError):
        return False


BODIES = {
    tokens: json.dumps(
        {"model": "tiny", "prompt": "The tide comes in", "max_tokens": tokens, "ignore_eos": True}
    ).encode()
    for tokens in (1, 16)
}
_local = threading.local()


def _post(port: int, tokens: int, keepalive: bool) -> float:
    """One completion of `tokens` tokens through `port`; its latency in seconds."""
    headers = {"Content-Type": "application/json"}
    if not keepalive:
        headers["Connection"] = "close"
    conns: dict[int, http.client.HTTPConnection] = _local.__dict__.setdefault("conns", {})
    for attempt in (0, 1):
        conn = conns.get(port) if keepalive else None
        fresh = conn is None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/completions", body=BODIES[tokens], headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (http.client.RemoteDisconnected, ConnectionError):
            conn.close()
            conns.pop(port, None)
            if fresh or attempt:  # a kept-alive connection the server had just closed: retry once
                raise
            continue
        elapsed = time.perf_counter() - t0
        if keepalive:
            conns[port] = conn
        else:
            conn.close()
        out = json.loads(raw)
        assert resp.status == 200 and out["usage"]["completion_tokens"] == tokens, raw[:200]
        return elapsed
    raise AssertionError("unreachable")


def _start(kind: str, log_dir: Path) -> tuple[subprocess.Popen[bytes], float, int]:
    """Start `kind` (bare|worker) and wait until ready; return the process, seconds to ready and its port."""
    model = make_tiny_model()
    port = free_port()
    env = worker_env(model, port=port)
    base = f"http://127.0.0.1:{port}"
    if kind == "bare":
        contract = WorkerContract.from_env({k: v for k, v in env.items() if k.startswith("TIDAL_")})
        argv = list(build_vllm_argv(contract, str(model), python=sys.executable))
        i = argv.index("--middleware")
        del argv[i : i + 2]
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
    return proc, time.monotonic() - t0, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(2)  # let the engine's processes go before the next start


PATHS = ("bare", "worker")
Row = tuple[str, dict[str, float]]
Samples = dict[str, list[float]]
"""Milliseconds per request (or per burst), by metric name."""


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.9 * (len(ordered) - 1))]


def _samples(port: int, requests: int, keepalive: bool) -> Samples:
    """Latency of one running server: sequential 1- and 16-token completions, then bursts of 8."""

    def call(tokens: int) -> float:
        return _post(port, tokens, keepalive)

    for _ in range(5):
        call(16)
    out: Samples = {f"{tokens:2d} tok": [1000 * call(tokens) for _ in range(requests)] for tokens in (1, 16)}
    bursts: list[float] = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(max(requests // 4, 5)):
            t0 = time.perf_counter()
            list(pool.map(call, [16] * 8))
            bursts.append(1000 * (time.perf_counter() - t0))
    out["burst 8x16"] = bursts
    return out


def _rows(samples: dict[str, Samples]) -> list[Row]:
    """p50/p90 rows (metric, {path: ms}) over the samples pooled across rounds."""
    rows: list[Row] = []
    for metric in samples["bare"]:
        rows.append((f"p50 {metric} (ms)", {p: statistics.median(samples[p][metric]) for p in PATHS}))
        rows.append((f"p90 {metric} (ms)", {p: _p90(samples[p][metric]) for p in PATHS}))
    return rows


def _print_table(title: str, rows: list[Row]) -> float:
    """Print one table; return the worst worker/bare ratio over time to ready, the p50s and the burst p50."""
    print(f"\n{title}")
    print(f"{'metric':22s} {'bare vLLM':>10s} {'worker':>10s} {'ratio':>7s} {'worker +':>9s}")
    worst = 0.0
    for name, v in rows:
        ratio = v["worker"] / v["bare"]
        if not name.startswith("p90"):
            worst = max(worst, ratio)
        print(
            f"{name:22s} {v['bare']:10.2f} {v['worker']:10.2f} {ratio:7.3f} {v['worker'] - v['bare']:+9.2f}"
        )
    within = "within" if worst <= 1.05 else "ABOVE"
    print(f"worst overhead (ready, p50s, burst p50): {100 * (worst - 1):+.1f} % -> {within} the 5 % target")
    return worst


async def _middleware_cost(calls: int, repeats: int = 5) -> tuple[float, float]:
    """Microseconds per request of a bare ASGI app and of it inside TidalMiddleware (best of `repeats`).

    The app answers at once (start + body), so the difference is what the middleware adds to every API
    request: the phase check, the in-flight count, one extra await. No sockets, no engine: immune to the noise
    that dominates the end-to-end figures on a shared machine.
    """
    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"{}"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start)
        await send(body)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    wrapped = TidalMiddleware(app, register_metrics=False)
    scope: Scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": []}
    await wrapped({"type": "lifespan"}, receive, send)  # first event: installs the drain signal handler
    asyncio.get_running_loop().remove_signal_handler(DRAIN_SIGNAL)
    best = {"bare": float("inf"), "middleware": float("inf")}
    for _ in range(repeats):
        for kind, target in (("bare", app), ("middleware", wrapped)):
            t0 = time.perf_counter()
            for _ in range(calls):
                await target(scope, receive, send)
            best[kind] = min(best[kind], (time.perf_counter() - t0) / calls * 1e6)
    return best["bare"], best["middleware"]


def main() -> int:
    """Run the comparison and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted worker starts before the rounds")
    parser.add_argument("--modes", default="close,keepalive", help="connection modes: close, keepalive")
    parser.add_argument("--calls", type=int, default=100_000, help="calls per in-process measurement")
    parser.add_argument("--micro-only", action="store_true", help="only the in-process middleware cost")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/tidal-bench"))
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"close", "keepalive"}:
        parser.error(f"unknown mode in --modes {args.modes!r}")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    bare_us, mw_us = asyncio.run(_middleware_cost(args.calls))
    print(
        f"in-process cost per request (best of 5 x {args.calls} calls): bare ASGI app {bare_us:.2f} us, "
        f"inside TidalMiddleware {mw_us:.2f} us: the middleware adds {mw_us - bare_us:.2f} us",
        flush=True,
    )
    if args.micro_only:
        return 0
    for _ in range(args.warmup):
        proc, seconds, _ = _start("worker", args.log_dir)
        print(f"warm-up (not counted): worker ready after {seconds:.2f} s", flush=True)
        _stop(proc)
    ready: dict[str, list[float]] = {"bare": [], "worker": []}
    pooled: dict[str, dict[str, Samples]] = {m: {p: {} for p in PATHS} for m in modes}
    for r in range(args.rounds):
        for kind in ("bare", "worker") if r % 2 == 0 else ("worker", "bare"):
            proc, seconds, port = _start(kind, args.log_dir)
            try:
                ready[kind].append(seconds)
                print(f"round {r + 1}: {kind} ready after {seconds:.2f} s", flush=True)
                for mode in modes:
                    got = _samples(port, args.requests, keepalive=mode == "keepalive")
                    for metric, values in got.items():
                        pooled[mode][kind].setdefault(metric, []).extend(values)
                load = os.getloadavg()[0]
                print(f"round {r + 1}: {kind} latency done, load average {load:.1f}", flush=True)
            finally:
                _stop(proc)
    tables = {mode: _rows(pooled[mode]) for mode in modes}
    ready_row: Row = (
        "time to ready (s)",
        {"bare": statistics.median(ready["bare"]), "worker": statistics.median(ready["worker"])},
    )
    for mode, rows in tables.items():
        _print_table(f"connection mode: {mode} (worker +: ms added vs bare vLLM)", [ready_row, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
