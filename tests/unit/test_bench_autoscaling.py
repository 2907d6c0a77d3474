"""bench/autoscaling.py's verdicts: the "dominated" marker names every baseline (static fleets included,
the clairvoyant never) at least as good as tidal on both SLO attainment and GPU-hours; the table marks
misses of the target and a clairvoyant that missed it. Table-driven, on hand-made rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "autoscaling.py"
    spec = importlib.util.spec_from_file_location("bench_autoscaling", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench()


def _row(
    results: dict[str, tuple[float, float]], statics: dict[int, tuple[float, float]], met: bool = True
) -> Any:
    return BENCH.Row("f", "trace", 1, 0.0, results, statics, min(statics) if statics else None, met, 1.0)


@pytest.mark.parametrize(
    ("results", "statics", "expected"),
    [
        ({"tidal": (0.995, 2.0), "hpa": (0.99, 3.0)}, {3: (0.999, 3.0)}, []),
        ({"tidal": (0.995, 2.0), "hpa": (0.995, 2.0)}, {}, ["hpa"]),  # as good on both: dominated
        ({"tidal": (0.95, 2.0), "kpa": (0.96, 1.9)}, {}, ["kpa"]),
        ({"tidal": (0.95, 2.0)}, {1: (0.90, 0.5), 2: (0.97, 1.0), 3: (1.0, 1.5)}, ["static:2", "static:3"]),
        ({"tidal": (0.95, 2.0), "clairvoyant": (0.999, 1.0)}, {}, []),  # a reference never dominates
        ({"hpa": (1.0, 1.0)}, {}, []),  # no tidal, nothing to judge
    ],
)
def test_dominators(
    results: dict[str, tuple[float, float]], statics: dict[int, tuple[float, float]], expected: list[str]
) -> None:
    assert BENCH.dominators(_row(results, statics)) == expected


def test_render_marks_misses_the_right_sized_static_and_domination() -> None:
    rows = [
        _row(
            {"tidal": (0.95, 2.0), "hpa": (0.999, 1.5), "clairvoyant": (0.98, 1.0)},
            {2: (0.995, 1.2)},
            met=False,
        ),
        _row({"tidal": (0.995, 1.0), "hpa": (0.9, 2.0), "clairvoyant": (0.999, 0.9)}, {2: (0.995, 1.2)}),
    ]
    out = BENCH.render(rows, ("tidal", "hpa", "clairvoyant"), 0.99)
    lines = out.splitlines()
    assert lines[0] == "| trace | cap. err | tidal | hpa | right-sized static | clairvoyant | dominated by |"
    assert "95.00%* / 2.00" in lines[2] and "N=2: 99.50% / 1.20" in lines[2]
    assert "98.00% MISSED / 1.00" in lines[2] and "**DOMINATED**: hpa, static:2" in lines[2]
    assert "DOMINATED" not in lines[3]
    assert "tidal meets the target on 1/2 traces, is dominated on 1/2" in out
    assert "the clairvoyant missed the target on 1" in out


def test_saved_rows_render_the_same(tmp_path: Path) -> None:
    import json
    from dataclasses import asdict

    row = _row({"tidal": (0.95, 2.0), "hpa": (0.999, 1.5)}, {2: (0.995, 1.2), 1: (0.5, 0.6)})
    back = BENCH.load_row(json.dumps(asdict(row)))
    assert back == row
    assert BENCH.render([back], ("tidal", "hpa"), 0.99) == BENCH.render([row], ("tidal", "hpa"), 0.99)


def _fam_row(
    family: str, error: float, tidal: tuple[float, float], statics: dict[int, tuple[float, float]]
) -> Any:
    return BENCH.Row(family, family, 101, error, {"tidal": tidal}, statics, min(statics), True, 1.0)


@pytest.mark.parametrize(
    ("family", "error", "tidal", "statics", "failed"),
    [
        ("bursts", 0.0, (0.995, 1.9), {4: (1.0, 2.0)}, []),
        ("bursts", 0.0, (0.985, 1.9), {4: (1.0, 2.0)}, ["attainment"]),
        ("bursts", 0.0, (0.995, 2.1), {4: (0.999, 2.0)}, ["GPU-h", "dominated"]),
        ("bursts", 0.0, (0.995, 2.0), {4: (0.995, 2.0)}, ["dominated"]),  # as good on both
        ("step4x", 0.0, (0.975, 1.0), {3: (0.999, 1.5)}, []),  # 0.97 on the one-off 4x step
        ("step4x", 0.0, (0.965, 1.0), {3: (0.999, 1.5)}, ["attainment"]),
        ("diurnal", 0.0, (0.995, 0.75), {2: (0.999, 1.0)}, ["GPU-h"]),  # above 0.7x the static
        ("diurnal", 0.0, (0.995, 0.69), {2: (0.999, 1.0)}, []),
        ("gamma", 0.0, (0.95, 0.9), {2: (0.999, 1.0)}, []),  # no attainment claim on gamma
        ("spikes", -0.3, (0.975, 9.0), {3: (0.999, 1.5)}, ["attainment"]),  # 0.98 under capacity error
        ("spikes", 0.3, (0.985, 9.0), {3: (0.999, 1.5)}, []),  # no cost claim under capacity error
        ("step4x", -0.3, (0.5, 9.0), {3: (0.999, 1.5)}, []),
    ],
)
def test_must_show_thresholds_fixed_before_tuning(
    family: str,
    error: float,
    tidal: tuple[float, float],
    statics: dict[int, tuple[float, float]],
    failed: list[str],
) -> None:
    """The must-show check (bench --check): thresholds are issue 14's, fixed before tuning."""
    out = BENCH.must_show(_fam_row(family, error, tidal, statics))
    assert len(out) == len(failed), out
    for got, want in zip(out, failed, strict=True):
        assert want in got
