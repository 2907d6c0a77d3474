"""The worker's public port: a lean HTTP/1.1 forwarder that sends API requests straight to vLLM while ready.

Why not the aiohttp proxy alone: aiohttp's server and client together cost about 0.4-0.6 ms of Python work
per request even on an idle CPU, more than 5 % of a short completion (worker/benchmarks/, figures in
docs/worker-contract.md). Here httptools (installed with vLLM's own server) parses only the request head, to
drop hop-by-hop headers and choose where the request goes, and the response framing, to see where each
exchange ends; the engine's response bytes are relayed untouched as they arrive.

Routing, decided per request from its head:

- while the worker is ready, API requests (any path but the control ones, methods other than HEAD, no
  ``Expect``) go on a pooled keep-alive connection to vLLM, counted in flight for the drain;
- everything else (``/live``, ``/ready``, ``/health``, ``/metrics``, the 503 refusals while starting or
  draining, HEAD, ``Expect: 100-continue``) goes the same way to the aiohttp application of server.py,
  listening on an internal loopback port: its semantics stay in one place.

Requests on one connection are answered in order (pipelined ones wait their turn); reading pauses on either
side while the other side's buffer is full; a client that goes away closes its engine connection (vLLM aborts
the request); an engine connection that breaks mid-response cuts the client's connection (the client sees the
cut); an engine that cannot be reached gives a JSON 502. Pooled connections are dropped when idle a little
before the engine would drop them (server.upstream_keepalive_seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from contextlib import AbstractContextManager
from typing import cast

import httptools

from .drain import DrainController

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"proxy-authenticate",
     b"te", b"trailers", b"upgrade", b"host"}
)  # fmt: skip
CONTROL_PATHS = frozenset({b"/live", b"/ready", b"/health", b"/metrics"})
DIRECT_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
MAX_QUEUED = 8  # pipelined requests read ahead on one connection before reading pauses


def _error_response(status: int, reason: str, message: str, kind: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it


class Upstream:
    """Pooled keep-alive connections to one loopback HTTP server (the engine, or the internal application)."""

    def __init__(self, port: int, keepalive_seconds: float) -> None:
        self.port = port
        self.keepalive_seconds = keepalive_seconds
        self.idle: list[_UpstreamConnection] = []
        self.closed = False

    def acquire(self) -> _UpstreamConnection | None:
        """An idle pooled connection, or None (dropping those idle too long or closing)."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                if now - conn.idle_since < self.keepalive_seconds:
                    return conn
                conn.transport.close()
        return None

    def release(self, conn: _UpstreamConnection) -> None:
        """Keep a connection whose exchange ended cleanly."""
        if self.closed or conn.transport is None or conn.transport.is_closing():
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    async def connect(self) -> _UpstreamConnection:
        """A new connection (raises OSError when nothing listens)."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _UpstreamConnection(self), "127.0.0.1", self.port)
        return conn

    def close(self) -> None:
        """Close the idle connections and keep no more."""
        self.closed = True
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


class _HeadersOnlyError(Exception):
    """Raised from the response parser's headers callback: the answer to a HEAD request has no body."""


