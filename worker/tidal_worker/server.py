"""The worker's front door: a drain-aware reverse proxy in front of the vLLM child process, and its lifecycle.

Why a proxy rather than probing vLLM directly: on SIGTERM vLLM's own server either aborts in-flight requests
(the default) or, with ``--shutdown-timeout``, drains the engine while its HTTP server still answers
``/health`` 200 and still accepts new requests; it cannot turn "not ready" first. So the worker owns the
public port and runs vLLM on a loopback port (TIDAL_ENGINE_PORT). The public port is served by
frontdoor.py, a lean forwarder that sends API requests straight to pooled connections to vLLM while ready
(about 0.1 ms per request; worker/benchmarks/, figures in docs/worker-contract.md) and hands everything else
to the aiohttp application of this module, listening on an internal loopback port (and on
TIDAL_METRICS_PORT when set), which answers:

- ``GET /live``: 200 while the worker runs (liveness; a dead engine makes the worker exit instead).
- ``GET /ready`` (alias ``/health``): 200 only when the engine answers ``/health`` AND ``/v1/models`` lists
  the served model; 503 with ``{"phase": ...}`` while starting or draining.
- ``GET /metrics``: vLLM's Prometheus metrics, passed through, plus a few ``tidal_worker_*`` lines (phase,
  in-flight, refused). Served during drain too, so the last scrape sees the drain.
- anything else: forwarded byte for byte (streaming responses chunk by chunk) while ready (the requests the
  front door does not send directly: HEAD, ``Expect: 100-continue``, the metrics port's), ``503`` otherwise.

On SIGTERM (or SIGINT) the worker turns not-ready at once; new requests get ``503`` with a JSON error body
(OpenAI error shape, ``Retry-After: 1``, ``Connection: close``); in-flight requests, streams included, run to
completion for up to TIDAL_DRAIN_GRACE_SECONDS; then vLLM is stopped (SIGTERM, SIGKILL after
TIDAL_ENGINE_STOP_TIMEOUT_SECONDS) and the worker exits 0. If the engine exits by itself, or is not ready
within TIDAL_STARTUP_TIMEOUT_SECONDS, the worker exits non-zero: never a hang. The pod's
terminationGracePeriodSeconds should be at least drain grace + engine stop timeout + a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import ClientError, ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, web
from multidict import CIMultiDictProxy
from yarl import URL

from .drain import DrainController, Phase
from .frontdoor import FrontDoor, Upstream
from .process import ChildProcess

log = logging.getLogger("tidal_worker")

EXIT_OK = 0
EXIT_ENGINE_FAILED = 5
EXIT_STARTUP_TIMEOUT = 7
INTERNAL_KEEPALIVE_SECONDS = 60.0  # pooled connections to the internal application (aiohttp keeps them 75 s)
ENGINE_KEEPALIVE_ENV = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"  # vLLM's idle keep-alive timeout, 5 s by default

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length",
    }
)  # fmt: skip

DRAINING_BODY = {
    "error": {
        "message": "this replica is draining (shutting down) and accepts no new requests; retry on another",
        "type": "ServiceUnavailable",
        "code": 503,
    }
}
STARTING_BODY = {
    "error": {"message": "the engine is not ready yet", "type": "ServiceUnavailable", "code": 503},
}

CTL_KEY = web.AppKey("ctl", DrainController)
STATE_KEY: web.AppKey[ProxyState] = web.AppKey("state")


@dataclass
class ProxyState:
    """What the handlers need besides the drain controller."""

    upstream: str
    model_name: str
    session: ClientSession | None = None
    started: float = field(default_factory=time.monotonic)


def build_app(ctl: DrainController, state: ProxyState) -> web.Application:
    """The aiohttp application (routes listed in the module docstring)."""
    app = web.Application(client_max_size=64 * 1024 * 1024, handler_args={"max_field_size": 65536})
    app[CTL_KEY] = ctl
    app[STATE_KEY] = state
    app.router.add_get("/live", _live)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/health", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"live": True, "phase": request.app[CTL_KEY].phase.value})


async def _ready(request: web.Request) -> web.Response:
    ctl = request.app[CTL_KEY]
    body = {"ready": ctl.ready, "phase": ctl.phase.value, "in_flight": ctl.in_flight}
    return web.json_response(body, status=200 if ctl.ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    ctl, state = request.app[CTL_KEY], request.app[STATE_KEY]
    text = ""
    if state.session is not None and ctl.phase is not Phase.STOPPED:
        try:
            async with state.session.get(state.upstream + "/metrics", timeout=ClientTimeout(total=5)) as up:
                if up.status == 200:
                    text = await up.text()
        except (ClientError, TimeoutError):
            text = ""
    text += _worker_metrics(ctl)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def _worker_metrics(ctl: DrainController) -> str:
    lines = [
        "# HELP tidal_worker_ready 1 when the worker is ready to take traffic.",
        "# TYPE tidal_worker_ready gauge",
        f"tidal_worker_ready {1 if ctl.ready else 0}",
        "# HELP tidal_worker_draining 1 once SIGTERM was received.",
        "# TYPE tidal_worker_draining gauge",
        f"tidal_worker_draining {1 if ctl.draining else 0}",
        "# HELP tidal_worker_in_flight_requests Requests being forwarded to the engine.",
        "# TYPE tidal_worker_in_flight_requests gauge",
        f"tidal_worker_in_flight_requests {ctl.in_flight}",
        "# HELP tidal_worker_refused_requests_total Requests refused because not ready or draining.",
        "# TYPE tidal_worker_refused_requests_total counter",
        f"tidal_worker_refused_requests_total {ctl.rejected_total}",
    ]
    return "\n".join(lines) + "\n"


def forward_headers(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """End-to-end headers of a message: hop-by-hop ones (and those its Connection header names) dropped."""
    connection = headers.get("Connection")
    drop = HOP_BY_HOP | {t.strip().lower() for t in connection.split(",")} if connection else HOP_BY_HOP
    return [(k, v) for k, v in headers.items() if k.lower() not in drop]


async def _proxy(request: web.Request) -> web.StreamResponse:
    """Forward one request byte for byte: no JSON parsing, one pooled keep-alive connection per request."""
    ctl, state = request.app[CTL_KEY], request.app[STATE_KEY]
    session = state.session
    if not ctl.ready or session is None:
        ctl.reject()
        body = DRAINING_BODY if ctl.draining else STARTING_BODY
        return web.json_response(
            body, status=503, headers={"Retry-After": "1", "Connection": "close"} if ctl.draining else None
        )
    with ctl.track():
        data = await request.read() if request.body_exists else None
        target = request.raw_path  # as the client encoded it: no re-quoting
        if not target.startswith("/"):  # absolute-form request target
            target = request.rel_url.raw_path_qs
        try:
            async with session.request(
                request.method,
                URL(state.upstream + target, encoded=True),
                headers=forward_headers(request.headers),
                data=data,
                allow_redirects=False,
            ) as up:
                out_headers = forward_headers(up.headers)
                if up.headers.get("Content-Length") is not None:
                    payload = await up.read()
                    return web.Response(status=up.status, reason=up.reason, headers=out_headers, body=payload)
                resp = web.StreamResponse(status=up.status, reason=up.reason, headers=out_headers)
                await resp.prepare(request)
                try:
                    # readany(): whatever the engine has sent so far, so every SSE event leaves at once.
                    content = up.content
                    while chunk := await content.readany():
                        await resp.write(chunk)
                    await resp.write_eof()
                except (ConnectionResetError, ClientError) as exc:
                    # Client gone (leaving the block closes the upstream stream, so vLLM aborts the request
                    # instead of generating for nobody) or engine gone mid-stream (the client sees the cut).
                    log.info("stream %s ended early: %s: %s", request.rel_url.path, type(exc).__name__, exc)
                return resp
        except ClientError as exc:
            log.warning("engine request %s %s failed: %s", request.method, request.rel_url.path, exc)
            return web.json_response(
                {"error": {"message": f"engine unavailable: {exc}", "type": "BadGateway", "code": 502}},
                status=502,
            )


async def _engine_answers(session: ClientSession, upstream: str, model_name: str) -> bool:
    """Readiness check: /health is 200 and /v1/models lists the served model."""
    try:
        timeout = ClientTimeout(total=5)
        async with session.get(upstream + "/health", timeout=timeout) as health:
            if health.status != 200:
                return False
        async with session.get(upstream + "/v1/models", timeout=timeout) as models:
            if models.status != 200:
                return False
            payload = await models.json()
    except (ClientError, TimeoutError, json.JSONDecodeError, ValueError):
        return False
    data = payload.get("data") if isinstance(payload, dict) else None
    return isinstance(data, list) and any(isinstance(m, dict) and m.get("id") == model_name for m in data)


def upstream_keepalive_seconds(env: Mapping[str, str]) -> float:
    """How long an idle pooled connection to the engine is kept: 1 s less than the engine keeps it.

    The engine inherits the worker's environment, so both read the same ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``.
    Closing first means the proxy never sends a request on a connection the engine is closing at that moment.
    """
    try:
        engine_seconds = float(env.get(ENGINE_KEEPALIVE_ENV) or 5)
    except ValueError:
        engine_seconds = 5.0
    return max(engine_seconds - 1.0, 0.5)


def upstream_session(env: Mapping[str, str] = os.environ) -> ClientSession:
    """The one client session to the engine, shared by every forwarded request, probe and scrape.

    - Unlimited pooled keep-alive connections (``limit=0``), dropped when idle a little before the engine
      would drop them (`upstream_keepalive_seconds`).
    - Bytes pass through untouched: no decompression, no cookie jar (a Set-Cookie from the engine must reach
      its client, not be replayed to other clients), no default ``Accept``/``Accept-Encoding``/``User-Agent``
      added to a client's request that did not carry them.
    """
    return ClientSession(
        connector=TCPConnector(limit=0, keepalive_timeout=upstream_keepalive_seconds(env)),
        timeout=ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
        cookie_jar=DummyCookieJar(),
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
    )


class StartupTimeoutError(RuntimeError):
    """The engine was not ready within TIDAL_STARTUP_TIMEOUT_SECONDS."""


async def _watch_engine(
    ctl: DrainController, state: ProxyState, startup_timeout: float | None, started: float
) -> None:
    """Flip readiness from the engine's answers; raise when it is not ready in time. Runs until cancelled."""
    assert state.session is not None
    failures = 0
    while True:
        ok = await _engine_answers(state.session, state.upstream, state.model_name)
        if ok:
            failures = 0
            if ctl.phase is Phase.STARTING:
                ctl.mark_ready()
                log.info(
                    "engine ready after %.1f s: serving model %r",
                    time.monotonic() - started,
                    state.model_name,
                )
        elif ctl.phase is Phase.READY:
            failures += 1
            if failures >= 3:
                log.warning("engine stopped answering its health check: not ready")
                ctl.mark_unready()
        elif (
            ctl.phase is Phase.STARTING
            and startup_timeout is not None
            and time.monotonic() - started > startup_timeout
        ):
            raise StartupTimeoutError(
                f"engine not ready within TIDAL_STARTUP_TIMEOUT_SECONDS={startup_timeout:g}"
            )
        await asyncio.sleep(0.1 if ctl.phase is Phase.STARTING else 2.0)


