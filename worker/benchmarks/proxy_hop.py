"""Benchmark: the absolute cost of the worker's proxy hop, without vLLM (any machine with aiohttp).

Run from the repository root:  python worker/benchmarks/proxy_hop.py [--requests 200]

overhead.py compares the worker with bare vLLM, which needs the vLLM build and leaves the hop's cost mixed
with the engine's own noise. This script runs the production front door (``server.serve`` with its readiness
watcher and drain controller) in front of a stub engine child process (a small aiohttp server answering
/health, /v1/models and /v1/completions at once), plus the raw TCP relay of tcp_relay.py in front of the same
stub, and measures the three paths with overhead.py's client and rotation. What the worker and the relay add
over the stub is then the hop itself: milliseconds per request on this machine, the figure to set against a
real engine's latency. Run it on an idle machine and on a loaded one to see how much of the hop is waiting for
a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import overhead  # noqa: E402
from tests.support.engine import free_port  # noqa: E402

from tidal_worker.process import ChildProcess  # noqa: E402
from tidal_worker.server import ServeConfig, serve  # noqa: E402

STUB_ENGINE = textwrap.dedent(
    """
    import json, sys
    from aiohttp import web

    async def health(request):
        return web.Response(text="")

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    async def completions(request):
        body = await request.json()
        text = "tide " * body["max_tokens"]
        return web.json_response(
            {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
             "usage": {"prompt_tokens": 4, "completion_tokens": body["max_tokens"]}}
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    try:
        import uvloop  # as vLLM's uvicorn
        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


def _worker_process(port: int, engine_port: int, stub: Path) -> None:
    """Child process body: the production front door, its engine the stub."""
    cfg = ServeConfig(
        port=port,
        engine_port=engine_port,
        model_name="tiny",
        drain_grace_seconds=5.0,
        engine_stop_timeout_seconds=5.0,
        startup_timeout_seconds=60.0,
        host="127.0.0.1",
    )

    async def prepare() -> ChildProcess:
        engine = ChildProcess("stub engine", [sys.executable, str(stub), str(engine_port)])
        await engine.start()
        return engine

    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(serve(cfg, prepare)))
    sys.exit(uvloop.run(serve(cfg, prepare)))


def main() -> int:
    """Start the stub engine behind the worker's front door and a relay; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--modes", default="close,keepalive")
    parser.add_argument("--third", choices=sorted(overhead.THIRD), default="tcp")
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "ENGINE_PORT", "STUB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _worker_process(int(args.serve[0]), int(args.serve[1]), Path(args.serve[2]))
        return 0
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "stub_engine.py"
        stub.write_text(STUB_ENGINE)
        port, engine_port = free_port(), free_port()
        worker = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), str(engine_port), str(stub)],
            start_new_session=True,
        )
        relay: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 60
            while not overhead._get_ok(f"http://127.0.0.1:{port}/ready"):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the worker in front of the stub engine did not become ready")
                time.sleep(0.1)
            relay, relay_port = overhead._start_relay(engine_port, args.third)
            ports = {"bare": engine_port, "relay": relay_port, "worker": port}
            for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                rows = overhead._latency(ports, args.requests, keepalive=mode == "keepalive")
                title = f"stub engine, connection mode: {mode} (ms added to the stub)"
                overhead._print_table(title, rows, "stub", overhead.THIRD[args.third][1], verdict=False)
            print(f"load average at end: {os.getloadavg()[0]:.1f}")
        finally:
            if relay is not None:
                relay.terminate()
                relay.wait()
            overhead._stop(worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
