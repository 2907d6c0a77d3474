"""Every PromQL expression Tidal ships (helm/tidal/files: alerts.yaml, dashboard.json), on a real Prometheus.

The Debian ``prometheus`` binary is started on a free loopback port (tests/support/prometheus.py). Each alert
and recording-rule expression, each dashboard target and each dashboard variable's series selector is sent to
``/api/v1/query``: the answer must be ``success`` with no error. The rule file is also checked with
``promtool`` and loaded by the running server. Then the expressions meet data: a fake operator and a fake
vLLM fleet (text exposition, vLLM's own bucket bounds) are scraped once a second, and the alerts that should
fire return exactly the series they should, with the labels the runbook and the dashboard expect.
The dashboard JSON is validated against tests/support/dashboard.schema.json.

If Prometheus is not installed the tests FAIL (run ``make system``); they never skip.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from tests.support.fakevllm import RegistryExporter
from tests.support.prometheus import (
    PrometheusServer,
    ScrapeTarget,
    find_prometheus,
    running_prometheus,
)

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "helm" / "tidal" / "files"
ALERTS = FILES / "alerts.yaml"
DASHBOARD = FILES / "dashboard.json"
DASHBOARD_SCHEMA = ROOT / "tests" / "support" / "dashboard.schema.json"

# vLLM V1's default histogram bounds (vllm/v1/metrics/buckets.py); the SLO rules use the 2.5 s / 0.1 s bounds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)

# Grafana variables -> what Grafana would put there (multi-value "All" is the regex .*).
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$namespace": ".*",
    "$deployment": ".*",
}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [
        (f"panel {p['id']} {p['title']} {t['refId']}", grafana_to_promql(t["expr"]))
        for p in dash["panels"]
        for t in p.get("targets", [])
    ]
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)", q)
        assert m, f"variable {var['name']}: unexpected query {q!r}"
        out.append((f"variable {var['name']}", grafana_to_promql(m.group(1))))
    return out


ALERT_EXPRS = [(r.get("alert") or r["record"], r["expr"]) for r in alert_rules()]
DASHBOARD_EXPRS = dashboard_exprs()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    """A Prometheus with no targets and the chart's rule file loaded."""
    with running_prometheus(rule_files=[ALERTS]) as prom:
        yield prom


def test_prometheus_is_installed() -> None:
    """The tier must fail, not skip, without Prometheus."""
    find_prometheus()


def test_there_is_something_to_check() -> None:
    assert len(ALERT_EXPRS) >= 20
    assert len(DASHBOARD_EXPRS) >= 15


@pytest.mark.parametrize(("name", "expr"), ALERT_EXPRS, ids=[n for n, _ in ALERT_EXPRS])
def test_alert_expression_is_accepted(prometheus: PrometheusServer, name: str, expr: str) -> None:
    answer = prometheus.query(expr)
    assert answer["status"] == "success", f"{name}: {answer.get('errorType')}: {answer.get('error')}"
    assert "error" not in answer


@pytest.mark.parametrize(("name", "expr"), DASHBOARD_EXPRS, ids=[n for n, _ in DASHBOARD_EXPRS])
def test_dashboard_expression_is_accepted(prometheus: PrometheusServer, name: str, expr: str) -> None:
    answer = prometheus.query(expr)
    assert answer["status"] == "success", f"{name}: {answer.get('errorType')}: {answer.get('error')}"
    assert "error" not in answer


def test_a_bad_expression_is_refused(prometheus: PrometheusServer) -> None:
    """The check above can fail: Prometheus reports parse errors through the same API."""
    answer = prometheus.query(
        "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds[5m]))"
    )
    assert answer["status"] == "error" and "parse error" in answer["error"]


def test_promtool_checks_the_rule_file() -> None:
    promtool = find_prometheus("promtool")
    proc = subprocess.run(
        [str(promtool), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERT_EXPRS)} rules found" in proc.stdout


