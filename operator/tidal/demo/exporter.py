"""The simulated fleet: one vLLM-format ``/metrics`` endpoint per running worker pod, and the Prometheus
file-based service discovery that follows them.

KWOK runs the worker pods without containers, so nothing answers on their ports. For each pod that is
Running (and not being deleted) the demo opens an HTTP server on a loopback port that serves vLLM's
metric names and labels (``vllm:time_to_first_token_seconds``, ``vllm:num_requests_waiting``, ...), with
values from :mod:`tidal.demo.model` under the offered load split over the pods that are Ready. Every
change of the set of pods rewrites a ``file_sd_configs`` JSON file (atomically), so Prometheus scrapes the
pods as they come and go, with the target labels the operator's queries select on: ``namespace``, ``pod``,
``tidal_dev_deployment`` and ``tidal_dev_replica`` (from the pod's ``tidal.dev/*`` labels).

The exposition is prometheus_client's ``generate_latest`` (the classic text format, as vLLM serves it),
from a collector that reads the replica's state under a lock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from tidal.builders.names import DEPLOYMENT_LABEL, REPLICA_LABEL
from tidal.demo.model import Histogram, LoadProfile, ReplicaModel, ReplicaState, split_load

log = logging.getLogger("tidal.demo.fleet")

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text exposition format (what vLLM's /metrics answers; not OpenMetrics)."""
LABELS = ("model_name", "engine")


@dataclass(frozen=True)
class PodInfo:
    """The parts of a worker pod the fleet needs."""

    namespace: str
    name: str
    deployment: str
    """The pod's ``tidal.dev/deployment`` label (``tidal.builders.names.label_value`` of the name)."""
    replica: str
    """The pod's ``tidal.dev/replica`` label."""
    ready: bool

    @classmethod
    def from_pod(cls, pod: Any) -> PodInfo | None:
        """A kubernetes ``V1Pod`` as a fleet member: None unless it is Running and not being deleted."""
        meta, status = pod.metadata, pod.status
        if meta.deletion_timestamp is not None or status is None or status.phase != "Running":
            return None
        labels = meta.labels or {}
        ready = any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))
        return cls(
            namespace=meta.namespace,
            name=meta.name,
            deployment=labels.get(DEPLOYMENT_LABEL, ""),
            replica=labels.get(REPLICA_LABEL, ""),
            ready=ready,
        )

    def target_labels(self) -> dict[str, str]:
        """The labels Prometheus attaches to every series scraped from this pod."""
        return {
            "namespace": self.namespace,
            "pod": self.name,
            "tidal_dev_deployment": self.deployment,
            "tidal_dev_replica": self.replica,
        }


class VLLMCollector:
    """A prometheus_client collector that renders one replica's :class:`ReplicaState` as vLLM metrics."""

    def __init__(self, read: Callable[[], ReplicaState], model_name: str, engine: str = "0") -> None:
        self._read = read
        self._labels = [model_name, engine]

    def describe(self) -> Iterable[Metric]:
        """Nothing up front (the registry must not call :meth:`collect` at registration)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families, from a consistent copy of the state."""
        s = self._read()
        lv = self._labels
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", s.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_cache_usage),
        ):
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(lv, round(value, 3) if name != "vllm:kv_cache_usage_perc" else value)
            yield g
        for name, doc, value in (
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", s.preemptions),
        ):
            c = CounterMetricFamily(name, doc, labels=LABELS)
            c.add_metric(lv, value)
            yield c
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=(*LABELS, "finished_reason"),
        )
        success.add_metric([*lv, "length"], s.requests)
        yield success
        for name, doc, hist in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", s.ttft),
            ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", s.itl),
            ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", s.e2e),
            (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                s.queue_time,
            ),
        ):
            h = HistogramMetricFamily(name, doc, labels=LABELS)
            h.add_metric(lv, hist.buckets(), hist.total)
            yield h


def _copy_state(state: ReplicaState) -> ReplicaState:
    def hist(h: Histogram) -> Histogram:
        return Histogram(h.bounds, list(h.cumulative), h.total, h.count)

    return ReplicaState(
        waiting=state.waiting,
        running=state.running,
        kv_cache_usage=state.kv_cache_usage,
        offered_rps=state.offered_rps,
        served_rps=state.served_rps,
        requests=state.requests,
        prompt_tokens=state.prompt_tokens,
        generation_tokens=state.generation_tokens,
        preemptions=state.preemptions,
        ttft=hist(state.ttft),
        itl=hist(state.itl),
        e2e=hist(state.e2e),
        queue_time=hist(state.queue_time),
    )


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", TEXT_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry


