"""Start the Tidal worker exactly as a pod would, on the vLLM CPU build, for the engine and metrics tiers.

`running_worker(model_dir)` runs ``python -m tidal_worker`` (the container entrypoint) with the pod contract's
environment variables (docs/worker-contract.md) set for the CPU device: an exact KV cache
(TIDAL_KV_CACHE_MEMORY_BYTES, 64 MiB by default), eager mode, offline Hugging Face libraries, free loopback
port. It waits until the worker's readiness endpoint answers 200 (vLLM up and healthy), yields a
`WorkerHandle`, and on exit stops the worker (SIGTERM, then SIGKILL of its process group); the worker stops
its vLLM child itself (and the child dies with it through PR_SET_PDEATHSIG). When startup fails the worker
log is included in the exception.

Fixtures (import them into a test module, or list ``tests.support.engine`` in ``pytest_plugins``):
``tiny_model_dir`` (session: the default tiny model from tests/support/tinymodel.py) and ``tiny_worker``
(module: one running worker serving it as ``tiny``). Loading takes ~30-40 s on 2 idle cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.tinymodel import make_tiny_model

DEFAULT_KV_CACHE_BYTES = 64 * 1024 * 1024
SERVED_MODEL_NAME = "tiny"


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on loopback a moment ago.

    All sockets stay bound until every port is chosen: calling :func:`free_port` repeatedly can return the
    same port twice (the kernel reuses a port released a moment ago), which Ray refuses ("gcs_server is
    trying to use a port number ... used by other components")."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


@dataclass
class WorkerHandle:
    """A running worker process."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    model_name: str
    startup_seconds: float = 0.0

    @property
    def base_url(self) -> str:
        """The worker's public URL (vLLM's server with Tidal's middleware), e.g. http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus scrape URL of the worker (vLLM metrics + tidal_worker_* lines)."""
        return self.base_url + "/metrics"

    @property
    def ready_url(self) -> str:
        """Readiness endpoint (200 only when the engine is up, 503 while starting or draining)."""
        return self.base_url + "/ready"

    def log_text(self) -> str:
        """Everything the worker and vLLM wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        """The last `lines` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the worker (drain), wait, SIGKILL its group if needed; return the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return int(self.proc.returncode)


def worker_env(
    model_dir: Path | str,
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 300.0,
) -> dict[str, str]:
    """The pod environment for a CPU worker serving `model_dir` (``env`` overrides any variable)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_") or k == "TIDAL_CACHE"}
    out.update(
        {
            "TIDAL_ROLE": "single",
            "TIDAL_MODEL_URI": str(model_dir),
            "TIDAL_SERVED_MODEL_NAME": SERVED_MODEL_NAME,
            "TIDAL_DEVICE": "cpu",
            "TIDAL_PORT": str(port),
            "TIDAL_KV_CACHE_MEMORY_BYTES": str(DEFAULT_KV_CACHE_BYTES),
            "TIDAL_MAX_MODEL_LEN": "1024",
            "TIDAL_ENFORCE_EAGER": "true",
            "TIDAL_STARTUP_TIMEOUT_SECONDS": str(startup_timeout),
            "TIDAL_DRAIN_GRACE_SECONDS": "60",
            "TIDAL_ENGINE_STOP_TIMEOUT_SECONDS": "10",
            "TIDAL_EXTRA_ARGS": json.dumps(list(extra_args)),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if env:
        out.update(env)
    return out


def start_worker(
    model_dir: Path | str,
    log_path: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 300.0,
    argv: Sequence[str] = (),
) -> WorkerHandle:
    """Start ``python -m tidal_worker`` in the background (does not wait for readiness)."""
    port = port or free_port()
    full_env = worker_env(
        model_dir, port=port, env=env, extra_args=extra_args, startup_timeout=startup_timeout
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidal_worker", *argv],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return WorkerHandle(
        proc=proc,
        port=port,
        log_path=log_path,
        model_name=full_env["TIDAL_SERVED_MODEL_NAME"],
    )


def http_status(url: str, timeout: float = 5.0) -> int:
    """Status code of GET `url` (0 when the connection fails)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def wait_ready(handle: WorkerHandle, timeout: float) -> None:
    """Poll the readiness endpoint until 200; raise with the log tail if the worker exits or time runs out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if handle.proc.poll() is not None:
            raise RuntimeError(
                f"worker exited with status {handle.proc.returncode} before ready; "
                f"log tail:\n{handle.log_tail()}"
            )
        if http_status(handle.ready_url, timeout=2) == 200:
            handle.startup_seconds = time.monotonic() - t0
            return
        time.sleep(0.5)
    raise TimeoutError(f"worker not ready within {timeout:.0f} s; log tail:\n{handle.log_tail()}")


@contextlib.contextmanager
def running_worker(
    model_dir: Path | str,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 300.0,
    log_path: Path | None = None,
) -> Iterator[WorkerHandle]:
    """Run a worker serving `model_dir` on CPU until the block ends (see the module docstring)."""
    if log_path is None:
        log_dir = Path(os.environ.get("TIDAL_TEST_LOG_DIR", "/tmp/tidal-test-logs"))
        log_path = log_dir / f"worker-{os.getpid()}-{time.time_ns()}.log"
    handle = start_worker(
        model_dir, log_path, port=port, env=env, extra_args=extra_args, startup_timeout=startup_timeout
    )
    try:
        wait_ready(handle, startup_timeout + 30)
        yield handle
    except BaseException:
        sys.stderr.write(f"\n--- worker log tail ({log_path}) ---\n{handle.log_tail()}\n")
        raise
    finally:
        handle.stop(timeout=30)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The default tiny Llama model (generated once, cached under $TIDAL_CACHE)."""
    return make_tiny_model()


