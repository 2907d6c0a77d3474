"""A real Prometheus for the demo: loopback, 1 s scrapes, targets from a file_sd JSON file.

The demo's simulated fleet rewrites the targets file whenever worker pods come and go; Prometheus watches
it (inotify, plus a 1 s re-read) so the scrape targets follow the pods without a reload. The operator's
own ``/metrics`` is a second, static job. The binary is the system's ``prometheus`` (Debian package, see
``make system``); its TSDB lives in a scratch directory the caller removes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tidal.devcluster.cluster import free_port
from tidal.devcluster.process import Component, start_component, stop_component, tail

FLEET_JOB = "vllm"
OPERATOR_JOB = "tidal-operator"


class PrometheusError(RuntimeError):
    """Prometheus is missing or did not start; the message says why (with its log tail)."""


def find_prometheus() -> Path:
    """The ``prometheus`` binary on PATH or in /usr/bin."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        raise PrometheusError("`prometheus` not found on PATH or in /usr/bin: run `make system`")
    return Path(found)


def demo_config(
    targets_file: Path, operator_targets: Sequence[str] = (), scrape_interval: str = "1s"
) -> dict[str, Any]:
    """prometheus.yml: the fleet from ``targets_file`` (file_sd) and the operator (static)."""
    jobs: list[dict[str, Any]] = [
        {
            "job_name": FLEET_JOB,
            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
        }
    ]
    if operator_targets:
        jobs.append({"job_name": OPERATOR_JOB, "static_configs": [{"targets": list(operator_targets)}]})
    return {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval},
        "scrape_configs": jobs,
    }


@dataclass
class Prometheus:
    """A running Prometheus server."""

    url: str
    component: Component
    work_dir: Path

    def api(self, path: str, params: dict[str, str] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """GET ``/api/v1/<path>``: the decoded JSON answer (also for 4xx answers, which carry ``error``)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=timeout) as rsp:
                body: dict[str, Any] = json.load(rsp)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            body.setdefault("status", "error")
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (empty on error)."""
        answer = self.api("query", {"query": expr})
        if answer.get("status") != "success":
            return []
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def active_targets(self, job: str = FLEET_JOB) -> list[dict[str, Any]]:
        targets = self.api("targets").get("data", {}).get("activeTargets", [])
        return [t for t in targets if t.get("labels", {}).get("job") == job]

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.component.log_path, lines)

    def stop(self) -> None:
        stop_component(self.component, grace_s=10.0)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as rsp:
            return bool(rsp.status == 200)
    except OSError:
        return False


def start_prometheus(
    work_dir: Path,
    targets_file: Path,
    operator_targets: Sequence[str] = (),
    log_dir: Path | None = None,
    timeout_s: float = 60.0,
) -> Prometheus:
    """Write the config into ``work_dir``, start Prometheus on a free loopback port, wait until ready."""
    binary = find_prometheus()
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "prometheus.yml"
    config.write_text(yaml.safe_dump(demo_config(targets_file, operator_targets), sort_keys=False))
    last = ""
    for _attempt in range(3):  # a free port can be taken between choosing and binding it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        component = start_component(
            "prometheus",
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            log_dir or work_dir,
            env={**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "2")},
        )
        deadline = time.monotonic() + timeout_s
        while component.exited() is None and time.monotonic() < deadline:
            if _ready(url):
                return Prometheus(url, component, work_dir)
            time.sleep(0.1)
        last = tail(component.log_path, 30)
        stop_component(component, grace_s=5.0)
    raise PrometheusError(f"prometheus did not become ready:\n{last}")
