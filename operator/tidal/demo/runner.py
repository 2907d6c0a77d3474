"""The demo itself: everything `make demo` starts, what it shows while it runs, and the clean-up.

In order: the local control plane with fake GPU nodes (``tidal.devcluster``; in this process, or detached
with ``--keep`` so it outlives the demo), the CRDs, the operator's ServiceAccount bound to the chart's
RBAC rules, the simulated fleet (``tidal.demo.exporter``) and a real Prometheus scraping it through
file_sd, the operator (``tidal run`` as a subprocess, logging to a file, with a short autoscaler interval
and rate window), and the example ``LLMDeployment`` adjusted for the demo (its Prometheus URL, short
windows). Then, once a second: follow the worker pods (fleet endpoints and scrape targets), move the load
profile on, print a table row when something changed and every Event on the deployment as it arrives.
At the end (or on Ctrl-C / SIGTERM): a summary, then every process stopped and scratch data removed;
the logs stay under ``<state-dir>/logs`` and ``<state-dir>/devcluster/logs``.

What is run (options, the adjusted example) is in :mod:`tidal.demo.scenario`, re-exported here; the API
calls of the set-up and the show in :mod:`tidal.demo.kube`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from tidal.builders.names import deployment_selector, selector_string
from tidal.demo import display
from tidal.demo.exporter import PodInfo, SimulatedFleet
from tidal.demo.identity import (
    RULES_FILE,
    admin_server_and_ca,
    install_operator_identity,
    load_rules,
    request_token,
    token_kubeconfig,
)
from tidal.demo.kube import get_or_none, install_crds, prepare_namespace, wait_for
from tidal.demo.model import LoadProfile, ReplicaModel
from tidal.demo.prometheus import Prometheus, start_prometheus
from tidal.demo.scenario import AUTOSCALER_ENV, DemoOptions, demo_deployment, load_example
from tidal.devcluster.cluster import ClusterConfig, DevCluster, free_port
from tidal.devcluster.process import Component, start_component, stop_component, tail

log = logging.getLogger("tidal.demo")

OPERATOR_NAMESPACE = "tidal-system"
OPERATOR_ACCOUNT = "tidal-operator"

__all__ = ["Demo", "DemoInterrupted", "DemoOptions", "demo_deployment", "load_example"]


class DemoInterrupted(Exception):
    """SIGTERM arrived (Ctrl-C raises KeyboardInterrupt)."""


class Demo:
    """One run of the demo (see the module docstring)."""

    def __init__(self, options: DemoOptions) -> None:
        self.o = options
        self.state = options.state_dir.resolve()
        self.logs = self.state / "logs"
        self.palette = display.Palette(enabled=options.color)
        self.summary = display.Summary()
        self._cleanup: list[tuple[str, Callable[[], None]]] = []
        self.api_client: Any = None
        self.kubeconfig = self.state / "kubeconfig"
        self.fleet: SimulatedFleet | None = None
        self.prometheus: Prometheus | None = None
        self.operator: Component | None = None
        self.deployment_name = ""
        self._seen_events: set[str] = set()
        self._last_row: tuple[Any, ...] | None = None
        self._last_row_t = -1e9
        self._started = 0.0

    # -- output ------------------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.o.out, flush=True)

    def step(self, text: str) -> None:
        self.say(self.palette.paint(f"==> {text}", "bold"))

    # -- life cycle --------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, show, summarise, clean up. Exit code 0 only if a scale-up and a scale-down were seen."""
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_interrupted)
        began = time.monotonic()
        interrupted = failed = False
        try:
            self.setup()
            self.watch()
        except (KeyboardInterrupt, DemoInterrupted):
            interrupted = True
            self.say()
            self.say(self.palette.paint("interrupted: cleaning up", "warn"))
        except Exception as exc:
            failed = True
            log.exception("demo failed")
            self.say(self.palette.paint(f"demo failed: {type(exc).__name__}: {exc}", "warn"))
        finally:
            if self._started:
                self.summary.duration_s = time.monotonic() - self._started
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up even if asked twice
            try:
                if self._started:
                    for line in display.summary(self.summary, self.palette):
                        self.say(line)
                self.teardown()
            finally:
                signal.signal(signal.SIGTERM, previous)
        log.info("demo finished after %.1f s (interrupted=%s)", time.monotonic() - began, interrupted)
        if failed:
            return 2
        return 0 if self.summary.ok else 1

    def setup(self) -> None:
        o = self.o
        self.logs.mkdir(parents=True, exist_ok=True)
        _log_to(self.logs / "demo.log")
        example = load_example(o.example)
        self.deployment_name = str(example["metadata"]["name"])
        spec = example["spec"]
        model = ReplicaModel.for_model(
            gpu=str(spec.get("resources", {}).get("gpuType", "H100-80GB")),
            prompt_tokens=int(spec.get("recommendation", {}).get("expectedInputTokens", 1024)),
            output_tokens=int(spec.get("recommendation", {}).get("expectedOutputTokens", 256)),
            tpot_target_s=float(spec.get("autoscaling", {}).get("targets", {}).get("tpotP95Seconds", 0.1)),
        )
        profile = LoadProfile(o.duration_s, low=o.low, high=o.high)
        self.say(
            self.palette.paint(
                f"Tidal demo: {self.deployment_name} ({spec['model'].get('servedModelName', '')}) on fake "
                f"{spec.get('resources', {}).get('gpuType', '')} nodes; one replica serves "
                f"{model.capacity_rps:.1f} req/s at the TPOT target ({model.source}); load "
                f"{o.low:g}x -> {o.high:g}x -> {o.low:g}x of that over {o.duration_s:.0f} s",
                "bold",
            )
        )

        self.step(f"local control plane, {o.gpu_nodes} fake GPU nodes (state in {self.state})")
        self._start_cluster()
        from kubernetes import config as k8s_config

        self.api_client = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        install_crds(self.api_client)
        prepare_namespace(self.api_client, o.namespace)

        self.step("simulated vLLM fleet + Prometheus (1 s scrapes, file_sd follows the pods)")
        self.fleet = SimulatedFleet(
            model,
            profile,
            self.state / "fleet" / "targets.json",
            model_name=str(spec["model"].get("servedModelName", self.deployment_name)),
        )
        self._cleanup.append(("fleet", self.fleet.close))
        metrics_port, health_port = free_port(), free_port()
        self.prometheus = start_prometheus(
            self.state / "prometheus",
            self.fleet.targets_file,
            operator_targets=[f"127.0.0.1:{metrics_port}"],
            log_dir=self.logs,
        )
        prom = self.prometheus
        self._cleanup.append(("prometheus", prom.stop))
        self._cleanup.append(
            ("prometheus data", lambda: shutil.rmtree(self.state / "prometheus", ignore_errors=True))
        )
        self.say(f"    prometheus {prom.url}")

        self.step(f"operator (tidal run, log {self.logs / 'operator.log'})")
        self._start_operator(metrics_port, health_port, prom.url)

        doc = demo_deployment(example, o.namespace, prom.url)
        self.step(f"kubectl apply {o.example.name} (namespace {o.namespace}, demo windows)")
        from kubernetes import client

        from tidal.api import GROUP, PLURAL, VERSION

        client.CustomObjectsApi(self.api_client).create_namespaced_custom_object(
            GROUP, VERSION, o.namespace, PLURAL, doc
        )
        self.say(
            self.palette.paint(
                f"    kubectl --kubeconfig {self.kubeconfig} get llmd -n {o.namespace} -w  (another shell)",
                "dim",
            )
        )
        self.say()
        self.say(display.header())

    def _start_cluster(self) -> None:
        o = self.o
        cluster_dir = self.state / "devcluster"
        status = subprocess.run(
            [sys.executable, "-m", "tidal.devcluster", "status", f"--state-dir={self.state}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if status.returncode == 0:
            raise RuntimeError(
                f"a control plane from an earlier `--keep` run is still up in {self.state}; stop it with "
                f"`python -m tidal.devcluster down --state-dir {self.state}` or pick another --state-dir"
            )
        self._cleanup.append(("kubeconfigs", self._remove_kubeconfigs))
        if o.keep:
            # Detached (its own session), so it outlives the demo; stopped with `devcluster down`.
            argv = [
                sys.executable, "-m", "tidal.devcluster", "up", f"--state-dir={self.state}",
                f"--gpu-nodes={o.gpu_nodes}", f"--kubeconfig={self.kubeconfig}",
            ]  # fmt: skip
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"devcluster up failed:\n{result.stdout}{result.stderr}")
            self.say(f"    {result.stdout.strip().splitlines()[0] if result.stdout.strip() else 'ready'}")
            return
        cluster = DevCluster(
            ClusterConfig(work_dir=cluster_dir, kubeconfig_path=self.kubeconfig, gpu_nodes=o.gpu_nodes)
        )
        self._cleanup.append(("control plane", cluster.stop))
        self._cleanup.append(("control plane data", lambda: _remove_all_but_logs(cluster_dir)))
        cluster.start()
        self.say(f"    ready in {cluster.startup_seconds:.1f}s at {cluster.server}")

    def _operator_kubeconfig(self) -> Path:
        """The chart's least-privilege identity when the rules file is there (a source checkout)."""
        if not RULES_FILE.exists():
            log.warning("%s not found: the operator runs as cluster admin", RULES_FILE)
            return self.kubeconfig
        install_operator_identity(self.api_client, load_rules(), OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
        token = request_token(self.api_client, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
        server, ca = admin_server_and_ca(self.kubeconfig)
        return token_kubeconfig(
            self.state / "operator.kubeconfig",
            server,
            ca,
            f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}",
            token,
        )

    def _start_operator(self, metrics_port: int, health_port: int, prometheus_url: str) -> None:
        kubeconfig = self._operator_kubeconfig()
        argv = [
            sys.executable, "-c", "import sys; from tidal.cli import main; sys.exit(main())",
            "run", "--standalone", "--all-namespaces",
            f"--kubeconfig={kubeconfig}", f"--metrics-port={metrics_port}", "--metrics-address=127.0.0.1",
            f"--liveness=http://127.0.0.1:{health_port}/healthz", f"--prometheus-allow={prometheus_url}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        for key, value in AUTOSCALER_ENV.items():
            env.setdefault(key, value)
        component = start_component("operator", argv, self.logs, env=env)
        self.operator = component
        self._cleanup.append(("operator", lambda: stop_component(component, grace_s=10.0)))
        url = f"http://127.0.0.1:{health_port}/healthz"

        def healthy() -> bool:
            if component.exited() is not None:
                raise RuntimeError(f"operator exited with {component.exited()}:\n{tail(component.log_path)}")
            with urllib.request.urlopen(url, timeout=2) as rsp:
                return bool(rsp.status == 200)

        wait_for(healthy, 60, "operator /healthz", errors=(OSError,))

    def _remove_kubeconfigs(self) -> None:
        """Credentials of a cluster that is gone are useless; with ``--keep`` they stay."""
        if not self.o.keep:
            self.kubeconfig.unlink(missing_ok=True)
        (self.state / "operator.kubeconfig").unlink(missing_ok=True)

    def teardown(self) -> None:
        """Undo setup, newest first; with ``--keep`` the control plane stays up."""
        for what, undo in reversed(self._cleanup):
            try:
                undo()
            except Exception as exc:  # keep cleaning up; say what failed
                self.say(self.palette.paint(f"clean-up of {what} failed: {exc}", "warn"))
        self._cleanup.clear()
        if self.api_client is not None:
            with contextlib.suppress(Exception):
                self.api_client.close()
            self.api_client = None
        self.say(f"logs: {self.logs}; control plane logs: {self.state / 'devcluster' / 'logs'}")
        if self.o.keep:
            self.say(
                f"control plane left running: kubectl --kubeconfig {self.kubeconfig} get llmd,pods -A\n"
                f"stop it with: python -m tidal.devcluster down --state-dir {self.state}"
            )

    # -- the show ----------------------------------------------------------------------------------

    def watch(self) -> None:
        from kubernetes import client

        from tidal.api import GROUP, PLURAL, VERSION

        assert self.fleet is not None
        core = client.CoreV1Api(self.api_client)
        custom = client.CustomObjectsApi(self.api_client)
        selector = selector_string(deployment_selector(self.deployment_name))
        self._started = time.monotonic()
        next_tick = self._started
        while True:
            t = time.monotonic() - self._started
            if t >= self.o.duration_s:
                break
            pods = get_or_none(lambda: core.list_namespaced_pod(self.o.namespace, label_selector=selector))
            if pods is not None:  # a failed list keeps the last known pods
                self.fleet.sync([p for p in (PodInfo.from_pod(pod) for pod in pods.items) if p is not None])
            offered = self.fleet.tick(t)
            obj = get_or_none(
                lambda: custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.o.namespace, PLURAL, self.deployment_name
                )
            )
            self._events(core, t)
            desired, ready, signal_summary, last = display.status_fields(obj)
            self.summary.observe(desired, ready)
            totals = self.fleet.totals()
            r = display.Row(
                t, self.fleet.profile.phase(t), offered, totals["served_rps"], totals["waiting"],
                desired, ready, signal_summary, last,
            )  # fmt: skip
            if r.key() != self._last_row or t - self._last_row_t >= 10:
                self.say(display.row(r))
                self._last_row, self._last_row_t = r.key(), t
            next_tick += 1.0
            time.sleep(max(0.0, next_tick - time.monotonic()))
        self._events(core, time.monotonic() - self._started)  # whatever arrived during the last second

    def _events(self, core: Any, t: float) -> None:
        answer = get_or_none(
            lambda: core.list_namespaced_event(
                self.o.namespace, field_selector=f"involvedObject.name={self.deployment_name}"
            )
        )
        if answer is None:
            return
        fresh = [e for e in answer.items if e.metadata.uid not in self._seen_events]
        fresh.sort(
            key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp, e.metadata.name)
        )
        for e in fresh:
            self._seen_events.add(e.metadata.uid)
            line = display.EventLine(t, e.type or "Normal", e.reason or "", (e.message or "").strip())
            self.summary.record(line)
            self.say(display.event(line, self.palette))


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise DemoInterrupted(f"signal {signum}")


def _remove_all_but_logs(directory: Path) -> None:
    """Delete a component's scratch data (etcd, certificates, kubeconfigs), keep its ``logs``."""
    if not directory.exists():
        return
    for entry in directory.iterdir():
        if entry.name == "logs":
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
