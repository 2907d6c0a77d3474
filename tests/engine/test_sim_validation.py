"""Must-show 4: the simulator agrees with the real engine within 25 % on throughput and latency.

One real vLLM CPU worker (the tiny model, started exactly as a pod would be) serves a 60 s Poisson trace
at 3 requests/s, replayed open loop; the simulator replays the same trace with a step model calibrated
on that worker with lone requests just before and just after, and two scalars (a step-time factor for the
shared CPU under load and the API process's extra TTFT) fitted on a separate 30 s calibration replay of
another trace (bench/sim_validation.py has the method and prints the table; a failed attempt is repeated
once, see ATTEMPTS). Throughput is what the client saw; latency is
what the engine's own histograms recorded (the series the autoscaler reads and the simulator emits), so
that a descheduled API process on the shared CPU, which delays streamed chunks, is not taken for
engine time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.support.engine import running_worker, tiny_model_dir

__all__ = ["tiny_model_dir"]

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sim_validation", ROOT / "bench" / "sim_validation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sim_validation"] = module
    spec.loader.exec_module(module)
    return module


ATTEMPTS = 2
"""The CPU is shared with other jobs, and a burst of their load can stall the engine for a second, which
moves a 60 s mean; a failed attempt is repeated once on the same worker (both are printed)."""


def test_simulator_matches_the_real_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    sv = _bench()
    failures: list[dict[str, float]] = []
    with running_worker(tiny_model_dir, env=sv.WORKER_ENV, log_path=tmp_path / "worker.log") as worker:
        for attempt in range(ATTEMPTS):
            cal, table, cals = sv.run(
                worker.base_url, worker.metrics_url, rate=3.0, duration=60.0, seed=attempt
            )
            print(f"\nattempt {attempt + 1}:\n" + sv.render(cal, table))
            # Every request was served, and the engine counted exactly the replayed ones.
            assert table["requests"]["real"] == table["requests"]["sim"] > 120
            assert table["engine_requests"]["real"] == table["requests"]["real"]
            # The calibration the simulator used (mean of before and after) measured something physical:
            # decode steps take time, batching amortises them, longer prompts take longer to prefill.
            assert len(cals) == 2
            assert 0 < cal.tpot_1 < 0.1 and cal.tpot_b / sv.CALIBRATION_BATCH < cal.tpot_1
            assert cal.prefill_long > cal.prefill_short > 0 and cal.ttft_short > 0
            # The fit on the calibration replay stays physical: the shared CPU may slow steps under load,
            # not make them several times faster or slower than lone requests showed.
            assert 0.5 < cal.step_scale < 3.0 and cal.loaded_overhead >= 0
            outside = {
                k: round(table[k]["ratio"], 3)
                for k in sv.COMPARED
                if abs(table[k]["ratio"] - 1) > sv.TOLERANCE
            }
            if not outside:
                return
            failures.append(outside)
    raise AssertionError(f"simulated/measured outside 1 +/- {sv.TOLERANCE} in every attempt: {failures}")
