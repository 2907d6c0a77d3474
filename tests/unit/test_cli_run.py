"""``tidal run`` refuses to start with one line on stderr and exit code 1 (never a traceback) when its
metrics or health port is taken or a Prometheus setting is malformed, before it contacts the cluster."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tidal.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    # A kubeconfig that does not exist: reaching the cluster would raise, so exit 1 proves an early stop.
    assert main(["run", "--kubeconfig=/nonexistent/kubeconfig", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tidal run: error: "), err
    assert "Traceback" not in err
    return err


def test_metrics_port_in_use(taken_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(
        capsys,
        [f"--metrics-port={taken_port}", "--metrics-address=127.0.0.1", "--liveness="],
    )
    assert f"metrics port {taken_port} on 127.0.0.1: already in use" in err


def test_health_port_in_use(taken_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["--metrics-port=0", f"--liveness=http://127.0.0.1:{taken_port}/healthz"])
    assert f"health port {taken_port} on 127.0.0.1: already in use" in err


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--prometheus-allow=prometheus:9090"], "not an http(s) URL"),
        (["--prometheus-ca-bundle=/nonexistent/ca.pem"], "CA bundle"),
    ],
)
def test_bad_prometheus_settings(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert text in one_line_error(capsys, ["--metrics-port=0", "--liveness=", *argv])
