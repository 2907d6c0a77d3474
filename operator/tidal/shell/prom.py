"""The Prometheus signals reader: per deployment, one :class:`~tidal.scaling.FleetObservation` (with
per-replica :class:`~tidal.scaling.ReplicaStats`) read with ``prometheus-api-client``.

Label contract (the chart's PodMonitor and alerts use the same): every worker series carries ``namespace``,
``tidal_dev_deployment`` (:func:`tidal.builders.names.label_value` of the name), ``tidal_dev_replica`` and
``pod``; ``spec.autoscaling.prometheus.selector`` adds matchers. Every PromQL string lives in
:data:`QUERIES`.

vLLM renamed metrics across versions, so the reader asks Prometheus which names a deployment's series
have (cached per URL and deployment for :data:`NAMES_TTL_S` once found) instead of hard-coding one
version: ``vllm:kv_cache_usage_perc`` (V1) or ``vllm:gpu_cache_usage_perc`` (older);
``vllm:inter_token_latency_seconds`` or the older ``vllm:time_per_output_token_seconds``; DCGM's
``DCGM_FI_DEV_GPU_UTIL`` when the exporter runs.

Only URLs the operator's allowlist allows are queried, with TLS verified, and a failure reaches the
condition as its class and HTTP status only (:mod:`tidal.shell.promaccess`). An observation is as old as
its newest gauge sample (``timestamp()`` of the deployment's ``vllm:num_requests_running`` series), not
the time of the query, so ``metricsStaleAfterSeconds`` holds the count when Prometheus only has old samples.

Synchronous (``requests`` underneath): the handlers call it through ``asyncio.to_thread``. An unreachable
Prometheus or a deployment without series gives no observation (the algorithm then holds the replica count,
reason ``MetricsStale``) and a short error text for the condition message.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import requests
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from tidal.scaling import FleetObservation, ReplicaStats
from tidal.shell import promaccess
from tidal.shell.promaccess import (
    PrometheusAccess,
    error_text,
    escape,
    parse_selector,
    redact,
    render_matchers,
)

log = logging.getLogger(__name__)

RATE_WINDOW_ENV: Final = "TIDAL_AUTOSCALER_RATE_WINDOW"
DEFAULT_RATE_WINDOW: Final = "1m"
NAMES_TTL_S: Final = 300.0
QUERY_TIMEOUT_S: Final = 5.0

TTFT: Final = "vllm:time_to_first_token_seconds"
TPOT_NAMES: Final = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
KV_NAMES: Final = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
DCGM_UTIL: Final = "DCGM_FI_DEV_GPU_UTIL"

QUERIES: Final = {
    # Fleet p95s: the histograms of all replicas merged.
    "ttft_p95": "histogram_quantile(0.95, sum by (le) (rate({ttft}_bucket{{{m}}}[{w}])))",
    "tpot_p95": "histogram_quantile(0.95, sum by (le) (rate({tpot}_bucket{{{m}}}[{w}])))",
    "queue_time_p95": (
        "histogram_quantile(0.95, sum by (le) (rate(vllm:request_queue_time_seconds_bucket{{{m}}}[{w}])))"
    ),
    "preemption_rate": "sum(rate(vllm:num_preemptions_total{{{m}}}[{w}]))",
    "request_rate": "sum(rate(vllm:request_success_total{{{m}}}[{w}]))",
    "prompt_token_rate": "sum(rate(vllm:prompt_tokens_total{{{m}}}[{w}]))",
    "generation_token_rate": "sum(rate(vllm:generation_tokens_total{{{m}}}[{w}]))",
    "gpu_util": 'avg({dcgm}{{namespace="{ns}",pod=~"{pods}"}}) / 100',
    # Per replica (summed/averaged to the fleet value by the reader).
    "replica_ttft_p95": (
        "histogram_quantile(0.95, sum by (tidal_dev_replica, pod, le) (rate({ttft}_bucket{{{m}}}[{w}])))"
    ),
    "replica_tpot_p95": (
        "histogram_quantile(0.95, sum by (tidal_dev_replica, pod, le) (rate({tpot}_bucket{{{m}}}[{w}])))"
    ),
    "replica_waiting": "sum by (tidal_dev_replica, pod) (vllm:num_requests_waiting{{{m}}})",
    "replica_running": "sum by (tidal_dev_replica, pod) (vllm:num_requests_running{{{m}}})",
    "replica_kv": "avg by (tidal_dev_replica, pod) ({kv}{{{m}}})",
    "replica_request_rate": "sum by (tidal_dev_replica, pod) (rate(vllm:request_success_total{{{m}}}[{w}]))",
}
"""Every PromQL the autoscaler runs. ``{m}``: the deployment's matchers, ``{w}``: the rate window."""

