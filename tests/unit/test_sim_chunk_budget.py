"""The per-step chunk budget (``max_num_batched_tokens``) in the simulator, and issue 15 must-show 4: on a
long-prompt trace the recommended chunk size raises the SLO attainment of a fixed replica count in
``tidal simulate`` compared with vLLM's 8,192.

The must-show thresholds were fixed before seeds 1-3 were run (docs/recommender.md, "The chunk budget in
the simulator", says how, and that a first claim, +5 points at 12 req/s, failed on seed 0): with 4 replicas
at 16 req/s (the prompts' compute 80 % of the fleet's) the recommended chunk gains at least 5 points of
attainment; at 12 req/s (60 %) it is higher, by a fraction of a point. Seed 1 is a held-out seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tidal.cli import main
from tidal.sim import EngineLimits, LinearStepModel, SimConfig, Trace, simulate, synthetic
from tidal.sim.baselines import StaticPolicy
from tidal.sim.engine import ReplicaEngine, Request

LONG = ["simulate", "--synthetic", "poisson", "--lengths", "long-prompt", "--duration", "600"]
MIX = ["--expected-input-tokens", "7250", "--expected-output-tokens", "72"]  # the long-prompt mix's means


def test_long_prompt_mix() -> None:
    tr = synthetic("poisson", 12, 300, seed=4, lengths="long-prompt")
    again = synthetic("poisson", 12, 300, seed=4, lengths="long-prompt")
    assert np.array_equal(tr.prompt, again.prompt) and np.array_equal(tr.output, again.output)
    assert "long-prompt" in tr.name
    long = (tr.prompt >= 4096) & (tr.prompt <= 16384)
    assert 0.75 <= long.mean() <= 0.85  # most prompts 4k-16k tokens
    assert tr.output.min() >= 16 and tr.output.max() <= 128
    with pytest.raises(ValueError, match="unknown length mix"):
        synthetic("poisson", 1, 10, lengths="huge")


def _steps(limits: EngineLimits, reqs: list[Request]) -> list[tuple[int, int, int, int, float]]:
    eng = ReplicaEngine(0, LinearStepModel(), limits, record_steps=True)
    for r in reqs:
        eng.add(r)
    now = 0.0
    while eng.has_work():
        now = eng.step(now, now + 1.0)
    assert eng.steps is not None
    return eng.steps


def test_a_long_prompt_is_split_over_steps_of_the_budget_decodes_first() -> None:
    limits = EngineLimits(max_num_seqs=8, max_num_batched_tokens=3072)
    # One request decoding (short prompt, long output), then a 10,000-token prompt.
    steps = _steps(limits, [Request(0, 0.0, 100, 50), Request(1, 0.0, 10_000, 4)])
    prefills = [(p, d) for p, d, _, _, _ in steps if p]
    assert all(p + d <= 3072 for p, d in prefills)  # decodes first, prefill gets the rest of the budget
    assert sum(p for p, _ in prefills) == 10_100
    long_steps = [p for p, d in prefills if d == 1]  # the 10k prompt's chunks beside the one decode
    assert prefills[0] == (3072, 0) and long_steps == [3071, 3071, 10_000 - 2_972 - 2 * 3071]
    # A full chunk makes the step, and the decode's gap, longer: the TPOT cost of a big budget.
    big = _steps(EngineLimits(max_num_seqs=8, max_num_batched_tokens=8192), [Request(0, 0.0, 10_000, 2)])
    small = _steps(limits, [Request(0, 0.0, 10_000, 2)])
    assert max(s[4] for s in big) > 2 * max(s[4] for s in small)
    assert len(small) > len(big)  # and a small one more steps, each paying the fixed cost


def test_the_budget_is_validated() -> None:
    cfg = SimConfig(
        model=LinearStepModel(), limits=EngineLimits(max_num_seqs=256, max_num_batched_tokens=128)
    )
    tr = Trace("one", np.array([0.0]), np.array([100]), np.array([10]))
    with pytest.raises(ValueError, match="max_num_batched_tokens 128 < max_num_seqs 256: vLLM refuses"):
        simulate(tr, StaticPolicy(1), cfg)
    with pytest.raises(ValueError, match="must be >= 1"):
        ReplicaEngine(0, LinearStepModel(), EngineLimits(max_num_batched_tokens=0))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
    assert main([*argv, "--json", "--no-progress", "--no-right-size"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    out.pop("_references")
    return out, captured.err


def test_deployment_chunk_budget_changes_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: ``maxNumBatchedTokens`` in ``--deployment`` changed no figure; now it is the budget."""
    base = [*LONG, "--rate", "16", "--duration", "120", "--seed", "2", "--policy", "static:4"]
    dep = tmp_path / "dep.yaml"
    rows = {}
    for mbt in ("auto", 512):
        engine = {"maxNumBatchedTokens": mbt}
        mix = {"expectedInputTokens": 7250, "expectedOutputTokens": 72}
        dep.write_text(yaml.safe_dump({"spec": {"engine": engine, "recommendation": mix}}))
        out, err = _run(capsys, *base, "--deployment", str(dep))
        rows[mbt] = out["static:4"]
        assert ("max_num_batched_tokens 3,072 (recommended)" if mbt == "auto" else "512 (given)") in err
    assert rows["auto"] != rows[512]
    dep.write_text("spec:\n  engine: {maxNumSeqs: 256, maxNumBatchedTokens: 128}\n")
    assert main([*base, "--deployment", str(dep)]) == 2
    captured = capsys.readouterr()
    assert "max_num_batched_tokens 128 < max_num_seqs 256: vLLM refuses" in captured.err and not captured.out


@pytest.mark.parametrize(("rate", "gain"), [(16, 0.05), (12, 0.0)])
def test_recommended_chunk_raises_attainment_of_a_fixed_fleet(
    rate: int, gain: float, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*LONG, *MIX, "--rate", str(rate), "--seed", "1", "--policy", "static:4"]
    rec, err = _run(capsys, *argv)
    assert "max_num_batched_tokens 3,072 (recommended)" in err and "max_num_seqs 24," in err
    default, err = _run(capsys, *argv, "--max-num-batched-tokens", "8192")
    assert (
        "max_num_batched_tokens 8,192 (given)" in err and "max_num_seqs 24," in err
    )  # only the chunk differs
    a, b = rec["static:4"]["slo_attainment"], default["static:4"]["slo_attainment"]
    assert a >= b + gain and a > b, (rate, a, b)
    # The mechanism: full 8,192 chunks stretch the decodes' steps (TPOT) toward the 100 ms target.
    assert rec["static:4"]["p95_tpot_seconds"] < default["static:4"]["p95_tpot_seconds"] <= 0.11
