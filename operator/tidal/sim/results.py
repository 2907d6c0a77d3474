"""What a simulation returns: :class:`PolicyResult` (GPU-hours, SLO attainment, p95s, scale events and
flaps, the timeline for plots), and :func:`score`, which scores a finished run's requests and events.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tidal.sim.engine import Request

FLAP_WINDOW_S = 300.0


@dataclass
class Sample:
    """One point of the timeline (taken at every scrape) for plots."""

    time: float
    request_rate: float
    """Arrivals per second over the window (the offered load, for plots)."""
    ready: int
    total: int
    ttft_p95: float | None


@dataclass
class PolicyResult:
    """What one policy did on one trace."""

    policy: str
    gpu_hours: float
    slo_attainment: float
    p95_ttft_seconds: float
    p95_tpot_seconds: float
    scale_events: int
    flaps_per_hour: float
    requests: int
    preemptions: int
    duration_s: float
    reasons: dict[str, int]
    timeline: list[Sample]
    events: list[tuple[float, int, int, str]]
    """(time, from, to, reason) of every change."""
    steps: list[tuple[int, int, int, int, float]] | None = None
    request_log: list[tuple[float, float, float, float, int]] | None = None
    """(arrival, TTFT, TPOT, finish, output tokens) of each finished request, with ``record_requests``."""
    headroom: list[tuple[float, float]] | None = None
    """(time, headroom) after each decision, for a policy exposing a numeric ``headroom`` attribute
    (the replicas it keeps beyond the demand it measures); None otherwise."""

    def summary(self) -> dict[str, float | int | str]:
        return {
            "policy": self.policy,
            "gpu_hours": round(self.gpu_hours, 4),
            "slo_attainment": round(self.slo_attainment, 5),
            "p95_ttft_seconds": round(self.p95_ttft_seconds, 4),
            "p95_tpot_seconds": round(self.p95_tpot_seconds, 4),
            "scale_events": self.scale_events,
            "flaps_per_hour": round(self.flaps_per_hour, 3),
        }


def score(
    requests: Sequence[Request],
    slo: tuple[float, float],
    events: Sequence[tuple[float, int, int, str]],
    duration_s: float,
) -> tuple[float, float, float, float, list[Request]]:
    """A run's SLO attainment (of all ``requests``, against ``slo``: TTFT, TPOT), p95 TTFT and TPOT of the
    finished ones, scale-direction flaps per hour of ``events``, and the finished requests."""
    done_reqs = [r for r in requests if r.finish >= 0]
    ttfts = np.array([r.ttft for r in done_reqs]) if done_reqs else np.zeros(1)
    tpots = np.array([r.tpot for r in done_reqs]) if done_reqs else np.zeros(1)
    ok = int(np.sum((ttfts <= slo[0]) & (tpots <= slo[1]))) if done_reqs else 0
    flaps = 0
    for (t1, a1, b1, _), (t2, a2, b2, _) in itertools.pairwise(events):
        if (b1 - a1) * (b2 - a2) < 0 and t2 - t1 <= FLAP_WINDOW_S:
            flaps += 1
    hours = max(duration_s, 1.0) / 3600
    attainment = ok / max(len(requests), 1)
    return (
        attainment,
        float(np.percentile(ttfts, 95)),
        float(np.percentile(tpots, 95)),
        flaps / hours,
        done_reqs,
    )