NAMES_QUERY: Final = 'group by (__name__) ({{__name__=~"{regex}",{m}}})'
"""Which of the vLLM names this module knows a deployment's series carry."""
DCGM_QUERY: Final = 'count({dcgm}{{namespace="{ns}",pod=~"{pods}"}})'
"""Whether the DCGM exporter reports GPUs of the deployment's pods (a separate query: ``or`` would match
on the labels without ``__name__`` and drop it)."""
SAMPLE_TIME_QUERY: Final = "max(timestamp(vllm:num_requests_running{{{m}}}))"
"""When the deployment's newest gauge sample was scraped (the observation's time). One metric name:
``timestamp()`` drops the name, so two names would give duplicate label sets (an error)."""
_WANTED = (TTFT, *TPOT_NAMES, *KV_NAMES)


def rate_window() -> str:
    """The rate window from ``$TIDAL_AUTOSCALER_RATE_WINDOW`` (a PromQL duration, default ``1m``)."""
    value = os.environ.get(RATE_WINDOW_ENV, DEFAULT_RATE_WINDOW).strip()
    if not re.fullmatch(r"\d+(ms|s|m|h)", value):
        raise ValueError(f"{RATE_WINDOW_ENV}={value!r} is not a PromQL duration such as 30s or 1m")
    return value


def matchers(namespace: str, deployment_label: str, selector: str = "") -> str:
    """The label matchers of one deployment's worker series, plus the spec's extra ``selector`` (parsed and
    re-rendered with escaped values; ValueError when it is not a list of label matchers)."""
    return render_matchers(
        [
            ("namespace", "=", namespace),
            ("tidal_dev_deployment", "=", deployment_label),
            *parse_selector(selector),
        ]
    )


class PrometheusNotAllowed(Exception):
    """A URL outside the operator's allowlist: raised by :meth:`PrometheusSignals.client` before any
    connection, so no query path (signals, demand history, KV check) can reach it."""


@dataclass(frozen=True)
class MetricNames:
    """The metric names this Prometheus has (one vLLM generation or the other)."""

    tpot: str | None
    kv: str | None
    dcgm: bool
    ttft: bool

    @property
    def any_vllm(self) -> bool:
        return self.ttft or self.tpot is not None or self.kv is not None


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


