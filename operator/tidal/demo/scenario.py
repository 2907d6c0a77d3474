"""What the demo runs: its options (the flags of ``tidal demo``), the example ``LLMDeployment`` adjusted for
the demo (its namespace, the demo's Prometheus, short windows) and the operator's short autoscaler interval.

It exists apart from :mod:`tidal.demo.runner` so what the demo shows can be read, and tested, without the
processes that show it; :mod:`tidal.demo.cli` reads its defaults from here without importing the runner.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "llama-3.1-8b.yaml"
NAMESPACE = "tidal-demo"

AUTOSCALER_ENV = {
    "TIDAL_AUTOSCALER_INTERVAL_SECONDS": "5",
    "TIDAL_AUTOSCALER_RATE_WINDOW": "20s",
}
"""The operator's autoscaler loop and PromQL rate window for the demo (defaults are 15 s and longer);
values already in the environment win."""

DEMO_AUTOSCALING = {
    "scaleDownStabilizationSeconds": 30,
    "coldStartSeconds": 5,
    "metricsStaleAfterSeconds": 30,
    "headroomPrior": 1.5,
    "headroomMax": 1.5,
}
"""Short windows so a scale-down happens within minutes (the example keeps production values).

The headroom is bounded at 1.5x: the demo squeezes a surge and its end into four minutes, and four minutes
of history cannot tell a one-off surge from a recurring burst. Unbounded, the one 6x surge the demo makes
reads as the growth within a lead time that this deployment must keep capacity for (0.99 of requests
within the SLO over a four-minute history), so the fleet would stay at its maximum long after the load
fell (the factor reached 10x in CI on 2026-12-07). A real deployment's history spans hours
(docs/autoscaling.md)."""


@dataclass
class DemoOptions:
    """Flags of ``tidal demo``."""

    duration_s: float = 240.0
    state_dir: Path = Path(".tidal/demo")
    keep: bool = False
    color: bool = True
    example: Path = EXAMPLE
    namespace: str = NAMESPACE
    gpu_nodes: int = 2
    low: float = 0.4
    high: float = 2.4
    out: TextIO = field(default_factory=lambda: sys.stdout)


def demo_deployment(doc: dict[str, Any], namespace: str, prometheus_url: str) -> dict[str, Any]:
    """The example adjusted for the demo: its namespace, the demo's Prometheus, short windows."""
    d = copy.deepcopy(doc)
    d["metadata"]["namespace"] = namespace
    spec = d["spec"]
    auto = spec.setdefault("autoscaling", {})
    auto["enabled"] = True
    auto["prometheus"] = {**auto.get("prometheus", {}), "url": prometheus_url}
    auto.update(DEMO_AUTOSCALING)
    spec["replicas"] = max(1, int(spec.get("minReplicas", 1)))
    return d


def load_example(path: Path) -> dict[str, Any]:
    """The one ``LLMDeployment`` in the example file."""
    import yaml  # not at the top: tidal.demo.cli imports this module, and it stays light

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if len(docs) != 1 or docs[0].get("kind") != "LLMDeployment":
        raise ValueError(f"{path}: expected one LLMDeployment")
    doc: dict[str, Any] = docs[0]
    return doc
