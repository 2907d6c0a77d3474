"""Unit tests of the worker's ASGI middleware (tidal_worker.middleware) around an in-memory ASGI app.

The inner app stands in for vLLM's FastAPI app: ``/health`` with a status the test sets, ``/metrics``, and an
API route that streams chunks when the test says so. ASGI messages are passed directly: no server, no
sockets. What is pinned: probe answers, the in-flight count (ends with the last chunk or a client
disconnect), the drain (not ready, 503 with the documented body and headers, in-flight requests finish, then
SIGTERM to the own process), the drain signal handler, and the ``tidal_worker_*`` metrics.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tidal_worker import middleware as mw
from tidal_worker.middleware import DRAIN_SIGNAL, DRAINING_BODY, TidalMiddleware, WorkerCollector

Message = dict[str, Any]


class FakeEngine:
    """A minimal stand-in for vLLM's app: /health, /metrics, and a stream the test releases chunk by chunk."""

    def __init__(self) -> None:
        self.health_status = 200
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.seen_paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        self.seen_paths.append(path)
        if path == "/health":
            await send({"type": "http.response.start", "status": self.health_status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/metrics":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"vllm:num_requests_running 0\n"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            chunk_task = asyncio.ensure_future(self.chunks.get())
            gone_task = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({chunk_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
            if gone_task in done and gone_task.result()["type"] == "http.disconnect":
                chunk_task.cancel()
                return  # as Starlette's StreamingResponse does when the client goes away
            gone_task.cancel()
            chunk = chunk_task.result()
            await send({"type": "http.response.body", "body": chunk or b"", "more_body": chunk is not None})
            if chunk is None:
                return


def _scope(path: str, method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "path": path, "raw_path": path.encode(), "method": method, "query_string": b"",
            "headers": []}  # fmt: skip


class Client:
    """Runs one request through the middleware; collects what it sends back."""

    def __init__(self, app: Callable[..., Awaitable[None]], path: str, method: str = "GET") -> None:
        self.messages: list[Message] = []
        self.disconnect = asyncio.Event()
        self.task = asyncio.ensure_future(app(_scope(path, method), self._receive, self._send))

    async def _receive(self) -> Message:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def json(self) -> Any:
        return json.loads(self.body)


async def _request(app: Callable[..., Awaitable[None]], path: str, method: str = "GET") -> Client:
    client = Client(app, path, method)
    await asyncio.wait_for(client.task, timeout=5)
    return client


def test_probes_and_health_delegation() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        app = TidalMiddleware(engine, register_metrics=False)
        live = await _request(app, "/live")
        assert (live.status, live.json()) == (200, {"live": True, "phase": "ready"})
        ready = await _request(app, "/ready")
        assert ready.status == 200 and ready.json()["ready"] is True
        assert engine.seen_paths == ["/health"], "/ready asks vLLM's /health"
        engine.health_status = 503
        ready = await _request(app, "/ready")
        assert ready.status == 503 and ready.json()["ready"] is False
        assert not app.ctl.ready, "the ready gauge follows the engine's health"
        assert (await _request(app, "/health")).status == 503, "/health is vLLM's own while serving"
        engine.health_status = 200
        assert (await _request(app, "/ready")).status == 200
        assert (await _request(app, "/metrics")).body == b"vllm:num_requests_running 0\n"
        assert app.ctl.in_flight == 0 and app.ctl.served_total == 0, "probes are not API requests"

    asyncio.run(scenario())


def test_in_flight_ends_with_last_chunk_or_disconnect() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        app = TidalMiddleware(engine, register_metrics=False)
        first = Client(app, "/v1/completions", "POST")
        second = Client(app, "/v1/completions", "POST")
        await asyncio.sleep(0.01)
        assert app.ctl.in_flight == 2
        await engine.chunks.put(b"data: 1\n\n")
        await asyncio.sleep(0.01)
        assert app.ctl.in_flight == 2, "a stream is in flight until its last chunk"
        second.disconnect.set()
        await asyncio.wait_for(second.task, 5)
        assert app.ctl.in_flight == 1, "a client that went away ends its request"
        await engine.chunks.put(None)
        await asyncio.wait_for(first.task, 5)
        assert app.ctl.in_flight == 0 and app.ctl.served_total == 2
        assert first.body == b"data: 1\n\n"

    asyncio.run(scenario())


def test_drain_refuses_new_finishes_in_flight_then_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(mw, "_stop_own_process", lambda: kills.append((0, signal.SIGTERM)))

    async def scenario() -> None:
        engine = FakeEngine()
        app = TidalMiddleware(engine, register_metrics=False)
        stream = Client(app, "/v1/completions", "POST")
        await asyncio.sleep(0.01)
        app.begin_drain()
        ready = await _request(app, "/ready")
        assert ready.status == 503 and ready.json() == {"ready": False, "phase": "draining", "in_flight": 1}
        assert (await _request(app, "/health")).status == 503
        assert (await _request(app, "/live")).status == 200
        refused = await _request(app, "/v1/chat/completions", "POST")
        assert refused.status == 503 and refused.json() == DRAINING_BODY
        assert refused.headers[b"retry-after"] == b"1" and refused.headers[b"connection"] == b"close"
        assert int(refused.headers[b"content-length"]) == len(refused.body)
        assert app.ctl.rejected_total == 1
        assert (await _request(app, "/metrics")).status == 200, "metrics are served during the drain"
        await asyncio.sleep(0.05)
        assert not kills, "the server must not stop while a request is in flight"
        await engine.chunks.put(b"data: last\n\n")
        await engine.chunks.put(None)
        await asyncio.wait_for(stream.task, 5)
        assert stream.body == b"data: last\n\n", "the in-flight stream runs to its end"
        for _ in range(100):
            if kills:
                break
            await asyncio.sleep(0.01)
        assert kills == [(0, signal.SIGTERM)], "idle after the drain: the server stops itself"
        app.begin_drain()  # a second signal changes nothing
        await asyncio.sleep(0.02)
        assert len(kills) == 1

    asyncio.run(scenario())


def test_drain_signal_handler_is_installed_on_first_event(monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[bool] = []
    monkeypatch.setattr(mw, "_stop_own_process", lambda: stopped.append(True))

    async def scenario() -> None:
        app = TidalMiddleware(FakeEngine(), register_metrics=False)
        lifespan = asyncio.ensure_future(app({"type": "lifespan"}, _never, _ignore))
        await asyncio.sleep(0.01)
        try:
            signal.raise_signal(DRAIN_SIGNAL)
            await asyncio.sleep(0.05)
            assert app.ctl.draining
            assert stopped == [True]
        finally:
            lifespan.cancel()
            asyncio.get_running_loop().remove_signal_handler(DRAIN_SIGNAL)

    asyncio.run(scenario())


async def _never() -> Message:
    await asyncio.Event().wait()
    return {}


async def _ignore(message: Message) -> None:
    return None


def test_worker_metrics() -> None:
    async def scenario() -> bytes:
        app = TidalMiddleware(FakeEngine(), register_metrics=False)
        registry = CollectorRegistry()
        registry.register(WorkerCollector(app.ctl))
        before = generate_latest(registry)
        Client(app, "/v1/completions", "POST")
        await asyncio.sleep(0.01)
        app.ctl.begin_drain()
        await _request(app, "/v1/completions", "POST")
        assert b"tidal_worker_ready 1.0" in before and b"tidal_worker_draining 0.0" in before
        return generate_latest(registry)

    text = asyncio.run(scenario()).decode()
    for line in ("tidal_worker_ready 0.0", "tidal_worker_draining 1.0", "tidal_worker_in_flight_requests 1.0",
                 "tidal_worker_refused_requests_total 1.0"):  # fmt: skip
        assert line in text.splitlines(), text
