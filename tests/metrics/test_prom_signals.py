"""The autoscaler's Prometheus reader (tidal.shell.prom) against a real Prometheus scraping fake vLLM
engines of both metric-name generations, labelled as the chart's PodMonitor labels in-cluster workers:
the FleetObservation carries the right p95s, sums, means and rates per deployment; the spec's selector
narrows it; an unreachable Prometheus or a deployment without series gives no observation and a reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tests.support.fakevllm import (
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    FakeVLLM,
    RegistryExporter,
    p95_in_bucket,
    worker_labels,
)
from tests.support.prometheus import PrometheusServer, ScrapeTarget, free_port, running_prometheus

from tidal.scaling import FleetObservation
from tidal.shell.prom import QUERIES, SAMPLE_TIME_QUERY, PrometheusSignals, matchers
from tidal.shell.promaccess import PrometheusAccess

pytestmark = pytest.mark.metrics

NS = "team-a"
WINDOW = "10s"


class Fleet:
    def __init__(self, prom: PrometheusServer, fakes: dict[str, FakeVLLM]) -> None:
        self.prom = prom
        self.fakes = fakes


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Deployment ``new`` (2 replicas, V1 names) and ``old`` (1 replica, pre-V1 names), plus DCGM."""
    from prometheus_client import CollectorRegistry, Gauge

    fakes = {
        "new-r0": FakeVLLM(
            "v1",
            ttft=0.3,
            tpot=0.02,
            waiting=3,
            running=5,
            kv=0.2,
            requests_per_s=10,
            prompt_tokens=100,
            output_tokens=10,
            preemptions_per_s=0.5,
        ),
        "new-r1": FakeVLLM(
            "v1",
            ttft=0.3,
            tpot=0.02,
            waiting=4,
            running=6,
            kv=0.4,
            requests_per_s=10,
            prompt_tokens=100,
            output_tokens=10,
            preemptions_per_s=0.5,
        ),
        "old-r0": FakeVLLM("v0", ttft=1.5, tpot=0.06, waiting=2, running=1, kv=0.7, requests_per_s=5),
    }
    dcgm = CollectorRegistry()
    util = Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilisation (%)", ["namespace", "pod", "gpu"], registry=dcgm)
    util.labels(NS, "new-r0", "0").set(80)
    util.labels(NS, "new-r1", "0").set(60)
    util.labels(NS, "other-r0", "0").set(5)
    dcgm_exporter = RegistryExporter(dcgm)
    targets = [
        ScrapeTarget(f"w-{pod}", [fake.address], worker_labels(NS, pod.split("-r")[0], pod[-1], pod))
        for pod, fake in fakes.items()
    ]
    targets.append(ScrapeTarget("dcgm", [dcgm_exporter.address]))
    try:
        with running_prometheus(targets) as prom:
            prom.wait_for_targets_up()
            # Two full rate windows of samples.
            prom.wait_for_series(f"rate(vllm:time_to_first_token_seconds_count[{WINDOW}]) > 0")
            time.sleep(12)
            yield Fleet(prom, fakes)
    finally:
        for f in fakes.values():
            f.close()
        dcgm_exporter.close()


def observe(fleet: Fleet, deployment: str, selector: str = "") -> FleetObservation:
    reader = PrometheusSignals(window=WINDOW, access=PrometheusAccess(allow=(fleet.prom.url,)))
    obs, why = reader.observe(fleet.prom.url, NS, deployment, selector, pod_prefix=deployment)
    assert obs is not None, why
    assert why is None
    return obs


def test_v1_names_fleet_signals(fleet: Fleet) -> None:
    obs = observe(fleet, "new")
    assert obs.ttft_p95 == pytest.approx(p95_in_bucket(0.3, TTFT_BUCKETS), rel=0.02)
    assert obs.tpot_p95 == pytest.approx(p95_in_bucket(0.02, TPOT_BUCKETS), rel=0.02)
    assert obs.waiting == 7 and obs.running == 11
    assert obs.kv_cache_usage == pytest.approx(0.3)
    assert obs.request_rate == pytest.approx(20, rel=0.25)
    assert obs.prompt_token_rate == pytest.approx(2000, rel=0.25)
    assert obs.generation_token_rate == pytest.approx(200, rel=0.25)
    assert obs.preemption_rate == pytest.approx(1.0, rel=0.4)
    assert obs.queue_time_p95 is not None and 0 < obs.queue_time_p95 <= 0.3
    assert obs.gpu_util == pytest.approx(0.7)  # DCGM, mean over the deployment's pods only
    assert abs(obs.time - time.time()) < 30
    by = {r.replica: r for r in obs.replicas}
    assert set(by) == {"new-r0", "new-r1"}
    assert (by["new-r0"].waiting, by["new-r0"].running, by["new-r0"].kv_cache_usage) == (3, 5, 0.2)
    assert by["new-r1"].ttft_p95 == pytest.approx(p95_in_bucket(0.3, TTFT_BUCKETS), rel=0.02)