@pytest.fixture(scope="module")
def tiny_worker(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerHandle]:
    """One worker serving the tiny model as ``tiny`` for the whole test module."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with running_worker(tiny_model_dir, log_path=log_path) as handle:
        yield handle


ASGI_STUB_ENGINE = '''
"""A stand-in for vLLM's API server: a raw ASGI app inside Tidal's middleware, served by uvicorn like vLLM.

argv: PORT [stubborn]. Routes: /health (200), /metrics (prometheus_client's default registry, as vLLM
serves it), POST /v1/completions?n=N&every=S (N "data: i" events S seconds apart, then "data: [DONE]"),
/echo/... (what the app received, as JSON), /stats (streams finished / abandoned by their client).
"stubborn" ignores SIGTERM once serving, so only SIGKILL ends it.
"""
import asyncio, json, signal, sys
from urllib.parse import parse_qs

import prometheus_client, uvicorn

from tidal_worker.middleware import TidalMiddleware

STATS = {"streams_done": 0, "streams_abandoned": 0}


async def _receive_body(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _json(send, status, payload):
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if "stubborn" in sys.argv[2:]:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/metrics":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", prometheus_client.CONTENT_TYPE_LATEST.encode())]})
        await send({"type": "http.response.body", "body": prometheus_client.generate_latest()})
    elif path == "/stats":
        await _json(send, 200, STATS)
    elif path.startswith("/echo/"):
        body = await _receive_body(receive)
        await _json(send, 200, {"method": scope["method"], "raw_path": scope["raw_path"].decode(),
                                "query_string": scope["query_string"].decode(),
                                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                                "body": body.decode()})
    elif path == "/v1/completions":
        await _receive_body(receive)
        query = parse_qs(scope["query_string"].decode())
        n, every = int(query.get("n", ["300"])[0]), float(query.get("every", ["0.2"])[0])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        gone = asyncio.ensure_future(receive())  # http.disconnect when the client goes away
        for i in range(n):
            if gone.done():
                STATS["streams_abandoned"] += 1
                return
            await send({"type": "http.response.body", "body": f"data: {i}\\n\\n".encode(), "more_body": True})
            await asyncio.sleep(every)
        gone.cancel()
        await send({"type": "http.response.body", "body": b"data: [DONE]\\n\\n"})
        STATS["streams_done"] += 1
    else:
        await _json(send, 404, {"error": "not found"})


uvicorn.run(TidalMiddleware(app), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            lifespan="on")
'''
"""Source of a stub engine process for the drain and public-port tests (write it to a file, run it)."""
