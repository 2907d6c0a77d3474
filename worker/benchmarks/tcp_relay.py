"""The floor of any userspace hop: a byte relay between loopback TCP ports, with no HTTP parsing at all.

worker/benchmarks/overhead.py puts it in front of the same vLLM engine as the worker's proxy, so its
table shows what one extra loopback hop through a Python (uvloop) process costs on this machine before the
proxy does anything HTTP-aware: accept, connect upstream, two extra socket reads and writes per exchange,
two extra process wake-ups. The worker's proxy cannot be cheaper than this; what it adds on top is its
own cost.

Not part of the worker and never deployed. Run:  python tcp_relay.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import cast


class _Side(asyncio.Protocol):
    """One socket of a client/engine pair; bytes received are written to the peer as they come."""

    def __init__(self, upstream_port: int | None, peer: _Side | None = None) -> None:
        self.upstream_port = upstream_port
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.dialing: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.peer is None and self.upstream_port is not None:  # accepted client: dial the engine
            self.dialing = asyncio.ensure_future(self._dial(self.upstream_port))

    async def _dial(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        try:
            _, up = await loop.create_connection(lambda: _Side(None, self), "127.0.0.1", port)
        except OSError:
            self.transport.close()
            return
        self.peer = up
        for data in self.pending:
            assert up.transport is not None
            up.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
        else:
            peer.transport.write(data)

    def pause_writing(self) -> None:  # our socket is full: stop reading the peer
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
            return True  # half-close: keep the other direction open
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def relay(listen_port: int, upstream_port: int) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Side(upstream_port), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Entrypoint: ``tcp_relay.py LISTEN_PORT UPSTREAM_PORT``, on uvloop when installed (as the worker)."""
    coro = relay(int(sys.argv[1]), int(sys.argv[2]))
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
