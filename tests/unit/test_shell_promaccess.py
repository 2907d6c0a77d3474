"""The operator's Prometheus trust boundary (tidal.shell.promaccess, tidal.shell.prom): a URL outside the
allowlist is refused before any connection (a listener counts them), TLS is verified, failures reach the
status as class and HTTP status only, label values and the spec's selector are escaped or refused, and an
observation is as old as its newest sample (so metricsStaleAfterSeconds fires on old samples)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_api_client.exceptions import PrometheusApiClientException
from tests.support.listener import CountingListener

from tidal.scaling import AutoscalerState, CapacityView, Reason, ScalingConfig, compute_desired_replicas
from tidal.shell.prom import NAMES_QUERY, SAMPLE_TIME_QUERY, PrometheusSignals, matchers
from tidal.shell.promaccess import (
    DEFAULT_ALLOW,
    PrometheusAccess,
    access_from,
    error_text,
    parse_selector,
    redact,
    url_allowed,
)

pytestmark = pytest.mark.unit

ALLOW = ("http://prom.monitoring:9090", "https://thanos.example/prom/")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://prom.monitoring:9090", True),
        ("http://prom.monitoring:9090/", True),
        ("http://PROM.monitoring:9090/sub/path", True),
        ("https://thanos.example/prom", True),
        ("https://thanos.example:443/prom/api", True),
        ("http://prom.monitoring:90901", False),  # a longer port is another server
        ("http://prom.monitoring:9090.evil.example", False),
        ("http://prom.monitoring", False),  # port 80
        ("https://prom.monitoring:9090", False),  # another scheme
        ("http://user@prom.monitoring:9090", False),  # another identity
        ("https://thanos.example/promx", False),  # not below the prefix's path
        ("https://thanos.example/", False),
        ("http://prom.monitoring:9090?x=1", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("not a url", False),
    ],
)
def test_allowlist_matches_scheme_host_port_and_path_prefix(url: str, allowed: bool) -> None:
    assert url_allowed(url, ALLOW) is allowed


def test_settings_from_flags_and_environment() -> None:
    assert access_from([], None, {}).allow == DEFAULT_ALLOW
    both = access_from(["http://a:1"], None, {"TIDAL_PROMETHEUS_ALLOW": "http://b:2, http://a:1 http://c:3"})
    assert both.allow == ("http://a:1", "http://b:2", "http://c:3")
    assert both.verify is True
    with pytest.raises(ValueError, match="not an http"):
        access_from(["prom:9090"], None, {})
    with pytest.raises(ValueError, match="CA bundle"):
        access_from([], "/nonexistent/ca.pem", {})


def test_tls_is_verified_with_the_ca_bundle(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    system = PrometheusSignals(window="1m", access=PrometheusAccess(allow=("https://p:9090",)))
    assert system.client("https://p:9090")._session.verify is True
    pinned = PrometheusSignals(window="1m", access=access_from(["https://p:9090"], str(ca), {}))
    assert pinned.client("https://p:9090")._session.verify == str(ca)


@pytest.mark.parametrize(
    ("selector", "rendered"),
    [
        ("", ""),
        ('cluster="prod"', ',cluster="prod"'),
        ('{cluster="prod", job=~"vllm-.*"}', ',cluster="prod",job=~"vllm-.*"'),
        (r'team="a\"b\\c"', r',team="a\"b\\c"'),
        ("team='x\"y'", r',team="x\"y"'),
        ('team="line\nbreak"', r',team="line\nbreak"'),
        ('a!="b",', ',a!="b"'),
    ],
)
def test_selector_is_parsed_and_rendered_escaped(selector: str, rendered: str) -> None:
    base = 'namespace="ns",tidal_dev_deployment="d"'
    assert matchers("ns", "d", selector) == base + rendered


@pytest.mark.parametrize(
    "selector",
    [
        'a="b"}) or vector(1) #',
        'a="b"} or up{',
        "a=b",
        'a="b" b="c"',
        'sum(x)="1"',
        'a="unterminated',
    ],
)
def test_selector_that_would_inject_promql_is_refused(selector: str) -> None:
    with pytest.raises(ValueError):
        parse_selector(selector)


def test_namespace_and_name_values_are_escaped() -> None:
    assert matchers('n"s\\', "d\nx") == r'namespace="n\"s\\",tidal_dev_deployment="d\nx"'


def test_errors_are_reduced_to_class_and_status() -> None:
    body = PrometheusApiClientException("HTTP Status Code 503 (b'secret-token-in-body')")
    assert error_text(body) == "PrometheusApiClientException (HTTP 503)"
    assert error_text(ConnectionError("http://x: [Errno 111] refused")) == "ConnectionError"
    assert redact("https://user:pw@prom:9090/x") == "https://prom:9090/x"


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    server = CountingListener()
    yield server
    server.close()


def test_url_outside_the_allowlist_is_never_fetched(listener: CountingListener) -> None:
    reader = PrometheusSignals(window="1m", access=PrometheusAccess(allow=("http://prom.monitoring:9090",)))
    for _ in range(3):
        obs, why = reader.observe(listener.url, "ns", "d")
        assert obs is None and why is not None and "allowlist" in why
    assert listener.connections == 0
    # The same reader, allowed: the listener does count (so the 0 above means something), and the body of
    # the 500 answer stays out of the reason.
    allowed = PrometheusSignals(window="1m", access=PrometheusAccess(allow=(listener.url,)))
    obs, why = allowed.observe(listener.url, "ns", "d")
    assert listener.connections > 0
    assert obs is None and why is not None and "HTTP 500" in why and "secret" not in why


def test_malformed_selector_is_refused_before_any_connection(listener: CountingListener) -> None:
    reader = PrometheusSignals(window="1m", access=PrometheusAccess(allow=(listener.url,)))
    obs, why = reader.observe(listener.url, "ns", "d", 'a="b"}) or vector(1) #')
    assert obs is None and why is not None and "selector refused" in why
    assert listener.connections == 0


NOW = 50_000.0


class CannedPrometheus(PrometheusSignals):
    """A reader whose Prometheus answers from a table (one replica, every signal present)."""

    def __init__(self, sample_time: float | None) -> None:
        super().__init__(window="1m", clock=lambda: NOW, access=PrometheusAccess(allow=("http://p:9090",)))
        self.sample_time = sample_time

    def _query(self, url: str, expr: str) -> list[dict[str, Any]]:
        fmt = {"m": matchers("ns", "d")}
        if expr.startswith(NAMES_QUERY.format(regex="", **fmt)[:20]):
            names = ("vllm:time_to_first_token_seconds_bucket", "vllm:kv_cache_usage_perc")
            return [{"metric": {"__name__": n}} for n in names]
        if expr == SAMPLE_TIME_QUERY.format(**fmt):
            return [] if self.sample_time is None else [{"metric": {}, "value": [NOW, str(self.sample_time)]}]
        if "by (tidal_dev_replica, pod" in expr:
            return [{"metric": {"pod": "d-r0"}, "value": [NOW, "0.5"]}]
        return [{"metric": {}, "value": [NOW, "0.5"]}]


def test_observation_time_is_the_newest_samples_time_and_old_samples_go_stale() -> None:
    config = ScalingConfig(min_replicas=1, max_replicas=4, metrics_stale_after_s=60)
    capacity = CapacityView(current=2, ready=2)
    old, why = CannedPrometheus(sample_time=NOW - 120).observe("http://p:9090", "ns", "d")
    assert old is not None and why is None and old.time == NOW - 120
    decision = compute_desired_replicas(config, old, capacity, AutoscalerState(), NOW)
    assert decision.reason is Reason.METRICS_STALE and not decision.metrics_available
    assert decision.desired == 2
    fresh, _ = CannedPrometheus(sample_time=NOW - 5).observe("http://p:9090", "ns", "d")
    assert fresh is not None and fresh.time == NOW - 5
    assert compute_desired_replicas(config, fresh, capacity, AutoscalerState(), NOW).metrics_available
    ahead, _ = CannedPrometheus(sample_time=NOW + 30).observe("http://p:9090", "ns", "d")  # skewed clock
    assert ahead is not None and ahead.time == NOW
