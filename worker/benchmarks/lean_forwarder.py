"""PROTOTYPE, for measurement only: the bare forwarder that worker/tidal_worker/frontdoor.py grew from.

Why it is kept: it is the cheapest HTTP-aware hop (httptools parses the request head and the response framing,
the engine's response bytes are relayed untouched, engine connections are pooled), without the worker's
readiness routing and drain tracking, so `overhead.py --third lean` and `proxy_hop.py --third lean` can show
how much those add on top. Not deployed: no readiness, no drain, no HEAD, no pipelining, no backpressure.

Run:  python lean_forwarder.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import cast

import httptools

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailers", b"upgrade", b"host"}
)

BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _nodelay(transport: asyncio.BaseTransport) -> asyncio.Transport:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it


class _Engine(asyncio.Protocol):
    """One pooled connection to the engine; relays response bytes to the client it serves."""

    def __init__(self, pool: list[_Engine]) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.client: _Client | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            return  # an interim response; the real one follows on the same exchange
        client, self.client = self.client, None
        keep = self.parser.should_keep_alive()
        self.parser = httptools.HttpResponseParser(self)
        if keep and self.transport is not None and not self.transport.is_closing():
            self.pool.append(self)
        elif self.transport is not None:
            self.transport.close()
        if client is not None:
            client.exchange_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()  # the engine went away mid-response: the client sees the cut


class _Client(asyncio.Protocol):
    """One client connection: parse each request head, send it and its body on a pooled engine connection."""

    def __init__(self, upstream_port: int, pool: list[_Engine]) -> None:
        self.upstream_port = upstream_port
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.engine: _Engine | None = None
        self.pending: list[bytes] = []
        self.dialing: asyncio.Task[None] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        drop = set(HOP_BY_HOP)
        for name, value in self.headers:
            if name.lower() == b"connection":
                drop |= {token.strip().lower() for token in value.split(b",")}
        self.chunked = any(name.lower() == b"transfer-encoding" for name, _ in self.headers)
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"]
        for name, value in self.headers:
            if (
                name.lower() not in drop
            ):  # Content-Length / Transfer-Encoding stay: the body is sent as framed
                head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self._send(b"".join(head))

    def on_body(self, body: bytes) -> None:
        self._send(b"%x\r\n%b\r\n" % (len(body), body) if self.chunked else body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self._send(b"0\r\n\r\n")

    def _send(self, data: bytes) -> None:
        if self.engine is None and not self.pending and self.pool:
            self.engine = self.pool.pop()
            self.engine.client = self
        if self.engine is not None and self.engine.transport is not None and not self.pending:
            self.engine.transport.write(data)
            return
        self.pending.append(data)
        if self.dialing is None:
            self.dialing = asyncio.ensure_future(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, engine = await loop.create_connection(
                lambda: _Engine(self.pool), "127.0.0.1", self.upstream_port
            )
        except OSError:
            if self.transport is not None:
                self.transport.write(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                self.transport.close()
            return
        finally:
            self.dialing = None
        engine.client = self
        self.engine = engine
        data, self.pending = b"".join(self.pending), []
        assert engine.transport is not None
        engine.transport.write(data)

    def exchange_done(self) -> None:
        self.engine = None
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.engine is not None and self.engine.transport is not None:
            self.engine.transport.close()  # the client went away: the engine aborts the request


async def forward(listen_port: int, upstream_port: int) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    pool: list[_Engine] = []
    server = await loop.create_server(lambda: _Client(upstream_port, pool), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Entrypoint: ``lean_forwarder.py LISTEN_PORT UPSTREAM_PORT``, on uvloop when installed."""
    coro = forward(int(sys.argv[1]), int(sys.argv[2]))
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