@dataclass
class ServeConfig:
    """How to run the front door and the engine (derived from the contract by __main__)."""

    port: int
    engine_port: int
    model_name: str
    drain_grace_seconds: float
    engine_stop_timeout_seconds: float
    startup_timeout_seconds: float | None
    metrics_port: int | None = None
    host: str = "0.0.0.0"


Prepare = Callable[[], Awaitable[ChildProcess]]
"""Runs once the front door listens: resolve the model, preflight, bootstrap Ray; returns the engine."""


async def serve(
    cfg: ServeConfig,
    prepare: Prepare,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Run the front door and the engine until SIGTERM/SIGINT or engine failure; return the exit status."""
    ctl = DrainController()
    state = ProxyState(upstream=f"http://127.0.0.1:{cfg.engine_port}", model_name=cfg.model_name)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)

    runner = web.AppRunner(build_app(ctl, state), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    # The aiohttp application listens on an internal loopback port; the public port is the lean forwarder
    # (frontdoor.py), which hands it everything but API requests while ready. The metrics port is its own.
    internal = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    internal.bind(("127.0.0.1", 0))
    await web.SockSite(runner, internal).start()
    if cfg.metrics_port is not None:
        await web.TCPSite(runner, cfg.host, cfg.metrics_port).start()
    door = FrontDoor(
        ctl,
        engine=Upstream(cfg.engine_port, upstream_keepalive_seconds(os.environ)),
        app=Upstream(internal.getsockname()[1], INTERNAL_KEEPALIVE_SECONDS),
    )
    front = await loop.create_server(door.protocol, cfg.host, cfg.port, reuse_address=True)
    log.info("front door listening on %s:%d (engine on 127.0.0.1:%d)", cfg.host, cfg.port, cfg.engine_port)
    state.session = upstream_session()
    engine: ChildProcess | None = None
    code = EXIT_OK
    try:
        prep_task = asyncio.ensure_future(prepare())
        stop_task = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({prep_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if not prep_task.done():
            prep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                engine = await prep_task
            log.info("stop requested before the engine started")
            return EXIT_OK
        engine = prep_task.result()  # preparation errors propagate to __main__ (their own exit codes)
        started = time.monotonic()
        watch_task = asyncio.ensure_future(_watch_engine(ctl, state, cfg.startup_timeout_seconds, started))
        exit_task = asyncio.ensure_future(engine.wait())
        await asyncio.wait({stop_task, watch_task, exit_task}, return_when=asyncio.FIRST_COMPLETED)
        if exit_task.done() and not stop_task.done():
            rc = exit_task.result()
            log.error("engine exited unexpectedly with status %s; worker exits non-zero", rc)
            code = rc if rc > 0 else EXIT_ENGINE_FAILED
        elif watch_task.done() and not stop_task.done():
            exc = watch_task.exception()
            log.error("%s", exc)
            code = EXIT_STARTUP_TIMEOUT if isinstance(exc, StartupTimeoutError) else EXIT_ENGINE_FAILED
        else:
            ctl.begin_drain()
            log.info(
                "SIGTERM: draining, not ready, refusing new requests; %d in flight, grace %.0f s",
                ctl.in_flight,
                cfg.drain_grace_seconds,
            )
            t0 = time.monotonic()
            idle = await ctl.wait_idle(cfg.drain_grace_seconds)
            if idle:
                log.info("drained: all in-flight requests finished in %.1f s", time.monotonic() - t0)
            else:
                log.warning(
                    "drain grace period (%.0f s) expired with %d requests in flight; stopping the engine",
                    cfg.drain_grace_seconds,
                    ctl.in_flight,
                )
        for task in (watch_task, exit_task, stop_task):
            task.cancel()
        return code
    finally:
        if engine is not None:
            await engine.stop(cfg.engine_stop_timeout_seconds)
        ctl.mark_stopped()
        if on_stop is not None:
            await on_stop()
        front.close()
        door.close()
        await state.session.close()
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
