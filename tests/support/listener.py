"""A local HTTP listener that counts the TCP connections it accepts (and answers 500 with a body that must
never reach a status): the proof that the operator never fetched a URL it refused."""

from __future__ import annotations

import http.server
import socket
import threading
from typing import Any

SECRET_BODY = b"secret-token-in-body"


class CountingListener:
    """Counts accepted connections; every GET gets ``500`` with :data:`SECRET_BODY`."""

    def __init__(self) -> None:
        self.connections = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(500)
                self.end_headers()
                self.wfile.write(SECRET_BODY)

            def log_message(self, *_: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                outer.connections += 1
                return super().get_request()

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
