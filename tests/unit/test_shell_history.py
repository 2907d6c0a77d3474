"""The headroom's demand history in the operator (tidal.shell.history): re-read from Prometheus range
queries every REFRESH_S per deployment (so it survives a restart), extended by each pass's sample."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tidal.scaling.headroom import HISTORY_S
from tidal.shell.history import DEMAND_QUERY, REFRESH_S, DemandHistory, parse_range

pytestmark = pytest.mark.unit

KEY = ("ns", "m")
CAP = (10_000.0, 1_000.0)


class FakeProm:
    def __init__(self, values: list[list[Any]], fail: bool = False) -> None:
        self.values, self.fail = values, fail
        self.calls: list[tuple[str, str]] = []

    def __call__(self, expr: str, start: datetime, end: datetime, step: str) -> list[dict[str, Any]]:
        self.calls.append((expr, step))
        if self.fail:
            raise ConnectionError("prometheus down")
        assert end.timestamp() - start.timestamp() == HISTORY_S
        return [{"metric": {}, "values": self.values}]


def test_parse_range_drops_nan_and_junk() -> None:
    got = parse_range([{"values": [[1, "1.5"], [2, "NaN"], [3, "x"], [4, "+Inf"], [5, "2"]]}])
    assert got == [(1.0, 1.5), (5.0, 2.0)]
    assert parse_range([]) == []


def test_history_is_read_from_prometheus_and_refreshed_on_schedule() -> None:
    prom = FakeProm([[900, "1"], [915, "2"]])
    h = DemandHistory()
    assert h.get(KEY, prom, 'namespace="ns"', "1m", CAP, 1000.0) == [(900.0, 1.0), (915.0, 2.0)]
    expr, step = prom.calls[0]
    assert expr == DEMAND_QUERY.format(m='namespace="ns"', w="1m", pc=CAP[0], dc=CAP[1]) and step == "15s"
    h.record(KEY, 1000.0, 3.0)
    assert h.get(KEY, prom, 'namespace="ns"', "1m", CAP, 1010.0)[-1] == (1000.0, 3.0)
    assert len(prom.calls) == 1  # cached until REFRESH_S
    h.get(KEY, prom, 'namespace="ns"', "1m", CAP, 1000.0 + REFRESH_S)
    assert len(prom.calls) == 2
    # A new operator process (an empty cache) reads the same history back.
    assert DemandHistory().get(KEY, prom, 'namespace="ns"', "1m", CAP, 1000.0)[0] == (900.0, 1.0)


def test_a_failed_query_keeps_the_cache_and_no_capacity_means_no_history() -> None:
    h = DemandHistory()
    assert h.get(KEY, FakeProm([], fail=True), "", "1m", CAP, 1000.0) == []
    assert h.get(KEY, FakeProm([[1, "1"]]), "", "1m", None, 1000.0) == []
