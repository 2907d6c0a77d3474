"""Tidal's drain-aware front door, inside vLLM's own HTTP server: a pure ASGI middleware.

Why in-process: any extra userspace hop in front of vLLM (a proxy, even a raw TCP relay) costs 0.3-0.4 ms per
request, 5 % of a short completion on the tiny model (docs/worker-contract.md). vLLM's OpenAI server accepts
``--middleware <import path>``; the worker launches it with ``--middleware
tidal_worker.middleware.TidalMiddleware`` on the public port, so an API request crosses one Python call and a
counter, never a socket. Pure ASGI (no Starlette ``BaseHTTPMiddleware``): it costs microseconds and streams
pass through untouched. It is the outermost layer of vLLM's app, so it sees every request first.

On the public port it answers:

- ``GET /live``: 200 while the server runs.
- ``GET /ready``: 200 with ``{"ready": true, ...}`` when not draining and vLLM's ``/health`` answers 200 (the
  request is handed to vLLM with its path rewritten to ``/health``); 503 with ``{"phase": ...}`` otherwise.
- ``GET /health``: vLLM's own health check while serving, 503 while draining.
- ``GET /metrics``: vLLM's Prometheus endpoint, which serves prometheus_client's default registry (vLLM's
  single API-server mode); the ``tidal_worker_*`` gauges and counter are a collector registered there.
- anything else (the API): passed to vLLM and counted in flight until vLLM's handler returns, which it does
  when the last body chunk was sent or the client disconnected; refused while draining.

Drain: the supervisor (``python -m tidal_worker``, server.py) sends ``SIGUSR1`` (`DRAIN_SIGNAL`) to this
process on SIGTERM. vLLM 0.32 does not use that signal, nor does uvicorn outside its gunicorn worker class
(which vLLM does not use). The handler is installed from the event loop on the
first ASGI event (lifespan startup), before the server answers anything; the supervisor sends the signal
only once ``/ready`` answered. The middleware then turns not-ready at once, answers new API requests ``503``
(OpenAI error shape, ``Retry-After: 1``, ``Connection: close``), lets in-flight requests (streams included)
finish and, when none is left, sends ``SIGTERM`` to its own process: vLLM's graceful shutdown. The
supervisor enforces the grace period from outside.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .drain import DrainController

log = logging.getLogger("tidal_worker.middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_SIGNAL = signal.SIGUSR1
"""What the supervisor sends to the vLLM API-server process to start a drain."""

DRAINING_BODY = {
    "error": {
        "message": "this replica is draining (shutting down) and accepts no new requests; retry on another",
        "type": "ServiceUnavailable",
        "code": 503,
    }
}
_DRAINING_BYTES = json.dumps(DRAINING_BODY).encode()
_DRAINING_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_DRAINING_BYTES)).encode()),
    (b"retry-after", b"1"),
    (b"connection", b"close"),
]


class WorkerCollector(Collector):
    """The ``tidal_worker_*`` metrics, read from the drain controller at scrape time."""

    def __init__(self, ctl: DrainController) -> None:
        self.ctl = ctl

    def collect(self) -> Iterator[Metric]:
        """One sample each: ready, draining, in flight, refused."""
        ctl = self.ctl
        yield GaugeMetricFamily(
            "tidal_worker_ready", "1 when the worker is ready to take traffic.", value=1 if ctl.ready else 0
        )
        yield GaugeMetricFamily(
            "tidal_worker_draining", "1 once the drain began (SIGTERM to the pod).", value=int(ctl.draining)
        )
        yield GaugeMetricFamily(
            "tidal_worker_in_flight_requests", "API requests being served by the engine.", value=ctl.in_flight
        )
        yield CounterMetricFamily(
            "tidal_worker_refused_requests",
            "API requests refused because the worker was draining.",
            value=ctl.rejected_total,
        )


def _log_to_stderr() -> None:
    """vLLM configures only its own loggers: give ours a handler so drain messages reach the pod log."""
    root = logging.getLogger("tidal_worker")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s tidal-worker[engine] %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class TidalMiddleware:
    """The ASGI middleware vLLM is launched with (module docstring)."""

    def __init__(self, app: ASGIApp, *, register_metrics: bool = True) -> None:
        self.app = app
        self.ctl = DrainController()
        self.ctl.mark_ready()  # vLLM builds its app (and so this) once the engine is loaded
        self._signal_installed = False
        self._drain_task: asyncio.Task[None] | None = None
        _log_to_stderr()
        if register_metrics:
            REGISTRY.register(WorkerCollector(self.ctl))
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                log.warning("PROMETHEUS_MULTIPROC_DIR is set: /metrics will not show tidal_worker_* metrics")
        log.info("tidal middleware loaded from %s", __file__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._signal_installed:
            self._install_drain_signal()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in ("/live", "/ready", "/health", "/metrics"):
            await self._endpoint(path, scope, receive, send)
            return
        ctl = self.ctl
        if ctl.draining:
            ctl.reject()
            await send({"type": "http.response.start", "status": 503, "headers": _DRAINING_HEADERS})
            await send({"type": "http.response.body", "body": _DRAINING_BYTES})
            return
        ctl.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            ctl.leave()

    def _install_drain_signal(self) -> None:
        self._signal_installed = True
        try:
            asyncio.get_running_loop().add_signal_handler(DRAIN_SIGNAL, self.begin_drain)
        except (NotImplementedError, RuntimeError, ValueError) as exc:  # not the main thread / no loop
            log.error("cannot install the drain signal handler: %s", exc)

    async def _endpoint(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        ctl = self.ctl
        if path == "/metrics":
            await self.app(scope, receive, send)
        elif path == "/live":
            await _send_json(send, 200, {"live": True, "phase": ctl.phase.value})
        elif ctl.draining:
            await _send_json(
                send, 503, {"ready": False, "phase": ctl.phase.value, "in_flight": ctl.in_flight}
            )
        elif path == "/health":
            await self.app(scope, receive, send)
        else:
            healthy = await self._engine_healthy(scope, receive)
            if healthy:
                ctl.mark_ready()
            else:
                ctl.mark_unready()
            body = {"ready": ctl.ready, "phase": ctl.phase.value, "in_flight": ctl.in_flight}
            await _send_json(send, 200 if ctl.ready else 503, body)

    async def _engine_healthy(self, scope: Scope, receive: Receive) -> bool:
        """vLLM's own ``/health`` (it asks the engine core), called in-process with the path rewritten."""
        status = 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])

        health = dict(scope, path="/health", raw_path=b"/health", method="GET", query_string=b"")
        try:
            await self.app(health, receive, capture)
        except Exception:
            log.exception("engine health check failed")
            return False
        return status == 200

    def begin_drain(self) -> None:
        """Turn not-ready, refuse new API requests, and stop the server once nothing is in flight."""
        if self.ctl.draining:
            return
        self.ctl.begin_drain()
        log.info("drain signal: not ready, refusing new requests; %d in flight", self.ctl.in_flight)
        self._drain_task = asyncio.get_running_loop().create_task(self._stop_when_idle())

    async def _stop_when_idle(self) -> None:
        t0 = time.monotonic()
        await self.ctl.wait_idle(None)
        log.info(
            "drained: all in-flight requests finished in %.1f s; stopping the server", time.monotonic() - t0
        )
        _stop_own_process()


def _stop_own_process() -> None:
    """SIGTERM to this process: vLLM's own graceful shutdown (nothing is in flight any more)."""
    os.kill(os.getpid(), signal.SIGTERM)