@dataclass
class PodEndpoint:
    """One pod's metrics server on ``127.0.0.1:<port>`` and the replica state behind it."""

    pod: PodInfo
    model_name: str
    state: ReplicaState = field(default_factory=ReplicaState)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: _MetricsServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(VLLMCollector(self.snapshot, self.model_name))
        server = _MetricsServer(("127.0.0.1", 0), _Handler)
        server.registry = registry
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"metrics-{self.pod.name}"
        )
        self._thread.daemon = True
        self._thread.start()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("endpoint not started")
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def snapshot(self) -> ReplicaState:
        with self.lock:
            return _copy_state(self.state)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None


class SimulatedFleet:
    """The pods' metrics endpoints, their load, and the file_sd targets file Prometheus reads.

    Call :meth:`sync` with the pods seen in the cluster and :meth:`tick` with the clock (seconds since
    the load profile started); :meth:`close` stops every endpoint.
    """

    def __init__(
        self,
        model: ReplicaModel,
        profile: LoadProfile,
        targets_file: Path,
        model_name: str = "llama-3.1-8b-instruct",
    ) -> None:
        self.model = model
        self.profile = profile
        self.targets_file = targets_file
        self.model_name = model_name
        self.endpoints: dict[tuple[str, str], PodEndpoint] = {}
        self._last_t: float | None = None
        self._written: list[dict[str, Any]] | None = None
        self.offered_rps = 0.0
        self.write_targets()

    # -- membership ---------------------------------------------------------------------------------

    def sync(self, pods: Sequence[PodInfo]) -> bool:
        """Follow the cluster: endpoints for new running pods, none for pods gone; True if targets changed."""
        seen = {(p.namespace, p.name): p for p in pods}
        for key in [k for k in self.endpoints if k not in seen]:
            self.endpoints.pop(key).stop()
            log.info("pod %s/%s gone: endpoint stopped", *key)
        for key, pod in seen.items():
            ep = self.endpoints.get(key)
            if ep is None:
                ep = PodEndpoint(pod, self.model_name)
                ep.start()
                self.endpoints[key] = ep
                log.info("pod %s/%s running: metrics on %s", pod.namespace, pod.name, ep.address)
            else:
                ep.pod = pod  # readiness may have changed
        return self.write_targets()

    def targets(self) -> list[dict[str, Any]]:
        """The file_sd document: one target group per pod, sorted by pod name."""
        return [
            {"targets": [ep.address], "labels": ep.pod.target_labels()}
            for _, ep in sorted(self.endpoints.items())
        ]

    def write_targets(self) -> bool:
        """Rewrite the targets file (atomically) when the targets changed."""
        doc = self.targets()
        if doc == self._written:
            return False
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_file.with_name(self.targets_file.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(self.targets_file)
        self._written = doc
        return True

    # -- load ---------------------------------------------------------------------------------------

    def ready_pods(self) -> list[str]:
        return sorted(ep.pod.name for ep in self.endpoints.values() if ep.pod.ready)

    def tick(self, t: float) -> float:
        """Advance every replica to time ``t``; returns the offered load (requests/s) at ``t``."""
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        self.offered_rps = self.profile.level(t) * self.model.capacity_rps
        ready = {ep.pod.name: ep.state.waiting for ep in self.endpoints.values() if ep.pod.ready}
        shares = split_load(self.offered_rps, ready)
        for ep in self.endpoints.values():
            with ep.lock:
                self.model.advance(ep.state, shares.get(ep.pod.name, 0.0), dt)
        return self.offered_rps

    def totals(self) -> dict[str, float]:
        """Fleet sums for the demo's table: waiting, running, served requests/s."""
        out = {"waiting": 0.0, "running": 0.0, "served_rps": 0.0}
        for ep in self.endpoints.values():
            with ep.lock:
                out["waiting"] += ep.state.waiting
                out["running"] += ep.state.running
                out["served_rps"] += ep.state.served_rps
        return out

    def close(self) -> None:
        for ep in self.endpoints.values():
            ep.stop()
        self.endpoints.clear()
