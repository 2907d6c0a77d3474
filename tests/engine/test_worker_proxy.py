"""The worker's proxy passes requests and responses through untouched (what its lean hop must not break).

The proxy forwards bytes without parsing them and reuses pooled keep-alive connections to the engine (see
server.py and worker/benchmarks/overhead.py). These checks pin what that pass-through must keep: the request
target as the client encoded it, end-to-end headers only (hop-by-hop ones and those named by Connection
dropped, nothing added: no Accept-Encoding, User-Agent or cookies of its own), repeated response headers,
status and reason, compressed bodies byte for byte, streams that leave event by event, HEAD answers (no body
to wait for), chunked request bodies, pipelined requests answered in order, and a client hanging up
mid-stream closing the engine's side too (vLLM then aborts the request). The engine is a
stand-in child process (a small aiohttp server, real process, real HTTP) that echoes what it received: the
real vLLM cannot echo headers. Everything else is the production path: `serve()`, its readiness watcher, the
drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.engine import free_port

from tidal_worker.process import ChildProcess
from tidal_worker.server import ServeConfig, serve

ECHO_ENGINE = textwrap.dedent(
    """
    import asyncio, gzip, json, sys
    from aiohttp import web

    async def health(request):
        return web.Response(text="")

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def echo(request):
        body = await request.read()
        seen = {"method": request.method, "raw_path": request.raw_path,
                "headers": list(request.headers.items()), "body": body.decode()}
        resp = web.json_response(seen, status=201, reason="Created Here")
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/")
        resp.headers.add("X-Custom", "one")
        resp.headers.add("X-Custom", "two")
        return resp

    async def zipped(request):
        return web.Response(body=gzip.compress(b"tide " * 200), headers={"Content-Encoding": "gzip"})

    STATS = {"streams_done": 0, "streams_aborted": 0}

    async def stream(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(20):
                await resp.write(f"data: {i}\\n\\n".encode())
                await asyncio.sleep(0.05)
            await resp.write(b"data: [DONE]\\n\\n")
        except ConnectionError:
            STATS["streams_aborted"] += 1  # as vLLM aborts a request whose client went away
            return resp
        STATS["streams_done"] += 1
        return resp

    async def stats(request):
        return web.json_response(STATS)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/zipped", zipped)
    app.router.add_post("/v1/stream", stream)
    app.router.add_get("/stats", stats)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
    """
)


def _raw_request(
    port: int, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None = None
) -> tuple[int, str, list[tuple[str, str]], bytes]:
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
        return resp.status, resp.reason, resp.getheaders(), resp.read()
    finally:
        conn.close()


def _head_then_get(port: int) -> tuple[int, bytes, dict[str, Any]]:
    """HEAD, then a GET on the same kept-alive connection (a HEAD answer has no body to wait for)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("HEAD", "/echo/head")
        head = conn.getresponse()
        head_body = head.read()
        conn.request("GET", "/echo/after-head")
        after = conn.getresponse()
        return head.status, head_body, json.loads(after.read())
    finally:
        conn.close()


def _chunked_post(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/echo/chunked", body=iter([b'{"a": ', b"1}"]), encode_chunked=True)
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def _pipelined(port: int) -> bytes:
    """Two requests written at once on one connection; everything the worker answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /echo/first HTTP/1.1\r\nHost: w\r\n\r\n"
            b"GET /echo/second HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n"
        )
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def _abandon_stream(port: int) -> dict[str, int]:
    """Start a stream, read two events, hang up; then what the engine says about its streams."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/stream HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\n\r\n{}")
        seen = b""
        while seen.count(b"data: ") < 2:
            seen += sock.recv(65536)
    time.sleep(0.5)  # the engine notices at its next write (every 0.05 s)
    return dict(json.loads(_raw_request(port, "GET", "/stats", [])[3]))


