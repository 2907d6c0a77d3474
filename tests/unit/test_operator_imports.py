"""The operator process imports no numpy and no simulator: each costs resident memory in every operator pod.

import-linter's contract (pyproject.toml) checks the import graph; this checks what a fresh interpreter really
loads (package ``__init__`` modules included) when ``tidal run`` starts: the console script imports only the
subcommand it runs (``tidal simulate`` needs numpy).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = (
    "numpy",
    "matplotlib",
    "tidal.sim.fleet",
    "tidal.sim.oracle",
    "tidal.sim.traces",
    "kubernetes.client.api",
)


def test_the_operator_entrypoint_loads_no_numpy_no_simulator() -> None:
    code = (
        "import json, sys\n"
        "from tidal.cli import build_parser\n"
        "build_parser(['run', '--standalone'])  # what `tidal run` imports, through the console script\n"
        "import tidal.shell.handlers, tidal.shell.autoscale, tidal.shell.prom\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_simulator_still_loads_on_first_use() -> None:
    import tidal.sim

    assert tidal.sim.simulate.__module__ == "tidal.sim.fleet"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tidal.sim.nope  # noqa: B018
