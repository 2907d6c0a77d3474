"""Request traces for the simulator: the Azure LLM inference trace CSV format and seeded generators.

A :class:`Trace` is three aligned arrays: arrival time (seconds from 0, sorted), prompt tokens and
output tokens. ``time_scale`` > 1 replays faster (arrival times are divided by it: 2 doubles the rate).

Synthetic generators (all seeded, numpy ``default_rng``): ``poisson``; ``gamma`` (gamma-distributed
inter-arrivals with coefficient of variation ``cv``, default 3: bursty at short time scales, the shape
used by BurstGPT-style traces); ``step`` (rate x4 from a third of the duration); ``spike`` (x3 for
two minutes mid-trace); ``diurnal`` (sinusoidal rate, ±50 % over the duration). Time-varying ones
draw by thinning, with gamma-renewal burstiness when ``cv`` > 1. Token lengths come from a length mix
(``LENGTH_MIXES``): ``conversation`` (default), lognormal with the means of the Azure 2023 conversation trace
(~1k prompt, ~200 output tokens) unless given; ``long-prompt``, the mix where the chunk budget matters (RAG,
code, summarisation: 80 % of prompts log-uniform in 4,096-16,384 tokens, the rest conversation-like up to
4,096, outputs uniform in 16-128 tokens; :func:`long_prompt_lengths`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

SYNTHETIC = ("poisson", "gamma", "step", "spike", "diurnal")
LENGTH_MIXES = ("conversation", "long-prompt")
LONG_PROMPT_SHARE = 0.8
"""Share of a ``long-prompt`` trace's prompts drawn log-uniform in [LONG_PROMPT_MIN, LONG_PROMPT_MAX]."""
LONG_PROMPT_MIN, LONG_PROMPT_MAX = 4096, 16384
SHORT_OUTPUT_MIN, SHORT_OUTPUT_MAX = 16, 128


