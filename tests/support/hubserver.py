"""An in-process stand-in for the Hugging Face Hub's file API, on a loopback port.

Why: ``tidal recommend --model org/name`` and the operator fetch ``config.json`` with ``huggingface_hub``;
testing that against the real Hub would need the network and a real token. This server speaks the part of
the API ``hf_hub_download`` uses: ``HEAD``/``GET /{org}/{name}/resolve/{revision}/{filename}`` answered with
the headers the client requires (``ETag``, ``X-Repo-Commit``, ``Content-Length``) and the Hub's error
headers (``X-Error-Code: RepoNotFound`` / ``EntryNotFound``). A repository may be private: then only a
request with ``Authorization: Bearer <token>`` is answered, others get 401 as from the Hub. Every request is
recorded (method, path, authorization) so tests can assert what was asked and how.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HubRepo:
    """One repository: files by name, and the token it needs (``None``: public)."""

    files: dict[str, bytes]
    token: str | None = None
    commit: str = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """The repositories served and the requests seen."""

    repos: dict[str, HubRepo] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def add(self, repo_id: str, files: dict[str, Any], token: str | None = None) -> None:
        """Serve ``files`` (dicts are JSON-encoded) under ``repo_id``."""
        raw = {k: v if isinstance(v, bytes) else json.dumps(v).encode() for k, v in files.items()}
        self.repos[repo_id] = HubRepo(raw, token)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _answer(self, send_body: bool) -> None:
            auth = self.headers.get("Authorization")
            hub.requests.append((self.command, self.path, auth))
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "RepoNotFound", "Repository not found")
            repo = hub.repos.get(f"{parts[0]}/{parts[1]}")
            filename = "/".join(parts[4:])
            if repo is None or (repo.token is not None and auth != f"Bearer {repo.token}"):
                status = 401 if repo is not None or auth is None else 404
                return self._error(status, "RepoNotFound", "Invalid username or password.")
            body = repo.files.get(filename)
            if body is None:
                return self._error(404, "EntryNotFound", "Entry not found", repo.commit)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

    return Handler


@contextmanager
def fake_hub() -> Iterator[FakeHub]:
    """A running :class:`FakeHub` on 127.0.0.1 and a free port (``hub.url`` is its endpoint)."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
