"""`make demo`, in parts and whole.

* The load profile and the queueing model of one replica behave as docs/demo.md says (pure, fast).
* The simulated fleet serves vLLM's metric names in the classic text format, and a real Prometheus
  following the file_sd targets scrapes exactly the running pods with the label contract of the
  autoscaler; the autoscaler's own reader (``tidal.shell.prom.PrometheusSignals``) turns it into an
  observation whose queue and TTFT rise with the load.
* On the real control plane, KWOK worker pods that come and go are followed: a target per Running pod,
  labelled from the pod's ``tidal.dev/*`` labels, gone when the pod is deleted.
* End to end: ``python -m tidal.demo --duration 150`` exits 0 having seen ScaledUp and ScaledDown Events,
  and leaves no process behind (about 3 minutes).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import ControlPlane
from tidal.builders.names import DEPLOYMENT_LABEL, REPLICA_LABEL, deployment_selector, selector_string
from tidal.demo import display
from tidal.demo.exporter import TEXT_CONTENT_TYPE, PodInfo, SimulatedFleet
from tidal.demo.model import LoadProfile, ReplicaModel, ReplicaState, split_load
from tidal.demo.prometheus import FLEET_JOB, Prometheus, demo_config, start_prometheus
from tidal.demo.runner import demo_deployment, load_example
from tidal.shell.prom import PrometheusSignals
from tidal.shell.promaccess import PrometheusAccess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "llama-3.1-8b.yaml"
VLLM_NAMES = {
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:num_preemptions",
}


@pytest.fixture(scope="module")
def model() -> ReplicaModel:
    return ReplicaModel.for_model()


# --- the model (pure) --------------------------------------------------------------------------------


def test_load_profile_goes_low_high_low() -> None:
    p = LoadProfile(200.0, low=0.4, high=2.4)
    levels = [p.level(t) for t in range(0, 201, 2)]
    peak = levels.index(max(levels))
    assert levels[0] == pytest.approx(0.4) and levels[-1] == pytest.approx(0.4)
    assert max(levels) == pytest.approx(2.4)
    assert all(a <= b for a, b in itertools.pairwise(levels[: peak + 1]))  # rises
    assert all(a >= b for a, b in itertools.pairwise(levels[peak:]))  # then falls
    assert [p.phase(t) for t in (5, 30, 60, 95, 150)] == ["low", "rising", "high", "falling", "low"]
    with pytest.raises(ValueError):
        LoadProfile(60.0, low=2.0, high=1.0)


def test_replica_queue_builds_over_capacity_and_drains_below(model: ReplicaModel) -> None:
    mu = model.capacity_rps
    assert 1.0 < mu < 1000.0, f"implausible capacity {mu} req/s"
    light, busy, over = ReplicaState(), ReplicaState(), ReplicaState()
    for _ in range(30):
        model.advance(light, 0.3 * mu, 1.0)
        model.advance(busy, 0.9 * mu, 1.0)
        model.advance(over, 2.0 * mu, 1.0)
    assert light.waiting < 0.1 < busy.waiting < 10 < over.waiting
    assert over.waiting == pytest.approx(30 * mu, rel=0.05)  # grows by (lambda - mu) per second
    assert over.served_rps == pytest.approx(mu) and light.served_rps == pytest.approx(0.3 * mu)
    assert light.running < busy.running <= over.running
    assert 0 < light.kv_cache_usage < busy.kv_cache_usage <= 1.0

    def mean_ttft(s: ReplicaState) -> float:
        return s.ttft.total / s.ttft.count

    assert mean_ttft(light) < mean_ttft(busy) < mean_ttft(over)
    # Counters: requests, tokens in the request's proportions.
    assert over.prompt_tokens == pytest.approx(over.requests * model.prompt_tokens)
    assert over.generation_tokens == pytest.approx(over.requests * model.output_tokens)
    # A backlog drains at (mu - lambda) once the load falls.
    before = over.waiting
    model.advance(over, 0.5 * mu, 10.0)
    assert over.waiting == pytest.approx(before - 0.5 * mu * 10.0, rel=0.01)
    assert over.served_rps == pytest.approx(mu)


def test_histograms_are_cumulative_and_consistent(model: ReplicaModel) -> None:
    s = ReplicaState()
    for rate in (0.2, 1.5, 0.5):
        model.advance(s, rate * model.capacity_rps, 5.0)
    for h in (s.ttft, s.itl, s.e2e, s.queue_time):
        counts = [c for _, c in h.buckets()]
        assert all(a <= b + 1e-9 for a, b in itertools.pairwise(counts))
        assert counts[-1] == pytest.approx(h.count) and h.count > 0
    assert s.ttft.count == pytest.approx(s.requests)
    assert s.itl.count == pytest.approx(s.requests * (model.output_tokens - 1))


def test_router_splits_load_and_spares_backlogged_replicas() -> None:
    assert split_load(9.0, {"a": 0.0, "b": 0.0, "c": 0.0}) == {"a": 3.0, "b": 3.0, "c": 3.0}
    assert split_load(9.0, {}) == {}
    shares = split_load(30.0, {"old": 40.0, "new": 0.0})
    assert sum(shares.values()) == pytest.approx(30.0)
    assert shares["old"] == pytest.approx(5.0) and shares["new"] == pytest.approx(25.0)


def test_demo_deployment_is_the_example_with_demo_windows() -> None:
    example = load_example(EXAMPLE)
    doc = demo_deployment(example, "tidal-demo", "http://127.0.0.1:9999")
    assert doc["metadata"] == {**example["metadata"], "namespace": "tidal-demo"}
    auto = doc["spec"]["autoscaling"]
    assert auto["enabled"] is True and auto["prometheus"]["url"] == "http://127.0.0.1:9999"
    assert (
        auto["scaleDownStabilizationSeconds"]
        < example["spec"]["autoscaling"]["scaleDownStabilizationSeconds"]
    )
    assert auto["targets"] == example["spec"]["autoscaling"]["targets"]
    assert doc["spec"]["model"] == example["spec"]["model"] and doc["spec"]["maxReplicas"] > 1
    assert "namespace" not in example["metadata"]  # the example itself is untouched
    from tidal.api import LLMDeployment

    LLMDeployment.model_validate(doc)  # still a valid LLMDeployment


def test_display_table_events_and_summary() -> None:
    palette = display.Palette(enabled=False)
    r = display.Row(75.2, "high", 49.3, 41.0, 12.0, 3, 2, "queue 6.1/5 (1.22)", "ScaledUp")
    line = display.row(r)
    assert line.startswith("1:15") and "49.3 r/s" in line and "ScaledUp" in line
    assert display.header().split()[:3] == ["TIME", "PHASE", "LOAD"]
    s = display.Summary()
    assert not s.ok
    s.record(display.EventLine(1, "Normal", "ScaledUp", "replicas 0 -> 1 (initial)"))
    s.record(display.EventLine(40, "Normal", "ScaledUp", "1 -> 3"))
    s.record(display.EventLine(44, "Normal", "ReplicaCreated", "r1"))
    assert not s.ok
    s.record(display.EventLine(150, "Normal", "ScaledDown", "3 -> 2"))
    s.observe(3, 3)
    s.duration_s = 200
    assert s.ok and (s.scale_ups, s.scale_downs, s.peak_desired) == (1, 1, 3)
    text = "\n".join(display.summary(s, palette))
    assert "scale-ups       1 (first at 0:40)" in text and "peak replicas   3 desired" in text
    assert "\033[" not in text
    assert "\033[32m" in display.event(s.events[0], display.Palette(enabled=True))


# --- the fleet and Prometheus (real Prometheus, no cluster) -------------------------------------------


def _pod(name: str, replica: str, ready: bool = True, ns: str = "demo-ns", dep: str = "llama") -> PodInfo:
    return PodInfo(namespace=ns, name=name, deployment=dep, replica=replica, ready=ready)


@pytest.fixture()
def fleet_and_prometheus(model: ReplicaModel, tmp_path: Path) -> Iterator[tuple[SimulatedFleet, Prometheus]]:
    fleet = SimulatedFleet(model, LoadProfile(60.0, low=2.0, high=2.0), tmp_path / "targets.json", "m")
    prom = start_prometheus(tmp_path / "prom", fleet.targets_file)
    try:
        yield fleet, prom
    finally:
        prom.stop()
        fleet.close()


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def test_exposition_is_vllm_text_format(model: ReplicaModel, tmp_path: Path) -> None:
    fleet = SimulatedFleet(model, LoadProfile(60.0), tmp_path / "targets.json", "llama-3.1-8b-instruct")
    try:
        fleet.sync([_pod("llama-r0", "0")])
        fleet.tick(0.0)
        fleet.tick(2.0)
        ep = next(iter(fleet.endpoints.values()))
        with urllib.request.urlopen(f"http://{ep.address}/metrics", timeout=5) as rsp:
            assert rsp.headers["Content-Type"] == TEXT_CONTENT_TYPE
            text = rsp.read().decode()
    finally:
        fleet.close()
    assert "# EOF" not in text  # classic format, not OpenMetrics
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) >= VLLM_NAMES, VLLM_NAMES - set(families)
    sample = families["vllm:num_requests_running"].samples[0]
    assert sample.labels == {"model_name": "llama-3.1-8b-instruct", "engine": "0"} and sample.value > 0
    assert "vllm:request_success_total{" in text and "vllm:time_to_first_token_seconds_bucket{" in text


def test_prometheus_follows_targets_file_with_label_contract(
    fleet_and_prometheus: tuple[SimulatedFleet, Prometheus],
) -> None:
    fleet, prom = fleet_and_prometheus
    assert demo_config(fleet.targets_file)["scrape_configs"][0]["file_sd_configs"][0]["files"] == [
        str(fleet.targets_file)
    ]
    fleet.sync([_pod("llama-r0", "0"), _pod("llama-r1", "1")])
    start = time.monotonic()

    def pods_up() -> set[str]:
        targets = prom.active_targets(FLEET_JOB)
        return {t["labels"]["pod"] for t in targets if t["health"] == "up"}

    def pump_until(predicate: Any, timeout: float, what: str) -> Any:
        def step() -> Any:
            fleet.tick(time.monotonic() - start)
            return predicate()

        return _wait(step, timeout, what)

    assert pump_until(lambda: pods_up() == {"llama-r0", "llama-r1"}, 30, "two targets up")
    series = pump_until(lambda: prom.query('vllm:num_requests_waiting{pod="llama-r1"}'), 20, "series")
    labels = series[0]["metric"]
    assert {k: labels[k] for k in ("namespace", "pod", "tidal_dev_deployment", "tidal_dev_replica")} == {
        "namespace": "demo-ns",
        "pod": "llama-r1",
        "tidal_dev_deployment": "llama",
        "tidal_dev_replica": "1",
    }
    # The autoscaler's own reader sees the fleet (load 2x one replica's capacity over 2 replicas: busy).
    reader = PrometheusSignals(window="5s", access=PrometheusAccess(allow=(prom.url,)))
    obs = pump_until(
        lambda: (
            (o := reader.observe(prom.url, "demo-ns", "llama")[0]) is not None
            and o.ttft_p95 is not None
            and o.request_rate
            and o
        ),
        30,
        "an observation",
    )
    assert {r.replica for r in obs.replicas} == {"llama-r0", "llama-r1"}
    assert obs.kv_cache_usage is not None and 0 < obs.kv_cache_usage <= 1
    assert obs.tpot_p95 is not None and obs.running and obs.running > 0
    # A pod that goes away stops being scraped; one that comes is picked up.
    fleet.sync([_pod("llama-r1", "1"), _pod("llama-r2", "2")])
    assert pump_until(lambda: pods_up() == {"llama-r1", "llama-r2"}, 30, "targets follow the pods")


def test_load_shows_in_the_autoscaler_signals(model: ReplicaModel, tmp_path: Path) -> None:
    """One replica at 0.3x then 2x its capacity: the reader's queue and TTFT p95 rise by far."""
    step = LoadProfile(40.0, low=0.3, high=2.0, rise_start=0.5, rise_end=0.5, fall_start=1.0, fall_end=1.0)
    fleet = SimulatedFleet(model, step, tmp_path / "t.json", "m")
    prom = start_prometheus(tmp_path / "prom", fleet.targets_file)
    reader = PrometheusSignals(window="5s", access=PrometheusAccess(allow=(prom.url,)))
    try:
        fleet.sync([_pod("llama-r0", "0")])
        start = time.monotonic()
        seen: dict[str, tuple[float, float]] = {}
        while time.monotonic() - start < 40:
            t = time.monotonic() - start
            fleet.tick(t)
            obs, _ = reader.observe(prom.url, "demo-ns", "llama")
            phase = "low" if t < 18 else ("high" if t > 34 else "")
            if phase and obs is not None and obs.ttft_p95 is not None and obs.waiting is not None:
                seen[phase] = (obs.waiting, obs.ttft_p95)
            time.sleep(0.5)
    finally:
        prom.stop()
        fleet.close()
    assert set(seen) == {"low", "high"}, seen
    (low_q, low_ttft), (high_q, high_ttft) = seen["low"], seen["high"]
    assert low_q < 1 and high_q > 5 * 10, seen  # example target: 5 waiting per replica
    assert low_ttft < 0.5 and high_ttft > 2.0, seen  # example target: TTFT p95 2 s