@dataclass(frozen=True)
class Trace:
    """Aligned arrays of arrivals (s), prompt tokens and output tokens."""

    name: str
    arrivals: npt.NDArray[np.float64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.arrivals.size)

    @property
    def duration(self) -> float:
        return float(self.arrivals[-1]) if self.arrivals.size else 0.0

    def rate_series(self, interval_s: float, horizon: float | None = None) -> npt.NDArray[np.float64]:
        """Requests/s in consecutive ``interval_s`` bins from 0 to ``horizon`` (default: the trace end)."""
        end = horizon if horizon is not None else self.duration
        bins = max(1, math.ceil(end / interval_s))
        counts = np.bincount((self.arrivals // interval_s).astype(np.int64), minlength=bins)[:bins]
        return counts.astype(np.float64) / interval_s


def _parse_ts(text: str) -> float:
    text = text.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        frac = (frac + "000000")[:6]  # Azure traces carry 7 fractional digits; datetime takes 6
        text = f"{head}.{frac}"
    return datetime.fromisoformat(text).timestamp()


def load_azure_csv(path: str | Path, time_scale: float = 1.0, duration_s: float | None = None) -> Trace:
    """Read ``TIMESTAMP,ContextTokens,GeneratedTokens`` (Azure LLM inference trace format)."""
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            times.append(_parse_ts(row["TIMESTAMP"]))
            prompt.append(max(1, int(float(row["ContextTokens"]))))
            output.append(max(1, int(float(row["GeneratedTokens"]))))
    if not times:
        raise ValueError(f"{path}: no rows")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    arr = (t[order] - t[order][0]) / time_scale
    p = np.asarray(prompt, dtype=np.int64)[order]
    o = np.asarray(output, dtype=np.int64)[order]
    if duration_s is not None:
        keep = arr <= duration_s
        arr, p, o = arr[keep], p[keep], o[keep]
    return Trace(Path(path).name, arr, p, o)


def _lengths(
    rng: np.random.Generator, n: int, mean: float, sigma: float, lo: int, hi: int
) -> npt.NDArray[np.int64]:
    mu = math.log(mean) - sigma * sigma / 2
    return np.clip(np.rint(rng.lognormal(mu, sigma, n)), lo, hi).astype(np.int64)


def long_prompt_lengths(
    rng: np.random.Generator, n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Prompt and output tokens of the ``long-prompt`` mix (see the module docstring)."""
    long = rng.random(n) < LONG_PROMPT_SHARE
    lo, hi = math.log(LONG_PROMPT_MIN), math.log(LONG_PROMPT_MAX)
    long_len = np.rint(np.exp(rng.uniform(lo, hi, n))).astype(np.int64)
    short_len = _lengths(rng, n, 1000.0, 0.8, 16, LONG_PROMPT_MIN)
    output = rng.integers(SHORT_OUTPUT_MIN, SHORT_OUTPUT_MAX + 1, n).astype(np.int64)
    return np.where(long, long_len, short_len), output


def _token_lengths(
    rng: np.random.Generator, n: int, lengths: str, prompt_mean: float, output_mean: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    if lengths == "long-prompt":
        return long_prompt_lengths(rng, n)
    if lengths != "conversation":
        raise ValueError(f"unknown length mix {lengths!r}; choose from {', '.join(LENGTH_MIXES)}")
    return _lengths(rng, n, prompt_mean, 0.8, 16, 8000), _lengths(rng, n, output_mean, 0.8, 1, 2000)


def _renewal(rng: np.random.Generator, rate: float, duration: float, cv: float) -> npt.NDArray[np.float64]:
    """Arrival times of a renewal process with mean rate ``rate`` and inter-arrival CV ``cv``."""
    n = int(rate * duration * 1.3 + 100)
    out: list[npt.NDArray[np.float64]] = []
    t0 = 0.0
    while True:
        if cv == 1.0:
            gaps = rng.exponential(1.0 / rate, n)
        else:
            shape = 1.0 / (cv * cv)
            gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
        times = t0 + np.cumsum(gaps)
        out.append(times)
        t0 = float(times[-1])
        if t0 >= duration:
            break
    arr = np.concatenate(out)
    return arr[arr < duration]


def rate_function(
    kind: str, rate: float, duration: float
) -> Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]:
    """The mean-rate curve λ(t) of a synthetic kind."""
    if kind in ("poisson", "gamma"):
        return lambda t: np.full_like(t, rate)
    if kind == "step":
        return lambda t: np.where(t >= duration / 3, 4 * rate, rate)
    if kind == "spike":
        mid = duration / 2
        return lambda t: np.where((t >= mid) & (t < mid + 120), 3 * rate, rate)
    if kind == "diurnal":
        return lambda t: rate * (1 + 0.5 * np.sin(2 * np.pi * t / duration - np.pi / 2))
    raise ValueError(f"unknown synthetic trace {kind!r}; choose from {', '.join(SYNTHETIC)}")


def from_rate(
    name: str,
    lam: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
    duration: float,
    rng: np.random.Generator,
    cv: float = 1.0,
    prompt_mean: float = 1000.0,
    output_mean: float = 200.0,
    lengths: str = "conversation",
) -> Trace:
    """A trace with mean-rate curve ``lam`` over ``[0, duration)``: a renewal process at the peak rate
    with inter-arrival CV ``cv``, thinned to ``lam``; token lengths from the mix ``lengths`` (the
    conversation mix: lognormal with the given means)."""
    grid = np.linspace(0, duration, max(2001, int(duration) + 1))
    peak = float(np.max(lam(grid)))
    if peak <= 0:
        raise ValueError(f"{name}: the rate curve is never positive")
    cand = _renewal(rng, peak, duration, cv)
    keep = rng.random(cand.size) < lam(cand) / peak
    arr = cand[keep]
    prompt, output = _token_lengths(rng, arr.size, lengths, prompt_mean, output_mean)
    return Trace(name, arr, prompt, output)


def synthetic(
    kind: str,
    rate: float,
    duration: float,
    seed: int = 0,
    cv: float | None = None,
    prompt_mean: float = 1000.0,
    output_mean: float = 200.0,
    lengths: str = "conversation",
) -> Trace:
    """A seeded synthetic trace. ``cv`` defaults to 3 for ``gamma`` and 1 (Poisson) otherwise;
    ``lengths`` is the token-length mix (``LENGTH_MIXES``)."""
    if lengths not in LENGTH_MIXES:
        raise ValueError(f"unknown length mix {lengths!r}; choose from {', '.join(LENGTH_MIXES)}")
    rng = np.random.default_rng(seed)
    lam = rate_function(kind, rate, duration)
    c = cv if cv is not None else (3.0 if kind == "gamma" else 1.0)
    mix = "" if lengths == "conversation" else f", {lengths}"
    name = f"{kind}(rate={rate:g}, cv={c:g}, seed={seed}{mix})"
    if kind not in ("poisson", "gamma"):
        return from_rate(name, lam, duration, rng, c, prompt_mean, output_mean, lengths)
    arr = _renewal(rng, rate, duration, c)
    prompt, output = _token_lengths(rng, arr.size, lengths, prompt_mean, output_mean)
    return Trace(name, arr, prompt, output)
