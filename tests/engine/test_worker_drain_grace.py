"""Drain edge cases needing fault injection: a request outliving the grace period, an engine ignoring SIGTERM.

The real engine cannot be made to hang on purpose, so the worker's `serve()` runs here with a stand-in engine
child process (tests/support/engine.py ASGI_STUB_ENGINE: a raw ASGI app inside Tidal's middleware, served by
uvicorn like vLLM) that streams one chunk every 0.2 s for a minute and ignores SIGTERM. Everything else is the
production code path: the supervisor's readiness wait, the drain signal, the middleware's drain, the grace
expiry and the process-group kill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from tests.support.engine import ASGI_STUB_ENGINE, free_port

from tidal_worker.process import ChildProcess
from tidal_worker.server import ServeConfig, serve


@pytest.mark.timeout(60)
def test_grace_expiry_stops_engine_and_sigkills_stubborn_one(tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text(ASGI_STUB_ENGINE)
    port = free_port()
    cfg = ServeConfig(
        port=port,
        model_name="stub",
        drain_grace_seconds=2.0,
        engine_stop_timeout_seconds=2.0,
        startup_timeout_seconds=30.0,
    )
    engine = ChildProcess("stub engine", [sys.executable, str(script), str(port), "stubborn"])

    async def prepare() -> ChildProcess:
        await engine.start()
        return engine

    async def scenario() -> dict[str, object]:
        server = asyncio.ensure_future(serve(cfg, prepare))
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(base + "/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "stub engine never became ready"
                await asyncio.sleep(0.1)
            chunks = 0
            refused = 0
            async with session.post(base + "/v1/completions?n=300&every=0.2", json={}) as resp:
                t_sigterm = 0.0
                try:
                    async for line in resp.content:
                        if not line.startswith(b"data:"):
                            continue
                        chunks += 1
                        if chunks == 3:
                            t_sigterm = time.monotonic()
                            os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it (loop handler)
                        if chunks == 6:  # the drain has begun: a new request is refused
                            async with (
                                aiohttp.ClientSession() as fresh,
                                fresh.post(base + "/v1/completions", json={}) as other,
                            ):
                                refused = other.status
                except aiohttp.ClientError:
                    pass
            code = await asyncio.wait_for(server, timeout=20)
            elapsed = time.monotonic() - t_sigterm
        return {"code": code, "elapsed": elapsed, "chunks": chunks, "refused": refused}

    out = asyncio.run(scenario())
    assert out["code"] == 0
    # grace (2 s) + SIGTERM ignored for the stop timeout (2 s) + SIGKILL: the stream (an event every 0.2 s)
    # runs through the grace period and is cut only when the engine is killed.
    elapsed = float(str(out["elapsed"]))
    assert 3.5 < elapsed < 8, elapsed
    assert 3 + 8 < int(str(out["chunks"])) < 3 + 30, "the stream must run through the grace period"
    assert engine.returncode == -signal.SIGKILL, "an engine ignoring SIGTERM gets SIGKILL"
    assert out["refused"] == 503, "new requests are refused while the stream drains"


def _serve_with(argv: list[str], startup_timeout: float) -> tuple[int, float]:
    cfg = ServeConfig(
        port=free_port(),
        model_name="stub",
        drain_grace_seconds=2.0,
        engine_stop_timeout_seconds=2.0,
        startup_timeout_seconds=startup_timeout,
    )
    engine = ChildProcess("stub engine", argv)

    async def prepare() -> ChildProcess:
        await engine.start()
        return engine

    t0 = time.monotonic()
    code = asyncio.run(serve(cfg, prepare))
    return code, time.monotonic() - t0


@pytest.mark.timeout(60)
def test_engine_never_ready_is_a_startup_timeout() -> None:
    code, seconds = _serve_with([sys.executable, "-c", "import time; time.sleep(60)"], startup_timeout=1.0)
    assert code == 7
    assert seconds < 8, seconds


@pytest.mark.timeout(60)
def test_engine_exit_before_ready_passes_its_status_on() -> None:
    code, seconds = _serve_with([sys.executable, "-c", "import sys; sys.exit(9)"], startup_timeout=30.0)
    assert code == 9
    assert seconds < 8, seconds
