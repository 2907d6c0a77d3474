"""The worker's public port: what Tidal's middleware inside vLLM's server must keep and what it adds.

There is no proxy any more: vLLM listens on TIDAL_PORT with `tidal_worker.middleware.TidalMiddleware` as the
outermost ASGI layer. These checks pin the public port's semantics through the production supervisor
(`serve()`): requests reach the app untouched (target as the client encoded it, headers, body, chunked
bodies), streams leave event by event, pipelined requests are answered in order, a client hanging up
mid-stream ends its request (the in-flight gauge drops back), ``/live``/``/ready``/``/metrics`` answer with
the ``tidal_worker_*`` metrics, and on SIGTERM the drain: not ready, new requests refused with the documented
503 (and the connection closed), the in-flight stream runs to its end, then the server stops by itself and
`serve()` returns 0. The engine is the stand-in of tests/support/engine.py (a raw ASGI app inside the
middleware, served by uvicorn like vLLM): the real vLLM cannot echo what it received.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.engine import ASGI_STUB_ENGINE, free_port

from tidal_worker.process import ChildProcess
from tidal_worker.server import ServeConfig, serve


def _raw_request(
    port: int, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request with exactly these headers (http.client adds Host and, with a body, Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def _metric(port: int, name: str) -> float:
    text = _raw_request(port, "GET", "/metrics", [])[2].decode()
    values = [float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not exactly once in /metrics"
    return values[0]


def _chunked_post(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/echo/chunked", body=iter([b'{"a": ', b"1}"]), encode_chunked=True)
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def _pipelined(port: int) -> bytes:
    """Two requests written at once on one connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /echo/first HTTP/1.1\r\nHost: w\r\n\r\n"
            b"GET /echo/second HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n"
        )
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def _abandon_stream(port: int) -> dict[str, Any]:
    """Start a stream, read two events, check it is in flight, hang up; then what the app and gauge say."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions?n=100&every=0.05 HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\n\r\n{}"
        )
        seen = b""
        while seen.count(b"data: ") < 2:
            seen += sock.recv(65536)
        during = _metric(port, "tidal_worker_in_flight_requests")
    time.sleep(0.5)  # the app notices at its next event (every 0.05 s)
    stats = json.loads(_raw_request(port, "GET", "/stats", [])[2])
    return {"during": during, "after": _metric(port, "tidal_worker_in_flight_requests"), "stats": stats}


def _stream_times(port: int, target: str) -> tuple[int, list[bytes], list[float]]:
    """Read a stream line by line; the arrival time of every event."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", target, body=b"{}", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        events: list[bytes] = []
        times: list[float] = []
        while line := resp.readline():
            if line.startswith(b"data: "):
                events.append(line.strip())
                times.append(time.monotonic())
        return resp.status, events, times
    finally:
        conn.close()