def test_older_names_are_detected(fleet: Fleet) -> None:
    obs = observe(fleet, "old")
    assert obs.kv_cache_usage == pytest.approx(0.7)  # vllm:gpu_cache_usage_perc
    assert obs.tpot_p95 == pytest.approx(p95_in_bucket(0.06, TPOT_BUCKETS), rel=0.02)  # time_per_output_token
    assert obs.ttft_p95 == pytest.approx(p95_in_bucket(1.5, TTFT_BUCKETS), rel=0.02)
    assert obs.waiting == 2 and [r.replica for r in obs.replicas] == ["old-r0"]
    assert obs.gpu_util is None  # no DCGM series for its pods


def test_selector_narrows_the_series(fleet: Fleet) -> None:
    obs = observe(fleet, "new", selector='tidal_dev_replica="0"')
    assert obs.waiting == 3 and [r.replica for r in obs.replicas] == ["new-r0"]


def test_latency_change_shows_within_the_window(fleet: Fleet) -> None:
    fleet.fakes["new-r1"].set(ttft=4.0)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            obs = observe(fleet, "new")
            by = {r.replica: r for r in obs.replicas}
            if by["new-r1"].ttft_p95 and by["new-r1"].ttft_p95 > 4.5:  # the window holds only new samples
                break
            time.sleep(1)
        assert by["new-r1"].ttft_p95 == pytest.approx(p95_in_bucket(4.0, TTFT_BUCKETS), rel=0.1)
        assert by["new-r0"].ttft_p95 == pytest.approx(p95_in_bucket(0.3, TTFT_BUCKETS), rel=0.02)
        assert obs.ttft_p95 is not None and obs.ttft_p95 > 1.0  # the merged fleet histogram moved
    finally:
        fleet.fakes["new-r1"].set(ttft=0.3)


def test_no_series_and_unreachable_give_no_observation(fleet: Fleet) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    reader = PrometheusSignals(window=WINDOW, access=PrometheusAccess(allow=(fleet.prom.url, dead)))
    obs, why = reader.observe(fleet.prom.url, NS, "absent", "", "absent")
    assert obs is None and why is not None and "no vLLM series" in why
    started = time.monotonic()
    obs, why = reader.observe(dead, NS, "new")
    assert obs is None and why is not None and dead in why and "ConnectionError" in why
    assert time.monotonic() - started < 10, "a dead Prometheus must not hang the pass"


def test_every_query_is_valid_promql(fleet: Fleet) -> None:
    fmt = {
        "m": matchers(NS, "new"),
        "w": WINDOW,
        "ttft": "vllm:time_to_first_token_seconds",
        "tpot": "vllm:inter_token_latency_seconds",
        "kv": "vllm:kv_cache_usage_perc",
        "dcgm": "DCGM_FI_DEV_GPU_UTIL",
        "ns": NS,
        "pods": "new-r[0-9]+",
    }
    for key, template in {**QUERIES, "sample_time": SAMPLE_TIME_QUERY}.items():
        answer = fleet.prom.query(template.format(**fmt))
        assert answer["status"] == "success", (key, answer.get("error"))


class OldSamples:
    """A /metrics endpoint whose gauge samples carry an explicit timestamp ``age_s`` in the past (what a
    Prometheus that stopped scraping, or a lagging remote store, answers within its 5-minute lookback)."""

    def __init__(self, age_s: float) -> None:
        self.stamp_ms = int((time.time() - age_s) * 1000)
        body = "".join(
            f"{name} {value} {self.stamp_ms}\n"
            for name, value in (
                ("vllm:num_requests_running", 2),
                ("vllm:num_requests_waiting", 1),
                ("vllm:kv_cache_usage_perc", 0.5),
            )
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_observation_time_is_the_samples_time_so_old_samples_go_stale(fleet: Fleet) -> None:
    from tidal.scaling import AutoscalerState, CapacityView, Reason, ScalingConfig, compute_desired_replicas

    fresh = observe(fleet, "new")
    assert time.time() - fresh.time < 10, "a fleet scraped every second is seconds old"
    exporter = OldSamples(age_s=120)
    labels = worker_labels(NS, "stale", "0", "stale-r0")
    try:
        with running_prometheus([ScrapeTarget("stale", [exporter.address], labels)]) as prom:
            prom.wait_for_targets_up()
            prom.wait_for_series('vllm:num_requests_running{tidal_dev_deployment="stale"}')
            reader = PrometheusSignals(window=WINDOW, access=PrometheusAccess(allow=(prom.url,)))
            obs, why = reader.observe(prom.url, NS, "stale", pod_prefix="stale")
    finally:
        exporter.close()
    assert obs is not None, why
    assert obs.time == pytest.approx(exporter.stamp_ms / 1000, abs=0.01)
    now = time.time()
    config = ScalingConfig(min_replicas=1, max_replicas=4, metrics_stale_after_s=60)
    decision = compute_desired_replicas(config, obs, CapacityView(current=2, ready=2), AutoscalerState(), now)
    assert decision.reason is Reason.METRICS_STALE and decision.desired == 2, decision.message
