"""Supervision of the serving role: run vLLM on the public port, watch its startup, drain it on SIGTERM.

The worker adds no hop to the request path: vLLM's own server listens on TIDAL_PORT with Tidal's ASGI
middleware inside it (middleware.py: ``/live``, ``/ready``, ``tidal_worker_*`` metrics, in-flight count,
503s while draining). Why a supervisor still: vLLM cannot turn "not ready" before draining on its own SIGTERM
(it aborts in-flight requests, or with ``--shutdown-timeout`` keeps answering ``/health`` 200 and accepting
requests), and a pod needs preflight, a startup deadline and a non-zero exit when the engine dies. So
`serve()`:

- runs ``prepare()`` (model resolution, preflight, Ray head: __main__.py), which starts the vLLM child;
- polls ``/ready`` on the public port until 200; exits 7 if that takes longer than
  TIDAL_STARTUP_TIMEOUT_SECONDS, and with vLLM's status (5 when it has none) if vLLM exits by itself;
- on SIGTERM/SIGINT sends `DRAIN_SIGNAL` (SIGUSR1) to the vLLM API-server process: its middleware turns
  not-ready, refuses new requests and, once in-flight requests (streams included) finished, shuts the server
  down gracefully; the worker then exits 0. If vLLM is still running after TIDAL_DRAIN_GRACE_SECONDS it gets
  SIGTERM (vLLM aborts what is left), and SIGKILL of its process group after
  TIDAL_ENGINE_STOP_TIMEOUT_SECONDS. Before vLLM is ready SIGTERM stops it at once (nothing is in flight).

The pod's terminationGracePeriodSeconds should be at least drain grace + engine stop timeout + a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import ClientError, ClientSession, ClientTimeout

from .middleware import DRAIN_SIGNAL
from .process import ChildProcess

log = logging.getLogger("tidal_worker")

EXIT_OK = 0
EXIT_ENGINE_FAILED = 5
EXIT_STARTUP_TIMEOUT = 7
READY_POLL_SECONDS = 0.1


class StartupTimeoutError(RuntimeError):
    """The engine was not ready within TIDAL_STARTUP_TIMEOUT_SECONDS."""


@dataclass
class ServeConfig:
    """How to supervise the engine (derived from the contract by __main__)."""

    port: int
    model_name: str
    drain_grace_seconds: float
    engine_stop_timeout_seconds: float
    startup_timeout_seconds: float | None
    probe_host: str = "127.0.0.1"

    @property
    def ready_url(self) -> str:
        """The readiness endpoint of the engine's server, as the supervisor reaches it inside the pod."""
        return f"http://{self.probe_host}:{self.port}/ready"


Prepare = Callable[[], Awaitable[ChildProcess]]
"""Resolve the model, preflight, bootstrap Ray, start vLLM; returns the started engine process."""


async def _is_ready(session: ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=ClientTimeout(total=5)) as resp:
            return resp.status == 200
    except (ClientError, TimeoutError, OSError):
        return False


async def _wait_ready(session: ClientSession, cfg: ServeConfig, started: float) -> None:
    """Return once ``/ready`` answers 200; raise `StartupTimeoutError` past the startup timeout."""
    timeout = cfg.startup_timeout_seconds
    while not await _is_ready(session, cfg.ready_url):
        if timeout is not None and time.monotonic() - started > timeout:
            raise StartupTimeoutError(f"engine not ready within TIDAL_STARTUP_TIMEOUT_SECONDS={timeout:g}")
        await asyncio.sleep(READY_POLL_SECONDS)


async def _drain(engine: ChildProcess, cfg: ServeConfig, ready: bool) -> None:
    """Signal the drain (or stop a not-ready engine), wait for the engine to exit within the grace period."""
    if not ready:
        log.info("SIGTERM before the engine was ready: stopping it")
        return
    log.info(
        "SIGTERM: draining (drain signal sent: not ready, new requests refused); grace %.0f s",
        cfg.drain_grace_seconds,
    )
    with contextlib.suppress(ProcessLookupError):
        engine.send_signal(DRAIN_SIGNAL)
    t0 = time.monotonic()
    try:
        rc = await asyncio.wait_for(engine.wait(), timeout=cfg.drain_grace_seconds)
    except TimeoutError:
        log.warning("drain grace period (%.0f s) expired with requests in flight; stopping the engine",
                    cfg.drain_grace_seconds)  # fmt: skip
        return
    log.info("drained: all in-flight requests finished; engine exited (status %d) %.1f s after the drain "
             "signal", rc, time.monotonic() - t0)  # fmt: skip


async def serve(
    cfg: ServeConfig,
    prepare: Prepare,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Supervise the engine until SIGTERM/SIGINT, engine exit or startup timeout; return the exit status."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    engine: ChildProcess | None = None
    session = ClientSession()
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
        ready_task = asyncio.ensure_future(_wait_ready(session, cfg, started))
        exit_task = asyncio.ensure_future(engine.wait())
        ready = False
        try:
            await asyncio.wait({stop_task, ready_task, exit_task}, return_when=asyncio.FIRST_COMPLETED)
            if ready_task.done() and not stop_task.done() and not exit_task.done():
                exc = ready_task.exception()
                if exc is not None:
                    log.error("%s", exc)
                    return (
                        EXIT_STARTUP_TIMEOUT if isinstance(exc, StartupTimeoutError) else EXIT_ENGINE_FAILED
                    )
                ready = True
                log.info("engine ready after %.1f s: serving model %r on port %d",
                         time.monotonic() - started, cfg.model_name, cfg.port)  # fmt: skip
                await asyncio.wait({stop_task, exit_task}, return_when=asyncio.FIRST_COMPLETED)
            if exit_task.done() and not stop_task.done():
                rc = exit_task.result()
                log.error("engine exited unexpectedly with status %s; worker exits non-zero", rc)
                return rc if rc > 0 else EXIT_ENGINE_FAILED
        finally:
            for task in (ready_task, exit_task, stop_task):
                task.cancel()
        ready = ready or await _is_ready(
            session, cfg.ready_url
        )  # it may have turned ready since the last poll
        await _drain(engine, cfg, ready)
        return EXIT_OK
    finally:
        if engine is not None:
            await engine.stop(cfg.engine_stop_timeout_seconds)
        if on_stop is not None:
            await on_stop()
        await session.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
