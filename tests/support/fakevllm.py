"""A fake vLLM ``/metrics`` endpoint whose numbers a test controls, for tests that need a Prometheus full of
vLLM series without running engines (the metrics tier, the autoscaler's control-plane tests).

It serves real ``prometheus_client`` metrics with vLLM's names, label (``model_name``) and histogram
buckets, in the classic text format (``generate_latest``, like the worker's relay of vLLM's text:
prometheus_client's OpenMetrics output would turn the ``vllm:`` colons into underscores). Two metric-name
generations: ``"v1"`` (``vllm:kv_cache_usage_perc``, ``vllm:inter_token_latency_seconds``) and ``"v0"``
(``vllm:gpu_cache_usage_perc``, ``vllm:time_per_output_token_seconds``).

A feeder thread turns the configured request rate into histogram observations and counter increments ten
times a second, so ``rate()`` and ``histogram_quantile()`` see steady traffic; :meth:`FakeVLLM.set` changes
latency, load or rate at any time (``requests_per_s=0`` stops the traffic: the latency signals then vanish
from ``rate()`` windows, as with a real idle engine).

    with FakeVLLM(ttft=0.3) as fake:   # fake.address -> "127.0.0.1:PORT"
        fake.set(ttft=4.0, waiting=12)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# vLLM V1's default bounds (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
QUEUE_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0)
MODEL = "tiny"
TICK_S = 0.1


def p95_in_bucket(value: float, buckets: tuple[float, ...]) -> float:
    """What ``histogram_quantile(0.95, ...)`` returns when every observation equals ``value``: linear
    interpolation inside the bucket holding it."""
    lower = 0.0
    for upper in buckets:
        if value <= upper:
            return lower + (upper - lower) * 0.95
        lower = upper
    return buckets[-1]


class RegistryExporter:
    """A /metrics endpoint on a free loopback port serving ``registry`` in the classic text format.
    While ``online`` is false it answers 503 (a pod that does not exist: Prometheus marks the target down
    and its series stale)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.online = True
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not exporter.online:
                    self.send_error(503, "offline")
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        """``host:port`` to scrape."""
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Load:
    """What the fake engine reports (latencies in seconds; rates per second)."""

    ttft: float = 0.1
    tpot: float = 0.02
    queue_time: float = 0.1
    waiting: float = 0.0
    running: float = 1.0
    kv: float = 0.2
    requests_per_s: float = 5.0
    prompt_tokens: int = 100
    output_tokens: int = 10
    preemptions_per_s: float = 0.0


class FakeVLLM:
    """One fake vLLM engine's /metrics on a free loopback port."""

    def __init__(self, generation: Literal["v1", "v0"] = "v1", **load: Any) -> None:
        self.generation = generation
        self.load = Load(**load)
        self._lock = threading.Lock()
        reg = CollectorRegistry()
        self.registry = reg
        lbl = ["model_name"]
        tpot_name = (
            "vllm:inter_token_latency_seconds" if generation == "v1" else "vllm:time_per_output_token_seconds"
        )
        kv_name = "vllm:kv_cache_usage_perc" if generation == "v1" else "vllm:gpu_cache_usage_perc"
        self.ttft_h = Histogram(
            "vllm:time_to_first_token_seconds", "TTFT", lbl, buckets=TTFT_BUCKETS, registry=reg
        )
        self.tpot_h = Histogram(tpot_name, "TPOT", lbl, buckets=TPOT_BUCKETS, registry=reg)
        self.queue_h = Histogram(
            "vllm:request_queue_time_seconds", "queue", lbl, buckets=QUEUE_BUCKETS, registry=reg
        )
        self.waiting_g = Gauge("vllm:num_requests_waiting", "waiting", lbl, registry=reg)
        self.running_g = Gauge("vllm:num_requests_running", "running", lbl, registry=reg)
        self.kv_g = Gauge(kv_name, "kv", lbl, registry=reg)
        self.success_c = Counter("vllm:request_success", "ok", lbl, registry=reg)
        self.prompt_c = Counter("vllm:prompt_tokens", "prompt", lbl, registry=reg)
        self.gen_c = Counter("vllm:generation_tokens", "generated", lbl, registry=reg)
        self.preempt_c = Counter("vllm:num_preemptions", "preemptions", lbl, registry=reg)
        self._carry = 0.0
        self._carry_p = 0.0
        self._gauges()
        self.exporter = RegistryExporter(reg)
        self._stop = threading.Event()
        self._feed = threading.Thread(target=self._feeder, daemon=True)
        self._feed.start()

    @property
    def address(self) -> str:
        """``host:port`` to scrape."""
        return self.exporter.address

    @property
    def online(self) -> bool:
        """Whether /metrics answers (see :class:`RegistryExporter`)."""
        return self.exporter.online

    @online.setter
    def online(self, value: bool) -> None:
        self.exporter.online = value

    def set(self, **changes: Any) -> None:
        """Change what the engine reports (fields of :class:`Load`)."""
        with self._lock:
            for k, v in changes.items():
                if not hasattr(self.load, k):
                    raise AttributeError(f"Load has no field {k!r}")
                setattr(self.load, k, v)
            self._gauges()

    def _gauges(self) -> None:
        self.waiting_g.labels(MODEL).set(self.load.waiting)
        self.running_g.labels(MODEL).set(self.load.running)
        self.kv_g.labels(MODEL).set(self.load.kv)

    def _feeder(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                load = Load(**vars(self.load))
            self._carry += load.requests_per_s * TICK_S
            self._carry_p += load.preemptions_per_s * TICK_S
            n, self._carry = int(self._carry), self._carry - int(self._carry)
            p, self._carry_p = int(self._carry_p), self._carry_p - int(self._carry_p)
            for _ in range(n):
                self.ttft_h.labels(MODEL).observe(load.ttft)
                self.queue_h.labels(MODEL).observe(load.queue_time)
                for _ in range(max(load.output_tokens - 1, 0)):
                    self.tpot_h.labels(MODEL).observe(load.tpot)
            if n:
                self.success_c.labels(MODEL).inc(n)
                self.prompt_c.labels(MODEL).inc(n * load.prompt_tokens)
                self.gen_c.labels(MODEL).inc(n * load.output_tokens)
            if p:
                self.preempt_c.labels(MODEL).inc(p)

    def close(self) -> None:
        """Stop feeding and serving."""
        self._stop.set()
        self._feed.join(timeout=5)
        self.exporter.close()

    def __enter__(self) -> FakeVLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def worker_labels(namespace: str, deployment: str, replica: int | str, pod: str) -> dict[str, str]:
    """The target labels a Prometheus inside the cluster gives a worker's series (the chart's PodMonitor)."""
    return {
        "namespace": namespace,
        "tidal_dev_deployment": deployment,
        "tidal_dev_replica": str(replica),
        "pod": pod,
    }