# --- following real KWOK pods on the control plane ---------------------------------------------------


def _worker_pod(name: str, replica: int, dep: str, node_label: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {**deployment_selector(dep), DEPLOYMENT_LABEL: dep, REPLICA_LABEL: str(replica)},
        },
        "spec": {
            "nodeSelector": node_label,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "vllm", "image": "vllm/vllm-openai:latest"}],
        },
    }


def test_fleet_follows_kwok_pods(control_plane: ControlPlane, model: ReplicaModel, tmp_path: Path) -> None:
    label = {"tidal.dev/test": f"demo-{os.getpid()}"}
    nodes = control_plane.create_gpu_nodes(1, labels=label)
    ns = control_plane.create_namespace("demo")
    core = control_plane.core
    dep = "llama"
    selector = selector_string(deployment_selector(dep))
    fleet = SimulatedFleet(model, LoadProfile(60.0), tmp_path / "targets.json", "m")
    prom = start_prometheus(tmp_path / "prom", fleet.targets_file)
    try:
        for i in range(2):
            core.create_namespaced_pod(ns, _worker_pod(f"{dep}-r{i}", i, dep, label))

        def follow() -> set[str]:
            pods = core.list_namespaced_pod(ns, label_selector=selector).items
            fleet.sync([p for p in (PodInfo.from_pod(pod) for pod in pods) if p is not None])
            fleet.tick(time.monotonic())
            return {t["labels"]["pod"] for t in prom.active_targets(FLEET_JOB) if t["health"] == "up"}

        assert _wait(lambda: follow() == {f"{dep}-r0", f"{dep}-r1"}, 60, "targets for both Running pods")
        target = next(t for t in prom.active_targets(FLEET_JOB) if t["labels"]["pod"] == f"{dep}-r1")
        assert target["labels"]["namespace"] == ns
        assert (
            target["labels"]["tidal_dev_deployment"] == dep and target["labels"]["tidal_dev_replica"] == "1"
        )
        assert all(ep.pod.ready for ep in fleet.endpoints.values())  # KWOK reports them Ready
        core.delete_namespaced_pod(f"{dep}-r0", ns, grace_period_seconds=0)
        assert _wait(lambda: follow() == {f"{dep}-r1"}, 60, "the deleted pod's target to go")
        assert set(fleet.endpoints) == {(ns, f"{dep}-r1")}
    finally:
        prom.stop()
        fleet.close()
        core.delete_namespace(ns)
        control_plane.delete_nodes(nodes)