def _refused_then_closed(port: int) -> tuple[int, dict[str, str], bytes, bytes]:
    """A new API request during the drain on a fresh connection; then whether the server closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\n\r\n{}")
        data = b""
        while chunk := sock.recv(65536):  # ends only when the server closes the connection
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body, data


@pytest.mark.timeout(90)
def test_public_port_semantics_and_drain(tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text(ASGI_STUB_ENGINE)
    port = free_port()
    cfg = ServeConfig(
        port=port,
        model_name="stub",
        drain_grace_seconds=20.0,
        engine_stop_timeout_seconds=5.0,
        startup_timeout_seconds=30.0,
    )
    engine = ChildProcess("stub engine", [sys.executable, str(script), str(port)])

    async def prepare() -> ChildProcess:
        await engine.start()
        return engine

    async def scenario() -> dict[str, Any]:
        server = asyncio.ensure_future(serve(cfg, prepare))
        deadline = time.monotonic() + 20
        while True:
            try:
                status = (await asyncio.to_thread(_raw_request, port, "GET", "/ready", []))[0]
            except OSError:
                status = 0
            if status == 200:
                break
            assert time.monotonic() < deadline, "stub engine never became ready"
            await asyncio.sleep(0.1)
        out: dict[str, Any] = {}
        out["live"] = await asyncio.to_thread(_raw_request, port, "GET", "/live", [])
        out["echo"] = await asyncio.to_thread(
            _raw_request,
            port,
            "POST",
            "/echo/a%2Fb/%7Etide?x=1&y=%20z",
            [
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer secret"),
                ("X-Request-Id", "r-1"),
            ],
            b'{"prompt": "tide"}',
        )
        out["stream"] = await asyncio.to_thread(_stream_times, port, "/v1/completions?n=20&every=0.05")
        out["chunked"] = await asyncio.to_thread(_chunked_post, port)
        out["pipelined"] = await asyncio.to_thread(_pipelined, port)
        out["abandoned"] = await asyncio.to_thread(_abandon_stream, port)
        out["refused_before_drain"] = await asyncio.to_thread(
            _metric, port, "tidal_worker_refused_requests_total"
        )

        # The drain: one stream in flight (40 events, 0.05 s apart), then SIGTERM to the supervisor.
        stream = asyncio.ensure_future(
            asyncio.to_thread(_stream_times, port, "/v1/completions?n=40&every=0.05")
        )
        await asyncio.sleep(0.5)
        t_sigterm = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it (loop handler)
        await asyncio.sleep(0.2)
        out["ready_draining"] = await asyncio.to_thread(_raw_request, port, "GET", "/ready", [])
        out["refused"] = await asyncio.to_thread(_refused_then_closed, port)
        out["in_flight_draining"] = await asyncio.to_thread(_metric, port, "tidal_worker_in_flight_requests")
        out["refused_total"] = await asyncio.to_thread(_metric, port, "tidal_worker_refused_requests_total")
        out["stream_during_drain"] = await stream
        out["stream_done_after"] = time.monotonic() - t_sigterm
        out["code"] = await asyncio.wait_for(server, timeout=20)
        out["exit_after"] = time.monotonic() - t_sigterm
        return out

    out = asyncio.run(scenario())

    status, _, body = out["live"]
    assert status == 200 and json.loads(body)["live"] is True

    status, headers, body = out["echo"]
    assert status == 200
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/echo/a%2Fb/%7Etide", "the target must reach the app as sent"
    assert seen["query_string"] == "x=1&y=%20z"
    assert seen["body"] == '{"prompt": "tide"}'
    sent = {name.lower(): value for name, value in seen["headers"]}
    assert sent["authorization"] == "Bearer secret" and sent["x-request-id"] == "r-1"

    status, events, times = out["stream"]
    assert status == 200
    assert events == [f"data: {i}".encode() for i in range(20)] + [b"data: [DONE]"]
    # 20 events 0.05 s apart: had anything buffered the stream, they would all arrive at once.
    assert times[-1] - times[0] > 0.5, f"stream events arrived together: {times[-1] - times[0]:.3f} s"

    assert out["chunked"]["body"] == '{"a": 1}', "a chunked request body arrives whole"

    pipelined: bytes = out["pipelined"]
    assert pipelined.count(b"HTTP/1.1 200 OK") == 2, pipelined[:400]
    assert pipelined.index(b'"/echo/first"') < pipelined.index(b'"/echo/second"'), "answers in request order"

    abandoned = out["abandoned"]
    assert abandoned["during"] == 1.0, "a stream counts in flight"
    assert abandoned["after"] == 0.0, "a client hanging up ends its request"
    assert abandoned["stats"]["streams_abandoned"] == 1

    assert out["refused_before_drain"] == 0.0
    status, _, body = out["ready_draining"]
    assert status == 503 and json.loads(body)["phase"] == "draining"
    status, headers, body, raw = out["refused"]
    assert status == 503, raw[:400]
    assert "draining" in json.loads(body)["error"]["message"]
    assert json.loads(body)["error"]["code"] == 503
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert out["in_flight_draining"] == 1.0
    assert out["refused_total"] == 1.0

    status, events, _ = out["stream_during_drain"]
    assert status == 200
    assert events == [f"data: {i}".encode() for i in range(40)] + [b"data: [DONE]"], (
        "in-flight stream finishes"
    )
    assert out["code"] == 0
    assert out["exit_after"] < 10, "the server stops itself once idle, well before the 20 s grace"
    assert engine.returncode is not None and engine.returncode != -signal.SIGKILL, "a clean stop, no SIGKILL"