def test_running_prometheus_loads_every_rule(prometheus: PrometheusServer) -> None:
    groups = prometheus.api("rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {name for name, _ in ALERT_EXPRS}
    for rule in (r for g in groups for r in g["rules"]):
        assert rule.get("lastError", "") == "", rule
    for rule in alert_rules():
        if "alert" in rule:
            assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_runbook_has_a_section_per_alert() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    headings = set(re.findall(r"^### (\w+)\s*$", runbook, flags=re.M))
    alerts = {r["alert"] for r in alert_rules() if "alert" in r}
    assert alerts <= headings, f"alerts without a runbook section: {sorted(alerts - headings)}"


# --- the dashboard's structure -----------------------------------------------------------------------------


def test_dashboard_matches_its_schema() -> None:
    schema = json.loads(DASHBOARD_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    dash = json.loads(DASHBOARD.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dash), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_dashboard_schema_rejects_a_broken_dashboard() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(DASHBOARD_SCHEMA.read_text()))
    dash = json.loads(DASHBOARD.read_text())
    del dash["panels"][0]["gridPos"]
    dash["panels"][1]["datasource"] = {"type": "prometheus", "uid": "prom-prod"}
    dash["panels"][2]["targets"] = []
    assert len(list(validator.iter_errors(dash))) >= 3


def test_dashboard_ids_unique_and_layout_sane() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
    # No two panels overlap.
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_dashboard_covers_what_sres_need() -> None:
    text = DASHBOARD.read_text()
    for metric in (
        "tidal_deployment_desired_replicas",
        "tidal_deployment_ready_replicas",
        "tidal_scaling_decisions_total",
        "tidal_autoscaler_signal_ratio",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "DCGM_FI_DEV_GPU_UTIL",
        "tidal_degraded_replicas",
        "tidal_gpu_hours_total",
    ):
        assert metric in text, metric


def test_assets_use_only_metrics_the_operator_defines() -> None:
    """Every tidal_* metric name in the alerts and the dashboard is defined in tidal.shell.metrics."""
    from tidal.shell import metrics

    defined: set[str] = set()
    for family in metrics.REGISTRY.collect():
        defined.add(family.name)
        if family.type == "counter":
            defined.add(family.name + "_total")
        if family.type == "histogram":
            defined |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    labels = {"tidal_dev_deployment", "tidal_dev_replica"}  # pod labels copied by the PodMonitor, not metrics
    used = set(re.findall(r"\btidal_[a-z_]+\b", ALERTS.read_text() + DASHBOARD.read_text())) - labels
    assert used and used <= defined, f"undefined: {sorted(used - defined)}"


# --- the expressions meet data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> Iterator[PrometheusServer]:
    """A fake operator (job tidal-operator) and two fake vLLM deployments (slow, fast), scraped at 1 s."""
    op = CollectorRegistry()
    cond = Gauge("tidal_deployment_condition", "", ["namespace", "name", "condition"], registry=op)
    cond.labels("team-a", "slow", "MetricsAvailable").set(0)
    cond.labels("team-a", "fast", "MetricsAvailable").set(1)
    cond.labels("team-a", "slow", "InsufficientGPU").set(1)
    Gauge("tidal_degraded_replicas", "", ["namespace", "name"], registry=op).labels("team-a", "slow").set(1)
    desired = Gauge("tidal_deployment_desired_replicas", "", ["namespace", "name"], registry=op)
    ready = Gauge("tidal_deployment_ready_replicas", "", ["namespace", "name"], registry=op)
    for name, d, r in (("slow", 3, 0), ("fast", 2, 2)):
        desired.labels("team-a", name).set(d)
        ready.labels("team-a", name).set(r)
    decisions = Counter("tidal_scaling_decisions", "", ["namespace", "name", "reason"], registry=op)
    decisions.labels("team-a", "slow", "InsufficientGPU").inc()

    def vllm(seconds_ttft: float, seconds_itl: float) -> tuple[CollectorRegistry, Histogram, Histogram]:
        reg = CollectorRegistry()
        ttft = Histogram(
            "vllm:time_to_first_token_seconds", "", ["model_name"], buckets=TTFT_BUCKETS, registry=reg
        )
        itl = Histogram(
            "vllm:inter_token_latency_seconds", "", ["model_name"], buckets=ITL_BUCKETS, registry=reg
        )
        Gauge("vllm:num_requests_waiting", "", ["model_name"], registry=reg).labels("m").set(7)
        Gauge("vllm:kv_cache_usage_perc", "", ["model_name"], registry=reg).labels("m").set(0.5)
        return reg, ttft, itl

    slow_reg, slow_ttft, slow_itl = vllm(5.0, 0.3)
    fast_reg, fast_ttft, fast_itl = vllm(0.2, 0.02)
    exporters = [RegistryExporter(op), RegistryExporter(slow_reg), RegistryExporter(fast_reg)]
    stop = threading.Event()

    def traffic() -> None:  # steady load: 20 requests/s each, 10 tokens per request
        while not stop.is_set():
            for _ in range(2):
                slow_ttft.labels("m").observe(5.0)
                fast_ttft.labels("m").observe(0.2)
                for _ in range(10):
                    slow_itl.labels("m").observe(0.3)
                    fast_itl.labels("m").observe(0.02)
            stop.wait(0.1)

    feeder = threading.Thread(target=traffic, daemon=True)
    feeder.start()
    worker = {"namespace": "team-a"}
    targets = [
        ScrapeTarget("tidal-operator", [exporters[0].address]),
        ScrapeTarget(
            "team-a/tidal-workers", [exporters[1].address], {**worker, "tidal_dev_deployment": "slow"}
        ),
        ScrapeTarget(
            "team-a/tidal-workers", [exporters[2].address], {**worker, "tidal_dev_deployment": "fast"}
        ),
    ]
    # Two jobs may not share a name in one config: give the second worker job its own.
    targets[2] = ScrapeTarget("team-a/tidal-workers-2", targets[2].targets, targets[2].labels)
    try:
        with running_prometheus(targets) as prom:
            prom.wait_for_targets_up()
            # rate() needs two samples per series, inside the 5m window.
            prom.wait_for_series("rate(vllm:time_to_first_token_seconds_count[5m]) > 0")
            yield prom
    finally:
        stop.set()
        feeder.join(timeout=5)
        for e in exporters:
            e.close()


def expr_of(name: str) -> str:
    return next(expr for n, expr in ALERT_EXPRS if n == name)


def labels_of(result: list[dict[str, Any]], *keys: str) -> set[tuple[str, ...]]:
    return {tuple(r["metric"].get(k, "") for k in keys) for r in result}


def test_deployment_alerts_fire_for_the_right_deployment(fleet: PrometheusServer) -> None:
    for alert in (
        "TidalMetricsStale",
        "TidalInsufficientGPU",
        "TidalReplicaDegraded",
        "TidalNoReadyReplicas",
    ):
        result = fleet.vector(expr_of(alert))
        assert labels_of(result, "namespace", "name") == {("team-a", "slow")}, alert
    assert labels_of(fleet.vector(expr_of("TidalReplicasNotReady")), "name") == {("slow",)}


def test_operator_down_only_without_an_operator(
    fleet: PrometheusServer, prometheus: PrometheusServer
) -> None:
    assert fleet.vector(expr_of("TidalOperatorDown")) == []
    assert fleet.vector(expr_of("TidalOperatorReplicaDown")) == []
    # The target-less server has no operator at all: absent() fires.
    assert len(prometheus.vector(expr_of("TidalOperatorDown"))) == 1


def test_slo_rules_separate_slow_from_fast(fleet: PrometheusServer) -> None:
    def by_deployment(expr: str) -> dict[str, float]:
        deadline = time.monotonic() + 20
        while True:
            result = fleet.vector(expr)
            values = {r["metric"]["tidal_dev_deployment"]: float(r["value"][1]) for r in result}
            if set(values) == {"slow", "fast"} or time.monotonic() > deadline:
                return values
            time.sleep(0.5)

    ttft_p95 = by_deployment(expr_of("tidal:vllm_ttft_seconds:p95_5m"))
    assert 2.5 < ttft_p95["slow"] <= 5.0 and ttft_p95["fast"] <= 0.25
    tpot_p95 = by_deployment(expr_of("tidal:vllm_tpot_seconds:p95_5m"))
    assert tpot_p95["slow"] > 0.1 and tpot_p95["fast"] <= 0.025
    # Every slow request misses the SLO bucket; no fast one does.
    for window in ("5m", "1h"):
        ttft_bad = by_deployment(expr_of(f"tidal:vllm_ttft_slow_ratio:rate{window}"))
        assert ttft_bad == pytest.approx({"slow": 1.0, "fast": 0.0}, abs=1e-9)
        tpot_bad = by_deployment(expr_of(f"tidal:vllm_tpot_slow_ratio:rate{window}"))
        assert tpot_bad == pytest.approx({"slow": 1.0, "fast": 0.0}, abs=1e-9)
    # The dashboard's p95 panel agrees with the recording rule.
    panel = next(e for n, e in DASHBOARD_EXPRS if n.startswith("panel") and "TTFT p95 A" in n)
    assert by_deployment(panel)["slow"] == pytest.approx(ttft_p95["slow"], rel=0.2)
    queue = next(e for n, e in DASHBOARD_EXPRS if "Queue" in n and n.endswith(" A"))
    assert by_deployment(queue) == {"slow": 7.0, "fast": 7.0}
