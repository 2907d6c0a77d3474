"""``tidal simulate``: --json fields per policy, --plot writes a PNG, clear errors on bad input, and an
Azure-format CSV trace with --time-scale. Small traces, so the whole module runs in seconds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from tidal.cli import main

FIELDS = {
    "gpu_hours",
    "slo_attainment",
    "p95_ttft_seconds",
    "p95_tpot_seconds",
    "scale_events",
    "flaps_per_hour",
}
SMALL = ["simulate", "--synthetic", "step", "--rate", "8", "--duration", "180", "--no-progress"]


def _json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, dict[str, Any]]:
    """The per-policy rows; the references (target, right-sized static, clairvoyant) are checked apart."""
    assert main([*SMALL, "--json", *extra]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, dict)
    refs = out.pop("_references")
    assert set(refs) == {"target", "capacity_error", "right_sized_static", "clairvoyant_met_target"}
    return out


def test_json_has_every_field_per_policy(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(
        capsys, "--seed", "3", "--policy", "tidal", "--policy", "static-peak", "--policy", "clairvoyant"
    )
    assert list(out) == ["tidal", "static-peak", "clairvoyant"]
    for name, row in out.items():
        assert set(row) == FIELDS | {"policy"}, name
        assert row["policy"] == name
        assert row["gpu_hours"] > 0
        assert 0 <= row["slo_attainment"] <= 1
        assert row["p95_ttft_seconds"] > 0 and row["p95_tpot_seconds"] > 0
        assert isinstance(row["scale_events"], int) and row["scale_events"] >= 0
        assert row["flaps_per_hour"] >= 0
    assert out["static-peak"]["scale_events"] == 0  # a fixed count never scales
    # Same seed, same numbers; another seed, another trace.
    again = _json(
        capsys, "--seed", "3", "--policy", "tidal", "--policy", "static-peak", "--policy", "clairvoyant"
    )
    assert again == out
    other = _json(capsys, "--seed", "4", "--policy", "tidal")
    assert other["tidal"] != out["tidal"]


def test_default_is_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, "--duration", "60")
    assert set(out) == {
        "tidal",
        "static-peak",
        "hpa",
        "kpa",
        "apa",
        "queue-threshold",
        "keda",
        "enova",
        "clairvoyant",
    }


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "sim.png"
    assert main([*SMALL, "--policy", "tidal", "--policy", "clairvoyant", "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert "tidal" in captured.out and "clairvoyant" in captured.out  # the table
    assert f"wrote {png}" in captured.err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--synthetic", "sawtooth"], "invalid choice: 'sawtooth'"),
        (["--rate", "fast"], "invalid float value: 'fast'"),
        (["--trace", "x.csv", "--synthetic", "gamma"], "not allowed with argument"),
        (["--lengths", "huge"], "invalid choice: 'huge'"),
    ],
)
def test_bad_flags_fail_clearly(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "error:" in err and "usage: tidal" in err


def test_unknown_policy_is_rejected_before_simulating(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--policy", "tidal", "--policy", "magic"]) == 2
    captured = capsys.readouterr()
    assert "unknown policy ['magic']" in captured.err and "queue-threshold" in captured.err
    assert captured.out == ""


def test_missing_trace_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main(["simulate", "--trace", str(tmp_path / "absent.csv"), "--no-progress"])


def _azure_csv(path: Path, rows: int, span_s: float) -> None:
    """Rows in the public Azure LLM inference trace format, 7 fractional digits like the real files."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(rows):
        t = 46.6805900 + span_s * i / (rows - 1)
        minute, sec = divmod(t, 60)
        lines.append(f"2023-11-16 18:{15 + int(minute):02d}:{sec:010.7f},{300 + 7 * (i % 50)},{40 + i % 90}")
    path.write_text("\n".join(lines) + "\n")