# --- the whole demo ----------------------------------------------------------------------------------

DEMO_DURATION_S = 240


@pytest.mark.timeout(380)
def test_demo_end_to_end_scales_up_and_down(tmp_path: Path) -> None:
    """`python -m tidal.demo` at its default duration (what `make demo` runs): ScaledUp and ScaledDown Events,
    exit 0, nothing left running."""
    state = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidal.demo",
            f"--duration={DEMO_DURATION_S}",
            "--no-color",
            f"--state-dir={state}",
        ],
        capture_output=True,
        text=True,
        timeout=360,
        env=env,
        cwd=ROOT,
        check=False,
    )
    elapsed = time.monotonic() - started
    out = proc.stdout
    report = f"exit {proc.returncode} after {elapsed:.0f}s\n{out}\n{proc.stderr[-3000:]}"
    operator_log = state / "logs" / "operator.log"
    if proc.returncode != 0 and operator_log.exists():
        report += "\noperator log tail:\n" + "\n".join(operator_log.read_text().splitlines()[-60:])
    assert proc.returncode == 0, report
    assert re.search(r"event  ScaledUp: ", out), report
    assert re.search(r"event  ScaledDown: ", out), report
    ups, downs = _number(r"scale-ups\s+(\d+)", out), _number(r"scale-downs\s+(\d+)", out)
    peak = _number(r"peak replicas\s+(\d+) desired", out)
    assert ups >= 1 and downs >= 1 and peak >= 2, report
    assert elapsed < 300, report
    # Clean-up: no process of ours left, scratch data gone, logs kept.
    leftovers = _processes_mentioning(str(state))
    assert leftovers == [], leftovers
    assert not (state / "prometheus").exists() and not (state / "devcluster" / "etcd-data").exists()
    assert operator_log.exists() and (state / "devcluster" / "logs").is_dir()
    assert not (state / "kubeconfig").exists()
    print(f"\ndemo: {elapsed:.0f}s, {ups} scale-ups, {downs} scale-downs, peak {peak}\n{out[-1500:]}")


@pytest.mark.timeout(240)
def test_demo_sigterm_cleans_up(tmp_path: Path) -> None:
    """SIGTERM mid-run: summary printed, exit 1 (no scale-down seen), every process and scratch dir gone."""
    state = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidal.demo", "--duration=600", "--no-color", f"--state-dir={state}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:  # until the first table row: everything is up
            lines.append(line)
            if re.match(r"0:0\d\s+low\s", line):
                break
        assert any(line.startswith("TIME") for line in lines), "".join(lines)
        assert _processes_mentioning(str(state)), "nothing running before SIGTERM?"
        proc.terminate()
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 1, out
    assert "interrupted: cleaning up" in out and "Summary" in out and "no ScaledDown" in out, out
    assert _processes_mentioning(str(state)) == []
    assert not (state / "prometheus").exists() and not (state / "devcluster" / "etcd-data").exists()
    assert (state / "logs" / "operator.log").exists()


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in the demo's output"
    return int(found.group(1))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found
