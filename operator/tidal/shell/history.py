"""Demand history for the headroom (issue 14): Prometheus range queries, cached per deployment.

Why it exists: the headroom (:mod:`tidal.scaling.headroom`) is the quantile of this deployment's demand
growth within one lead time, so it needs hours of demand, and it must survive an operator restart. The
history is therefore not kept in the operator at all but re-read from Prometheus: a range query over the
token rates the operator already reads (``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total``,
divided by the modelled per-replica capacity, giving replicas of work), reaching
:data:`~tidal.scaling.headroom.HISTORY_S` (4 h) back at :data:`~tidal.scaling.headroom.HISTORY_STEP_S`
(15 s) resolution, refreshed every :data:`REFRESH_S` (5 min) per deployment. Between refreshes each pass
appends its own demand sample, so the newest minutes are never missing. A failed query keeps the cached
history (or none: the algorithm falls back to its documented prior).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from tidal.scaling.headroom import HISTORY_S, HISTORY_STEP_S

log = logging.getLogger(__name__)

REFRESH_S: Final = 300.0
"""How often one deployment's history is re-read from Prometheus."""
DEMAND_QUERY: Final = (
    "sum(rate(vllm:prompt_tokens_total{{{m}}}[{w}])) / {pc}"
    " + sum(rate(vllm:generation_tokens_total{{{m}}}[{w}])) / {dc}"
)
"""Replicas of work over time: served token rates over the modelled per-replica capacity."""

RangeQuery = Callable[[str, datetime, datetime, str], list[dict[str, Any]]]
"""``(expr, start, end, step) -> result``: ``PrometheusConnect.custom_query_range``."""


def parse_range(result: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(time, value) pairs of the first series of a range-query result, NaNs dropped."""
    out: list[tuple[float, float]] = []
    for series in result[:1]:
        for t, v in series.get("values") or ():
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue
            if x == x and abs(x) != float("inf"):
                out.append((float(t), x))
    return out


class DemandHistory:
    """Per-deployment demand history: re-read from Prometheus every :data:`REFRESH_S`, extended by passes."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[float, list[tuple[float, float]]]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        key: tuple[str, str],
        query: RangeQuery,
        matchers: str,
        window: str,
        capacity: tuple[float, float] | None,
        now: float,
    ) -> list[tuple[float, float]]:
        """The history of ``key`` (namespace, name) up to ``now``; ``capacity``: prompt and generated tokens/s
        per replica (``None``: no load signal, no history)."""
        if capacity is None:
            return []
        with self._lock:
            fetched, samples = self._cache.get(key, (-float("inf"), []))
        if now - fetched >= REFRESH_S:
            expr = DEMAND_QUERY.format(m=matchers, w=window, pc=capacity[0], dc=capacity[1])
            start = datetime.fromtimestamp(now - HISTORY_S, UTC)
            try:
                samples = parse_range(
                    query(expr, start, datetime.fromtimestamp(now, UTC), f"{HISTORY_STEP_S:g}s")
                )
                fetched = now
            except Exception as exc:
                log.warning("demand history for %s/%s: %s", key[0], key[1], exc)
                fetched = now - REFRESH_S / 2  # retry sooner than a full refresh
            with self._lock:
                self._cache[key] = (fetched, samples)
        return [(t, d) for t, d in samples if now - HISTORY_S <= t < now]

    def record(self, key: tuple[str, str], now: float, demand: float | None) -> None:
        """Append a pass's demand sample (kept until the next refresh replaces the whole history)."""
        if demand is None:
            return
        with self._lock:
            fetched, samples = self._cache.get(key, (-float("inf"), []))
            if not samples or samples[-1][0] < now:
                samples = [*(s for s in samples if s[0] >= now - HISTORY_S), (now, demand)]
            self._cache[key] = (fetched, samples)

    def forget(self, key: tuple[str, str]) -> None:
        """Drop a deleted deployment's history."""
        with self._lock:
            self._cache.pop(key, None)


HISTORY = DemandHistory()
"""The operator's one cache."""
