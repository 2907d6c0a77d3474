"""The autoscaling trace suite: the traffic families every policy is judged on, with fixed seeds.

Why it exists: a policy tuned and judged on the same trace flatters itself (issue 14). The suite names
six synthetic families plus the public Azure 2023 conversation trace replayed at several speeds, each
at least two hours of virtual time, and two FIXED seed sets:

* ``TUNE_SEEDS`` — what anyone tuning a policy may look at, as often as they like;
* ``TEST_SEEDS`` — what a policy is judged on. They were fixed in this file (commit "sim suite") before
  any policy was tuned on the suite; changing them after looking at results defeats their purpose.

Rates are scaled for Llama-3.1-8B on one H100 with Azure-2023-like lengths (mean prompt 1,155 and
output 211 tokens, the shared trace's means), where one replica serves about 15 requests/s within the
SLO (p95 TTFT 2 s, TPOT 100 ms): every family needs between 1 and about 10 replicas.

Families (λ(t) is the mean-rate curve; arrivals are a renewal process thinned to it):

* ``bursts`` — a 12-20 req/s base (slow sine, random phase) with recurring bursts of 3-4x lasting
  60-120 s, one every 5-10 minutes;
* ``step2x`` / ``step4x`` — a one-off step from one replica's load (12 req/s) to 2x / 4x at 25-35 min,
  held for 45 min, then back;
* ``spikes`` — a 15 req/s base with recurring 10-40 s spikes of 2-3x every 3-7 minutes (shorter than a
  cold start: no reactive rule catches them);
* ``diurnal`` — a compressed day, 4 → 40 → 4 req/s, with flash crowds of 2.5x for 45 s every 25 min;
* ``gamma`` — 20 req/s with Gamma inter-arrivals whose CV steps through 1, 2, 3 and 4 (one quarter of
  the trace each, in a seed-dependent order);
* ``azure`` — the shared Azure 2023 conversation trace (about 1 h, 5.5 req/s) at 2x, 4x and 6x speed,
  rotated by a seed-dependent offset and tiled to the duration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tidal.sim.traces import Trace, from_rate, load_azure_csv

TUNE_SEEDS: tuple[int, ...] = (11, 12)
"""Seeds a tuner may look at."""
TEST_SEEDS: tuple[int, ...] = (101, 102)
"""Seeds results are reported on; fixed before any tuning (see the module docstring)."""

DURATION_S = 7200.0
QUICK_DURATION_S = 1800.0
PROMPT_MEAN, OUTPUT_MEAN = 1155.0, 211.0
AZURE_SPEEDS = (2.0, 4.0, 6.0)
AZURE_TRACE = (
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / "traces" / "azure_conv_2023.csv"
)
"""Default location of the public Azure 2023 conversation trace (``../shared/data/traces`` next to the
repository); ``load_suite(azure_path=...)`` overrides it."""

Rate = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


@dataclass(frozen=True)
class SuiteTrace:
    """One trace of the suite and where it came from."""

    family: str
    seed: int
    trace: Trace


def _episodes(
    rng: np.random.Generator,
    duration: float,
    gap: tuple[float, float],
    length: tuple[float, float],
    factor: tuple[float, float],
) -> list[tuple[float, float, float]]:
    """(start, end, factor) of recurring episodes: gaps, lengths and factors drawn uniformly."""
    out: list[tuple[float, float, float]] = []
    t = float(rng.uniform(*gap)) / 2
    while t < duration:
        d = float(rng.uniform(*length))
        out.append((t, t + d, float(rng.uniform(*factor))))
        t += d + float(rng.uniform(*gap))
    return out


def _with_episodes(base: Rate, episodes: Sequence[tuple[float, float, float]]) -> Rate:
    def lam(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        mult = np.ones_like(t)
        for a, b, f in episodes:
            mult = np.where((t >= a) & (t < b), f, mult)
        return base(t) * mult

    return lam


def _bursts(rng: np.random.Generator, duration: float) -> tuple[Rate, float]:
    phase = float(rng.uniform(0, 2 * math.pi))
    base: Rate = lambda t: 16.0 + 4.0 * np.sin(2 * np.pi * t / 3600.0 + phase)  # noqa: E731
    return _with_episodes(base, _episodes(rng, duration, (300, 600), (60, 120), (3, 4))), 1.0


def _step(factor: float) -> Callable[[np.random.Generator, float], tuple[Rate, float]]:
    def make(rng: np.random.Generator, duration: float) -> tuple[Rate, float]:
        start = float(rng.uniform(1500, 2100)) * duration / DURATION_S
        end = start + 2700.0 * duration / DURATION_S
        return _with_episodes(lambda t: np.full_like(t, 12.0), [(start, end, factor)]), 1.0

    return make


def _spikes(rng: np.random.Generator, duration: float) -> tuple[Rate, float]:
    base: Rate = lambda t: np.full_like(t, 15.0)  # noqa: E731
    return _with_episodes(base, _episodes(rng, duration, (180, 420), (10, 40), (2, 3))), 1.0


def _diurnal(rng: np.random.Generator, duration: float) -> tuple[Rate, float]:
    first = float(rng.uniform(0, 1500))
    crowds = [(float(t), float(t) + 45.0, 2.5) for t in np.arange(first, duration, 1500.0)]
    base: Rate = lambda t: 4.0 + 36.0 * np.sin(np.pi * t / duration) ** 2  # noqa: E731
    return _with_episodes(base, crowds), 1.0


SYNTHETIC_FAMILIES: dict[str, Callable[[np.random.Generator, float], tuple[Rate, float]]] = {
    "bursts": _bursts,
    "step2x": _step(2.0),
    "step4x": _step(4.0),
    "spikes": _spikes,
    "diurnal": _diurnal,
}
FAMILIES: tuple[str, ...] = (*SYNTHETIC_FAMILIES, "gamma", "azure")


def _gamma(seed: int, duration: float) -> Trace:
    """20 req/s; the inter-arrival CV steps through 1-4, one quarter each, in a seeded order."""
    rng = np.random.default_rng(seed)
    cvs = [float(c) for c in rng.permutation([1.0, 2.0, 3.0, 4.0])]
    quarter = duration / 4
    parts: list[Trace] = []
    for k, cv in enumerate(cvs):
        part = from_rate("", lambda t: np.full_like(t, 20.0), quarter, rng, cv, PROMPT_MEAN, OUTPUT_MEAN)
        parts.append(Trace("", part.arrivals + k * quarter, part.prompt, part.output))
    name = f"gamma(20/s, cv {'/'.join(f'{c:g}' for c in cvs)}, seed={seed})"
    return _concat(name, parts)


def _concat(name: str, parts: Sequence[Trace]) -> Trace:
    return Trace(
        name,
        np.concatenate([p.arrivals for p in parts]),
        np.concatenate([p.prompt for p in parts]),
        np.concatenate([p.output for p in parts]),
    )


def azure_replay(base: Trace, speed: float, seed: int, duration: float) -> Trace:
    """``base`` at ``speed``x, rotated by a seeded offset and tiled until ``duration`` (arrival order and
    lengths kept; each copy starts where the previous one ends)."""
    if len(base) == 0:
        raise ValueError("the Azure trace is empty")
    period = base.duration / speed + 1.0 / speed
    arr = base.arrivals / speed
    offset = float(np.random.default_rng(seed).uniform(0, period))
    rot = np.argsort((arr - offset) % period, kind="stable")
    arr_r = (arr[rot] - offset) % period
    copies = math.ceil(duration / period)
    t = np.concatenate([arr_r + k * period for k in range(copies)])
    keep = t < duration
    p = np.tile(base.prompt[rot], copies)[keep]
    o = np.tile(base.output[rot], copies)[keep]
    return Trace(f"azure-conv-2023 x{speed:g} (seed={seed})", t[keep], p, o)


def family_traces(
    family: str, seed: int, duration: float = DURATION_S, azure_path: str | Path | None = None
) -> list[SuiteTrace]:
    """The traces of one family for one seed (``azure`` has one per speed in ``AZURE_SPEEDS``)."""
    if family in SYNTHETIC_FAMILIES:
        rng = np.random.default_rng(seed)
        lam, cv = SYNTHETIC_FAMILIES[family](rng, duration)
        tr = from_rate(f"{family} (seed={seed})", lam, duration, rng, cv, PROMPT_MEAN, OUTPUT_MEAN)
        return [SuiteTrace(family, seed, tr)]
    if family == "gamma":
        return [SuiteTrace(family, seed, _gamma(seed, duration))]
    if family == "azure":
        path = Path(azure_path) if azure_path is not None else AZURE_TRACE
        if not path.is_file():
            raise FileNotFoundError(f"the Azure 2023 conversation trace is not at {path} (pass azure_path)")
        base = load_azure_csv(path)
        return [
            SuiteTrace(f"azure-x{s:g}", seed, azure_replay(base, s, seed, duration)) for s in AZURE_SPEEDS
        ]
    raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")


def load_suite(
    families: Sequence[str] = FAMILIES,
    seeds: str = "test",
    quick: bool = False,
    azure_path: str | Path | None = None,
) -> list[SuiteTrace]:
    """The suite's traces: ``seeds`` is ``tune`` or ``test``; ``quick`` keeps the first seed and 30 min."""
    if seeds not in ("tune", "test"):
        raise ValueError(f"seeds must be 'tune' or 'test', got {seeds!r}")
    chosen = TUNE_SEEDS if seeds == "tune" else TEST_SEEDS
    duration = QUICK_DURATION_S if quick else DURATION_S
    out: list[SuiteTrace] = []
    for fam in families:
        for seed in chosen[:1] if quick else chosen:
            out.extend(family_traces(fam, seed, duration, azure_path))
    return out