class _UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream: relays the response of its current exchange to its client."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = time.monotonic()
        self.head_keep_alive = False
        self.chunk = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = _transport(transport)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # nothing asked: a stray byte from the engine; do not reuse this connection
            if self.transport is not None:
                self.transport.close()
            return
        client = ex.client.transport
        if client is not None:
            client.write(data)
        self.chunk = data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadersOnlyError):
                self._complete(keep=self.head_keep_alive)
            else:
                raise
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()  # connection_lost cuts the client

    def on_headers_complete(self) -> None:
        if self.exchange is not None and self.exchange.head_only and self.parser.get_status_code() >= 200:
            # A HEAD answer may carry no length at all, which the parser reads as "until EOF": judge by the
            # version and the Connection header (in the chunk being parsed; a header split across chunks
            # only costs the client its kept-alive connection).
            self.head_keep_alive = (
                self.parser.get_http_version() == "1.1" and b"connection: close" not in self.chunk.lower()
            )
            raise _HeadersOnlyError

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim response (100 Continue): the final one follows
        self._complete(keep=self.parser.should_keep_alive())

    def _complete(self, keep: bool) -> None:
        ex, self.exchange = self.exchange, None
        self.parser = httptools.HttpResponseParser(self)
        keep = keep and ex is not None and ex.request_sent  # an early answer leaves the request half sent
        if keep:
            self.upstream.release(self)
        elif self.transport is not None:
            self.transport.close()
        if ex is not None:
            ex.client.exchange_done(ex, response_keep_alive=keep)

    def pause_writing(self) -> None:  # the upstream is slow to take a request body
        if self.exchange is not None and self.exchange.client.transport is not None:
            self.exchange.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None and self.exchange.client.transport is not None:
            self.exchange.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        with contextlib.suppress(ValueError):
            self.upstream.idle.remove(self)
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.client.upstream_lost(ex)


class _Exchange:
    """One request on a client connection: where it goes, the bytes waiting to go, its drain tracking."""

    def __init__(self, client: _ClientConnection) -> None:
        self.client = client
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.upstream: Upstream | None = None
        self.conn: _UpstreamConnection | None = None
        self.pending: list[bytes] = []
        self.connecting = False
        self.connect_task: asyncio.Future[None] | None = None
        self.keep_alive = True
        self.head_only = False
        self.chunked = False
        self.request_sent = False
        self.version = b"1.1"
        self.tracked: AbstractContextManager[None] | None = None

    def untrack(self) -> None:
        if self.tracked is not None:
            tracked, self.tracked = self.tracked, None
            tracked.__exit__(None, None, None)


class FrontDoor:
    """Shared state of the public listener: the drain controller, the two upstreams, the open connections."""

    def __init__(self, ctl: DrainController, engine: Upstream, app: Upstream) -> None:
        self.ctl = ctl
        self.engine = engine
        self.app = app
        self.clients: set[_ClientConnection] = set()

    def protocol(self) -> _ClientConnection:
        """Protocol factory for ``loop.create_server``."""
        return _ClientConnection(self)

    def close(self) -> None:
        """Close every client connection and the pools (after the drain)."""
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
        self.engine.close()
        self.app.close()


