"""Supervision of child processes (the vLLM server, `ray start --block`): start, watch, stop for sure.

Children run in their own process group and get SIGKILL when the worker dies (Linux PR_SET_PDEATHSIG), so no
engine is ever orphaned. `stop()` sends SIGTERM to the child, waits `timeout` seconds, then SIGKILLs the whole
group (vLLM's EngineCore and its workers included). Output is inherited: it goes to the container log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

log = logging.getLogger("tidal_worker")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ChildProcess:
    """One supervised child process."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.env = dict(env) if env is not None else None
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the child in a new process group."""
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )

    @property
    def pid(self) -> int:
        """PID of the child (it is also its process group id)."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the child ended (negative: killed by that signal)."""
        return None if self.proc is None else self.proc.returncode

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the child alone (not its group); ProcessLookupError once it is gone."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    async def wait(self) -> int:
        """Wait for the child to exit and return its status."""
        assert self.proc is not None, "not started"
        return await self.proc.wait()

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL the whole process group; return the exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            log.info("stopping %s (pid %d): SIGTERM, SIGKILL after %.0f s", self.name, self.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=timeout)
            except TimeoutError:
                log.warning("%s did not exit within %.0f s of SIGTERM: SIGKILL", self.name, timeout)
        # Whatever is left in the group (engine core, executor workers) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return await self.proc.wait()