def test_azure_csv_with_time_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    _azure_csv(csv_path, rows=600, span_s=400.0)  # 1.5 req/s over 400 s
    assert "2023-11-16 18:15:46.6805900," in csv_path.read_text()
    base = [
        "simulate",
        "--trace",
        str(csv_path),
        "--no-progress",
        "--policy",
        "tidal",
        "--policy",
        "clairvoyant",
    ]
    base += ["--no-right-size"]
    assert main(base) == 0
    assert "600 requests over 400s" in capsys.readouterr().out
    assert main([*base, "--time-scale", "4"]) == 0  # 4x faster: the same requests in 100 s
    assert "600 requests over 100s" in capsys.readouterr().out
    assert main([*base, "--time-scale", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out.pop("_references")["right_sized_static"] is None  # --no-right-size
    assert set(out) == {"tidal", "clairvoyant"} and out["tidal"]["slo_attainment"] > 0.9


def test_static_n_capacity_error_and_target(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--policy", "static:1", "--policy", "static:3", "--target", "0.95", "--capacity-error", "-0.3"]
    assert main([*SMALL, "--json", *argv]) == 0
    out = json.loads(capsys.readouterr().out)
    refs = out.pop("_references")
    assert list(out) == ["static:1", "static:3"] and refs["target"] == 0.95 and refs["capacity_error"] == -0.3
    rs = refs["right_sized_static"]
    assert rs["slo_attainment"] >= 0.95 and 1 <= rs["replicas"] <= 3
    assert out["static:3"]["gpu_hours"] > out["static:1"]["gpu_hours"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--policy", "static:0"],
        ["--target", "1.5"],
        ["--capacity-error", "-1"],
        ["--max-num-batched-tokens", "0"],
        ["--expected-input-tokens", "0"],
        ["--headroom-max", "0.5"],
        ["--headroom-prior", "3", "--headroom-max", "2"],
        ["--headroom-max", "12"],
    ],
)
def test_bad_evaluation_flags_fail_before_simulating(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*SMALL, *argv]) == 2
    assert capsys.readouterr().out == ""


def test_table_names_the_target_and_the_right_sized_static(capsys: pytest.CaptureFixture[str]) -> None:
    """And no progress bar: stderr is not a terminal here, though --no-progress is not given."""
    argv = [a for a in SMALL if a != "--no-progress"]
    assert main([*argv, "--policy", "tidal"]) == 0
    captured = capsys.readouterr()
    assert "SLO-attainment target 99.00%" in captured.out and "(right-sized)" in captured.out
    assert "right-sized static" in captured.out and "[#" not in captured.err and "%" not in captured.err


def test_the_simulated_tidal_policy_runs_the_deployments_target_and_headroom(tmp_path: Path) -> None:
    """A deployment asking for 0.95 attainment and at most 1.5x headroom is simulated with both (they used
    to be dropped: the simulated policy ran 0.99 and 10x whatever the deployment said); flags win."""
    from tidal.cli.simulate import deployment_settings, register, tidal_settings
    from tidal.sim.fleet import SimConfig
    from tidal.sim.oracle import make_policy, setup_policies
    from tidal.sim.stepmodel import load_step_model
    from tidal.sim.traces import synthetic

    doc = tmp_path / "d.yaml"
    doc.write_text(
        "spec:\n  autoscaling:\n    headroomPrior: 1.2\n    headroomMax: 1.5\n"
        "    targets: {sloAttainment: 0.95}\n"
    )
    parser = argparse.ArgumentParser()
    register(parser)
    settings = deployment_settings(str(doc))
    args = parser.parse_args(["--synthetic", "gamma"])
    got = tidal_settings(args, settings["slo_attainment"], settings)
    assert got == {"slo_attainment": 0.95, "headroom_prior": 1.2, "headroom_max": 1.5}
    args = parser.parse_args(["--synthetic", "gamma", "--headroom-max", "3"])
    assert tidal_settings(args, 1.0, settings)["headroom_max"] == 3.0
    assert tidal_settings(args, 1.0, settings)["slo_attainment"] == 0.9999  # within the API's range

    trace = synthetic("gamma", 2.0, 60.0, 0)
    loaded = load_step_model("llama-3.1-8b", "h100", 1)
    cfg = SimConfig(model=loaded.model, limits=loaded.limits)
    policy = make_policy("tidal", setup_policies(trace, cfg), cfg, tidal_settings=got)
    config = policy.config  # type: ignore[attr-defined]
    assert (config.slo_attainment, config.headroom_prior, config.headroom_max) == (0.95, 1.2, 1.5)