class _ClientConnection(asyncio.Protocol):
    """One client connection: parse request heads, send each request upstream, answer in order."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Exchange] = deque()
        self.parsing: _Exchange | None = None
        self.reading_paused = False

    # -- client side --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = _transport(transport)
        self.door.clients.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_error_response(501, "Not Implemented", "no protocol upgrades here", "Error"))
        except httptools.HttpParserError:
            self._fail(_error_response(400, "Bad Request", "malformed HTTP request", "BadRequest"))

    def on_message_begin(self) -> None:
        ex = _Exchange(self)
        self.parsing = ex
        self.queue.append(ex)
        if len(self.queue) > MAX_QUEUED and self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True

    def on_url(self, url: bytes) -> None:
        if self.parsing is not None:
            self.parsing.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.parsing is not None:
            self.parsing.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        method = self.parser.get_method()
        ex.keep_alive = self.parser.should_keep_alive()
        ex.version = self.parser.get_http_version().encode()
        ex.head_only = method == b"HEAD"
        drop = set(HOP_BY_HOP)
        expect = False
        for name, value in ex.headers:
            lower = name.lower()
            if lower == b"connection":
                drop |= {token.strip().lower() for token in value.split(b",")}
            elif lower == b"transfer-encoding":
                ex.chunked = True
            elif lower == b"expect":
                expect = True
        path = ex.url.split(b"?", 1)[0]
        door = self.door
        direct = door.ctl.ready and method in DIRECT_METHODS and not expect and path not in CONTROL_PATHS
        ex.upstream = door.engine if direct else door.app
        if direct:
            ex.tracked = door.ctl.track()
            ex.tracked.__enter__()
        head = [method, b" ", ex.url, b" HTTP/", ex.version, b"\r\nHost: 127.0.0.1\r\n"]
        for name, value in ex.headers:
            if name.lower() not in drop:  # Content-Length / Transfer-Encoding stay: the body goes as framed
                head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        ex.headers = []
        self._send(ex, b"".join(head))

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self._send(self.parsing, b"%x\r\n%b\r\n" % (len(body), body) if self.parsing.chunked else body)

    def on_message_complete(self) -> None:
        ex, self.parsing = self.parsing, None
        if ex is not None:
            if ex.chunked:
                self._send(ex, b"0\r\n\r\n")
            ex.request_sent = True

    def pause_writing(self) -> None:  # the client is slow to read the response: stop reading the upstream
        if self.queue and self.queue[0].conn is not None and self.queue[0].conn.transport is not None:
            self.queue[0].conn.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.queue and self.queue[0].conn is not None and self.queue[0].conn.transport is not None:
            self.queue[0].conn.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.door.clients.discard(self)
        while self.queue:
            ex = self.queue.popleft()
            ex.untrack()
            conn, ex.conn = ex.conn, None
            if conn is not None:
                conn.exchange = None
                if conn.transport is not None:
                    conn.transport.close()  # vLLM sees the disconnect and aborts the request

    # -- upstream side --

    def _send(self, ex: _Exchange, data: bytes) -> None:
        if ex not in self.queue:  # already answered (early) or abandoned: the rest of its body goes nowhere
            return
        if ex is not self.queue[0] or ex.connecting:  # an earlier request is still being answered
            ex.pending.append(data)
            return
        if ex.conn is None:
            assert ex.upstream is not None
            conn = ex.upstream.acquire()
            if conn is None:
                ex.pending.append(data)
                ex.connecting = True
                ex.connect_task = asyncio.ensure_future(self._connect(ex))
                return
            conn.exchange = ex
            ex.conn = conn
        if ex.conn.transport is not None:
            ex.conn.transport.write(data)

    async def _connect(self, ex: _Exchange) -> None:
        assert ex.upstream is not None
        try:
            conn = await ex.upstream.connect()
        except OSError as exc:
            self._fail(_error_response(502, "Bad Gateway", f"engine unavailable: {exc}", "BadGateway"))
            return
        ex.connecting = False
        if self.transport is None or ex not in self.queue:  # the client left meanwhile
            if conn.transport is not None:
                conn.transport.close()
            return
        conn.exchange = ex
        ex.conn = conn
        self._flush(ex)

    def _flush(self, ex: _Exchange) -> None:
        pending, ex.pending = ex.pending, []
        if not pending:
            return
        if ex.conn is None:
            for data in pending:
                self._send(ex, data)
        elif ex.conn.transport is not None:
            ex.conn.transport.writelines(pending)

    def exchange_done(self, ex: _Exchange, response_keep_alive: bool) -> None:
        """The upstream sent the whole response of `ex` (the first in the queue)."""
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        ex.conn = None
        ex.untrack()
        if not (ex.keep_alive and response_keep_alive):
            if self.transport is not None:
                self.transport.close()  # after the buffered response bytes are written
            return
        if self.reading_paused and len(self.queue) <= MAX_QUEUED and self.transport is not None:
            self.transport.resume_reading()
            self.reading_paused = False
        if self.queue:
            self._flush(self.queue[0])

    def upstream_lost(self, ex: _Exchange) -> None:
        """The upstream connection of `ex` closed before its response ended: the client sees the cut."""
        ex.conn = None
        ex.untrack()
        if self.transport is not None:
            self.transport.close()

    def _fail(self, response: bytes) -> None:
        if self.transport is not None:
            if not any(ex.conn is not None for ex in self.queue):  # nothing relayed yet: answer, then close
                self.transport.write(response)
            self.transport.close()
