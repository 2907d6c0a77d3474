"""Container restarts of worker pods (``tidal.plan.restarts`` and ``plan_reconcile``): ``status.restarts``
counts them over the live pods, an ``EngineRestarted`` Event names pod, container, count and the kubelet's
termination reason when the count grows, and nothing is said when it does not."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.test_plan_reconcile import FakeCluster

from tidal.plan.restarts import container_restarts, restart_message

pytestmark = pytest.mark.unit


def _pod(name: str, *counts: tuple[str, int, dict[str, Any] | None]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "containerStatuses": [
                {"name": c, "restartCount": n, **({"lastState": {"terminated": last}} if last else {})}
                for c, n, last in counts
            ]
        },
    }


KILLED = {"reason": "Error", "exitCode": 137}


@pytest.mark.parametrize(
    ("pods", "before", "message"),
    [
        ([_pod("a", ("engine", 0, None))], 0, None),  # never restarted
        (
            [_pod("a", ("engine", 1, KILLED))],
            0,
            "the kubelet restarted worker containers (0 -> 1 restarts): "
            "pod a container engine: 1 restart(s), last Error, exit code 137",
        ),
        ([_pod("a", ("engine", 1, KILLED))], 1, None),  # already said
        (
            [_pod("a", ("engine", 2, None))],
            1,
            "the kubelet restarted worker containers (1 -> 2 restarts): "
            "pod a container engine: 2 restart(s), last unknown",
        ),
        ([], 3, None),  # the pod with the restarts is gone: the count falls, no Event
    ],
)
def test_restart_message(pods: list[dict[str, Any]], before: int, message: str | None) -> None:
    assert restart_message(container_restarts(pods), before) == message


def test_planner_counts_restarts_and_posts_one_event() -> None:
    c = FakeCluster("llama-3.1-8b.yaml", replicas=1)
    c.converge()
    c.run_all()
    c.converge()
    assert c.doc["status"]["restarts"] == 0
    pod = next(iter(c.pods.values()))
    pod["status"]["containerStatuses"][0].update(restartCount=1, lastState={"terminated": KILLED})
    plan = c.step()
    assert c.doc["status"]["restarts"] == 1
    assert [e.reason for e in plan.events] == ["EngineRestarted"]
    assert plan.events[0].type == "Warning" and "exit code 137" in plan.events[0].message
    assert c.plan().events == [], "said once"
