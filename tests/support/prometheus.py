"""A real Prometheus server for the ``metrics`` tier: started on a free loopback port, stopped afterwards.

``running_prometheus(targets)`` writes a config with static scrape targets (each job with its own labels),
a 1 s scrape and rule-evaluation interval and optional rule files, starts the Debian ``prometheus`` binary
with a temporary TSDB, waits until it is ready and yields a ``PrometheusServer`` (its URL, a raw query helper
that returns the API's JSON including errors, a ``prometheus-api-client`` connection, and waits for targets).
The process is terminated (then killed) on exit, and the log tail is attached to start-up errors.

When the binary is missing this raises ``PrometheusNotInstalledError``: tests must FAIL with the message
(run ``make system``), never skip, so CI cannot pass without the tier.

    with running_prometheus([ScrapeTarget("tidal-operator", ["127.0.0.1:9090"], {"tier": "test"})]) as prom:
        prom.wait_for_targets_up()
        prom.query("up")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

INSTALL_HINT = "run `make system` (scripts/install-system.sh: apt-get install prometheus)"


class PrometheusNotInstalledError(RuntimeError):
    """The ``prometheus`` binary is not installed."""


class PrometheusStartError(RuntimeError):
    """Prometheus did not become ready; the message carries its log tail."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job: ``host:port`` targets sharing ``labels`` (added to every scraped series)."""

    job: str
    targets: Sequence[str]
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"
    honor_labels: bool = True
    """Keep the scraped series' own labels on conflicts (the operator's ``namespace``/``name``)."""


def find_prometheus(name: str = "prometheus") -> Path:
    """The path of the ``prometheus`` (or ``promtool``) binary, or ``PrometheusNotInstalledError``."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        raise PrometheusNotInstalledError(f"`{name}` not found on PATH or in /usr/bin: {INSTALL_HINT}")
    return Path(found)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape_config(
    targets: Sequence[ScrapeTarget],
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    rule_files: Sequence[Path] = (),
) -> dict[str, Any]:
    """The prometheus.yml for ``targets`` (usable on its own, e.g. by a demo)."""
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": t.job,
                "metrics_path": t.metrics_path,
                "honor_labels": t.honor_labels,
                "static_configs": [{"targets": list(t.targets), "labels": dict(t.labels)}],
            }
            for t in targets
        ],
    }


@dataclass
class PrometheusServer:
    url: str
    port: int
    config_path: Path
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def api(
        self, path: str, params: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """GET ``/api/v1/<path>``: the decoded JSON body, also for 4xx answers (which carry ``error``)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=timeout) as rsp:
                body: dict[str, Any] = json.load(rsp)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            body.setdefault("status", "error")
            body.setdefault("error", f"HTTP {exc.code}")
        return body

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """An instant query: the full API answer (``status``, ``data`` or ``errorType``/``error``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", params)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        """An instant query that must succeed: its result list."""
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def client(self) -> Any:
        """A ``prometheus_api_client.PrometheusConnect`` for this server."""
        from prometheus_api_client import PrometheusConnect

        return PrometheusConnect(url=self.url, disable_ssl=True)

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until every configured target has been scraped successfully; returns the active targets."""
        deadline = time.monotonic() + timeout
        active: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            active = self.api("targets").get("data", {}).get("activeTargets", [])
            if active and all(t.get("health") == "up" for t in active):
                return active
            time.sleep(0.25)
        states = [(t.get("scrapeUrl"), t.get("health"), t.get("lastError")) for t in active]
        raise TimeoutError(f"targets not up after {timeout:.0f}s: {states}")

    def wait_for_series(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``expr`` returns at least one series; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.vector(expr)
            if result:
                return result
            time.sleep(0.25)
        raise TimeoutError(f"no series for {expr} after {timeout:.0f}s")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as rsp:
            return bool(rsp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_prometheus(
    targets: Sequence[ScrapeTarget] = (),
    *,
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    workdir: Path | None = None,
    startup_timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> Iterator[PrometheusServer]:
    """Start Prometheus on a free loopback port with ``targets``; stop it (and delete its TSDB) on exit."""
    binary = find_prometheus()
    owned = workdir is None
    root = Path(tempfile.mkdtemp(prefix="tidal-prometheus-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "prometheus.yml"
    config = scrape_config(
        targets,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
        rule_files=rule_files,
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    data_dir = root / "data"
    log_path = root / "prometheus.log"
    server: PrometheusServer | None = None
    try:
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [
                        str(binary),
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={data_dir}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1d",
                        "--log.level=warn",
                        *extra_args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=root,
                    env={**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "2")},
                )
            server = PrometheusServer(url, port, config_path, data_dir, log_path, proc)
            deadline = time.monotonic() + startup_timeout
            while proc.poll() is None and time.monotonic() < deadline and not _ready(url):
                time.sleep(0.1)
            if proc.poll() is None and _ready(url):
                break
            _stop(proc)
            if time.monotonic() >= deadline:
                raise PrometheusStartError(f"not ready in {startup_timeout:.0f}s:\n{server.log_tail()}")
        else:
            raise PrometheusStartError(f"exited at start-up 3 times:\n{server.log_tail() if server else ''}")
        yield server
    finally:
        if server is not None:
            _stop(server.process)
        if owned:
            shutil.rmtree(root, ignore_errors=True)
