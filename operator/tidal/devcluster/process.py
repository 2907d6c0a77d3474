"""Child processes of the development cluster, each in its own process group.

Every component (etcd, kube-apiserver, ...) is started with `start_new_session=True`, so it and anything it
forks share one process group that teardown can signal as a whole: SIGTERM first, SIGKILL after a grace
period. Output goes to one log file per component, kept for post-mortems of failed tests. On Linux each
component also gets SIGTERM from the kernel when the process that started it dies (PR_SET_PDEATHSIG), so
a pytest run or `serve` supervisor killed with SIGKILL does not leave an etcd or apiserver behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

_PR_SET_PDEATHSIG = 1


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded in the parent: the child may only make the prctl call between fork and exec.
_LIBC = _load_libc() if os.uname().sysname == "Linux" else None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: ask for SIGTERM when the parent dies (Linux only)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Component:
    """A running control plane component."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """Process id, which is also the process group id (the component leads its own session)."""
        return self.process.pid

    def exited(self) -> int | None:
        """The exit code if the process has ended, else None."""
        return self.process.poll()


def start_component(
    name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Component:
    """Start `argv` in a new session with stdout and stderr appended to `log_dir/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
            env=dict(env) if env is not None else None,
        )
    return Component(name=name, argv=list(argv), log_path=log_path, process=process)


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` still exists (zombies of other parents included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM process group `pgid`, then SIGKILL it if anything is left after `grace_s` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and group_alive(pgid):
        _reap(pgid)
        time.sleep(0.05)
    if group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and group_alive(pgid):
            _reap(pgid)
            time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect the exit status of our own child `pid`, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_component(component: Component, grace_s: float = 10.0) -> None:
    """Stop a component and everything in its process group; reap the leader."""
    kill_group(component.pid, grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        component.process.wait(timeout=5.0)


def processes_running_from(directory: Path) -> list[tuple[int, str]]:
    """(pid, executable) of every live process whose executable lies in `directory` (scans /proc)."""
    found: list[tuple[int, str]] = []
    target = str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if exe.removesuffix(" (deleted)").startswith(target + os.sep):
            found.append((int(entry.name), exe))
    return found


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Base of what starts and stops a set of components (:class:`~tidal.devcluster.cluster.DevCluster`,
    :class:`~tidal.devcluster.realnode.RealNode`): a context manager that calls `start()` on entry and
    `stop()` on exit."""

    components: dict[str, Component]
    """The running components by name."""

    def logs_summary(self, lines: int = 30) -> str:
        """The last lines of the components' logs, for failure messages; a subclass implements it."""
        raise NotImplementedError

    def raise_if_exited(self, error: type[Exception], what: str, owner: str = "") -> None:
        """Raise `error` (with the log tails) if a component has exited while waiting for `what`."""
        for component in self.components.values():
            code = component.exited()
            if code is not None:
                raise error(
                    f"{component.name}{owner} exited with code {code} while waiting for {what}\n"
                    + self.logs_summary()
                )

    def start(self) -> None:
        """Start the components; a subclass implements it."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the components; a subclass implements it."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