class PrometheusSignals:
    """Reads observations from Prometheus servers (one client per URL, names detected per URL)."""

    def __init__(
        self,
        window: str | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = QUERY_TIMEOUT_S,
        access: PrometheusAccess | None = None,
    ) -> None:
        self.window = window or rate_window()
        self.access = access or promaccess.current()
        self._refused: set[str] = set()
        self.clock = clock
        self.timeout = timeout
        self._clients: dict[str, PrometheusConnect] = {}
        self._names: dict[tuple[str, str], tuple[float, MetricNames]] = {}
        self._lock = threading.Lock()

    def client(self, url: str) -> PrometheusConnect:
        """The cached client for ``url`` (one retry: an autoscaler pass must not hang on a dead server).
        Raises :class:`PrometheusNotAllowed` for a URL outside the allowlist."""
        if not self.access.allows(url):
            raise PrometheusNotAllowed(f"Prometheus {redact(url)} is not in the operator's allowlist")
        with self._lock:
            if url not in self._clients:
                session = requests.Session()
                session.verify = self.access.verify
                self._clients[url] = PrometheusConnect(
                    url=url,
                    session=session,
                    retry=Retry(total=1, backoff_factor=0.1, status_forcelist=(502, 503, 504)),
                    timeout=self.timeout,
                )
            return self._clients[url]

    def _query(self, url: str, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client(url).custom_query(expr)
        return result

    def names(self, url: str, fmt: Mapping[str, str]) -> MetricNames:
        """Which metric names the deployment's series have (``fmt``: the query parameters); cached for
        :data:`NAMES_TTL_S` once a vLLM name was seen (not before: the workers may still be starting)."""
        now = self.clock()
        key = (url, fmt["m"])
        cached = self._names.get(key)
        if cached is not None and now - cached[0] < NAMES_TTL_S:
            return cached[1]
        regex = "|".join(re.escape(n) + ("_bucket" if "seconds" in n else "") for n in _WANTED)
        found = {
            str(r.get("metric", {}).get("__name__"))
            for r in self._query(url, NAMES_QUERY.format(regex=regex, **fmt))
        }
        names = MetricNames(
            tpot=next((n for n in TPOT_NAMES if f"{n}_bucket" in found), None),
            kv=next((n for n in KV_NAMES if n in found), None),
            dcgm=bool(self._query(url, DCGM_QUERY.format(**fmt))),
            ttft=f"{TTFT}_bucket" in found,
        )
        if names.any_vllm:
            self._names[key] = (now, names)
        return names

    def observe(
        self, url: str, namespace: str, deployment_label: str, selector: str = "", pod_prefix: str = ""
    ) -> tuple[FleetObservation | None, str | None]:
        """(observation, None), or (None, why) when Prometheus cannot be read or has no series. A URL outside
        the allowlist or a malformed selector is refused before any connection."""
        if not self.access.allows(url):
            why = (
                f"Prometheus {redact(url)} is not in the operator's allowlist (tidal run --prometheus-allow, "
                "chart value operator.prometheus.allow): not queried"
            )
            if url not in self._refused:  # once per URL: the pass repeats every 15 s
                self._refused.add(url)
                log.warning("%s/%s: %s", namespace, deployment_label, why)
            return None, why
        try:
            matchers(namespace, deployment_label, selector)
        except ValueError as exc:
            return None, f"spec.autoscaling.prometheus.selector refused: {exc}; not queried"
        try:
            return self._observe(url, namespace, deployment_label, selector, pod_prefix)
        except Exception as exc:  # requests errors, API errors, malformed answers: all mean "no metrics"
            # Class and status code only: a response body or a message quoting it never reaches the status.
            why = f"Prometheus {redact(url)} query failed: {error_text(exc)}"
            log.warning("%s/%s: %s", namespace, deployment_label, why)
            return None, why

    def _observe(
        self, url: str, namespace: str, deployment_label: str, selector: str, pod_prefix: str
    ) -> tuple[FleetObservation | None, str | None]:
        now = self.clock()
        fmt = {
            "m": matchers(namespace, deployment_label, selector),
            "w": self.window,
            "ttft": TTFT,
            "dcgm": DCGM_UTIL,
            "ns": escape(namespace),
            # A PromQL string literal: the regex's backslashes are escaped once more.
            "pods": escape(re.escape(pod_prefix or deployment_label) + r"-r[0-9]+(-[0-9]+)?"),
        }
        names = self.names(url, fmt)
        if not names.any_vllm:
            return None, f"no vLLM series for {namespace}/{deployment_label} in Prometheus {url}"
        fmt["tpot"] = names.tpot or TPOT_NAMES[0]
        fmt["kv"] = names.kv or KV_NAMES[0]

        def scalar_query(expr: str) -> float | None:
            result = self._query(url, expr)
            return _number(result[0]["value"][1]) if result else None

        def scalar(key: str) -> float | None:
            return scalar_query(QUERIES[key].format(**fmt))

        def per_replica(key: str) -> dict[str, float | None]:
            out: dict[str, float | None] = {}
            for r in self._query(url, QUERIES[key].format(**fmt)):
                labels: Mapping[str, str] = r.get("metric", {})
                rid = labels.get("pod") or labels.get("tidal_dev_replica") or "?"
                out[rid] = _number(r["value"][1])
            return out

        waiting = per_replica("replica_waiting")
        running = per_replica("replica_running")
        kv = per_replica("replica_kv") if names.kv else {}
        ttft = per_replica("replica_ttft_p95") if names.ttft else {}
        tpot = per_replica("replica_tpot_p95") if names.tpot else {}
        requests = per_replica("replica_request_rate")
        ids = sorted(set(waiting) | set(running) | set(kv) | set(ttft) | set(tpot))
        if not ids:
            return None, f"no vLLM series for {namespace}/{deployment_label} in Prometheus {url}"
        replicas = tuple(
            ReplicaStats(
                replica=rid,
                ttft_p95=ttft.get(rid),
                tpot_p95=tpot.get(rid),
                running=running.get(rid),
                waiting=waiting.get(rid),
                kv_cache_usage=kv.get(rid),
                request_rate=requests.get(rid),
            )
            for rid in ids
        )

        def total(values: dict[str, float | None]) -> float | None:
            xs = [v for v in values.values() if v is not None]
            return sum(xs) if xs else None

        kvs = [v for v in kv.values() if v is not None]
        sampled = scalar_query(SAMPLE_TIME_QUERY.format(**fmt))
        obs = FleetObservation(
            # The newest gauge sample's time (never ahead of ours); without gauges, the windowed rates are
            # as fresh as the query.
            time=now if sampled is None else min(sampled, now),
            ttft_p95=scalar("ttft_p95") if names.ttft else None,
            tpot_p95=scalar("tpot_p95") if names.tpot else None,
            queue_time_p95=scalar("queue_time_p95"),
            waiting=total(waiting),
            running=total(running),
            kv_cache_usage=sum(kvs) / len(kvs) if kvs else None,
            preemption_rate=scalar("preemption_rate"),
            request_rate=scalar("request_rate"),
            prompt_token_rate=scalar("prompt_token_rate"),
            generation_token_rate=scalar("generation_token_rate"),
            gpu_util=scalar("gpu_util") if names.dcgm else None,
            replicas=replicas,
        )
        return obs, None


__all__ = [
    "DEFAULT_RATE_WINDOW",
    "QUERIES",
    "RATE_WINDOW_ENV",
    "SAMPLE_TIME_QUERY",
    "MetricNames",
    "PrometheusNotAllowed",
    "PrometheusSignals",
    "matchers",
    "rate_window",
]