def _stream_times(port: int) -> tuple[list[bytes], list[float]]:
    """Read the stub's stream line by line; the arrival time of every event."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/stream", body=b"{}", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        events: list[bytes] = []
        times: list[float] = []
        while line := resp.readline():
            if line.startswith(b"data: "):
                events.append(line.strip())
                times.append(time.monotonic())
        return events, times
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_proxy_passes_requests_and_responses_through(tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text(ECHO_ENGINE)
    engine_port, port = free_port(), free_port()
    cfg = ServeConfig(
        port=port,
        engine_port=engine_port,
        model_name="stub",
        drain_grace_seconds=5.0,
        engine_stop_timeout_seconds=5.0,
        startup_timeout_seconds=30.0,
        host="127.0.0.1",
    )
    engine = ChildProcess("echo engine", [sys.executable, str(script), str(engine_port)])

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
        out["echo"] = await asyncio.to_thread(
            _raw_request,
            port,
            "POST",
            "/echo/a%2Fb/%7Etide?x=1&y=%20z",
            [
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer secret"),
                ("X-Request-Id", "r-1"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
            ],
            b'{"prompt": "tide"}',
        )
        out["again"] = await asyncio.to_thread(_raw_request, port, "GET", "/echo/again", [])
        out["zipped"] = await asyncio.to_thread(
            _raw_request, port, "GET", "/zipped", [("Accept-Encoding", "gzip")]
        )
        out["stream"] = await asyncio.to_thread(_stream_times, port)
        out["head"] = await asyncio.to_thread(_head_then_get, port)
        out["chunked"] = await asyncio.to_thread(_chunked_post, port)
        out["pipelined"] = await asyncio.to_thread(_pipelined, port)
        out["abandoned"] = await asyncio.to_thread(_abandon_stream, port)
        os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it (loop handler)
        out["code"] = await asyncio.wait_for(server, timeout=20)
        return out

    out = asyncio.run(scenario())
    assert out["code"] == 0

    status, reason, headers, body = out["echo"]
    assert (status, reason) == (201, "Created Here")
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/echo/a%2Fb/%7Etide?x=1&y=%20z", "the target must reach the engine as sent"
    assert seen["body"] == '{"prompt": "tide"}'
    sent = {name.lower(): value for name, value in seen["headers"]}
    assert sent["authorization"] == "Bearer secret"
    assert sent["x-request-id"] == "r-1"
    assert sent["content-type"] == "application/json"
    for added in ("accept-encoding", "user-agent", "accept", "cookie", "x-hop"):
        assert added not in sent, f"the proxy must not add or pass {added!r}: {seen['headers']}"
    assert [v for k, v in headers if k.lower() == "set-cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    assert [v for k, v in headers if k.lower() == "x-custom"] == ["one", "two"]

    again = json.loads(out["again"][3])
    assert "cookie" not in {k.lower() for k, _ in again["headers"]}, "engine cookies must not be replayed"

    status, _, headers, body = out["zipped"]
    assert status == 200
    assert dict((k.lower(), v) for k, v in headers)["content-encoding"] == "gzip"
    assert gzip.decompress(body) == b"tide " * 200, "compressed bodies pass through byte for byte"

    events, times = out["stream"]
    assert events == [f"data: {i}".encode() for i in range(20)] + [b"data: [DONE]"]
    # 20 events 0.05 s apart: had the proxy buffered the stream, they would all arrive at once.
    assert times[-1] - times[0] > 0.5, f"stream events arrived together: {times[-1] - times[0]:.3f} s"

    head_status, head_body, after_head = out["head"]
    assert head_status == 201 and head_body == b""
    assert after_head["raw_path"] == "/echo/after-head", "the connection must stay usable after a HEAD"

    assert out["chunked"]["body"] == '{"a": 1}', "a chunked request body arrives whole"

    pipelined: bytes = out["pipelined"]
    assert pipelined.count(b"HTTP/1.1 201 Created Here") == 2, pipelined[:400]
    assert pipelined.index(b'"/echo/first"') < pipelined.index(b'"/echo/second"'), "answers in request order"

    assert out["abandoned"] == {"streams_done": 1, "streams_aborted": 1}, "a client hanging up must abort"
