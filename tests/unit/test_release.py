"""The published artefacts line up: the release workflow builds ``operator/Dockerfile`` into the image the
chart points at, the image runs as the non-root user the chart's securityContext expects with ``tidal`` as
its entrypoint, and it carries the worker's code the operator ships to the pods."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "operator" / "Dockerfile").read_text()
WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yaml").read_text())
VALUES = yaml.safe_load((ROOT / "helm" / "tidal" / "values.yaml").read_text())
CHART = yaml.safe_load((ROOT / "helm" / "tidal" / "Chart.yaml").read_text())


def _instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def test_workflow_publishes_the_image_the_chart_uses_on_tags() -> None:
    # PyYAML reads the key `on` as True.
    assert WORKFLOW[True]["push"]["tags"] == ["v*.*.*"]
    assert WORKFLOW["env"]["IMAGE"] == VALUES["image"]["repository"] == "ghcr.io/tidal-dev/tidal-operator"
    build = next(
        s
        for s in WORKFLOW["jobs"]["operator-image"]["steps"]
        if s.get("uses", "").startswith("docker/build-push")
    )
    assert build["with"]["file"] == "operator/Dockerfile" and build["with"]["push"] is True
    chart_steps = " ".join(s.get("run", "") for s in WORKFLOW["jobs"]["chart"]["steps"])
    assert "helm package helm/tidal" in chart_steps and "helm push" in chart_steps
    assert WORKFLOW["permissions"]["packages"] == "write"


def test_image_is_non_root_python_slim_running_tidal() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[1-9]-slim", DOCKERFILE, re.M)
    assert _instructions("USER") == ["65532:65532"]
    assert json.loads(_instructions("ENTRYPOINT")[0]) == ["tidal"]
    assert json.loads(_instructions("CMD")[0]) == ["run"]
    # The operator ships the worker's code to the pods from its installed package.
    assert "worker/tidal_worker ./worker/tidal_worker" in _instructions("COPY")
    assert "load_worker_code()" in DOCKERFILE


def test_chart_security_context_matches_the_image_user() -> None:
    template = (ROOT / "helm" / "tidal" / "templates" / "deployment.yaml").read_text()
    assert "runAsUser: 65532" in template and "runAsNonRoot: true" in template
    assert CHART["appVersion"] == CHART["version"]
