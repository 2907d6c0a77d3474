"""Readiness and drain state of one worker: the phase machine and the in-flight request count.

Phases: ``starting`` (not ready) -> ``ready`` (the server is up and vLLM's ``/health`` answers) ->
``draining`` (drain signal received: not ready, new requests refused, in-flight ones finish) -> ``stopped``.
A ready engine whose ``/health`` fails goes back to ``starting`` (not ready) until it recovers; the
supervisor exits the pod if the engine process dies.

`DrainController` holds no I/O: the ASGI middleware (middleware.py) calls `enter()`/`leave()` around every API
request and its drain path awaits `wait_idle()`. Unit-tested without sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum


class Phase(StrEnum):
    """Lifecycle phase of the worker, as reported on the readiness endpoint."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class DrainController:
    """Phase + in-flight counter shared by the middleware's request path, its probes and its drain signal."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.in_flight = 0
        self.served_total = 0
        self.rejected_total = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        """Readiness: only a loaded, answering engine that is not draining is ready."""
        return self.phase is Phase.READY

    @property
    def draining(self) -> bool:
        """True once shutdown has begun (draining or stopped)."""
        return self.phase in (Phase.DRAINING, Phase.STOPPED)

    def mark_ready(self) -> None:
        """Engine answered its health check and lists the model."""
        if not self.draining:
            self.phase = Phase.READY

    def mark_unready(self) -> None:
        """Engine stopped answering: leave the load balancer until it recovers."""
        if not self.draining:
            self.phase = Phase.STARTING

    def begin_drain(self) -> None:
        """Stop being ready and refuse new requests; in-flight ones continue."""
        if self.phase is not Phase.STOPPED:
            self.phase = Phase.DRAINING

    def mark_stopped(self) -> None:
        """The engine has been stopped."""
        self.phase = Phase.STOPPED

    def reject(self) -> None:
        """Count a request refused because the worker was not accepting."""
        self.rejected_total += 1

    def enter(self) -> None:
        """One more request in flight."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        """A request in flight ended (its last chunk was sent or its client went away)."""
        self.in_flight -= 1
        self.served_total += 1
        if self.in_flight == 0:
            self._idle.set()

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one request for the duration of the block."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no request is in flight; False when `timeout` seconds (None: no limit) passed first."""
        if timeout is None:
            await self._idle.wait()
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout, 0.0))
        except TimeoutError:
            return False
        return True
