"""Which condition transitions become Events (``tidal.plan.conditions.merge_conditions``): a new deployment's
creation finishing is one Event, ``AllReplicasReady`` carrying ``ReplicasUpToDate``'s message; a rollout or a
scale-down finishing keeps both (the fold saves one API write per new deployment; issue 17)."""

from __future__ import annotations

from typing import Any

import pytest

from tidal.plan.conditions import Cond, merge_conditions

pytestmark = pytest.mark.unit

NOW = "2026-12-07T00:00:00Z"


def _old(ready: tuple[str, str], progressing: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"type": "Ready", "status": ready[0], "reason": ready[1], "message": "", "lastTransitionTime": NOW},
        {"type": "Progressing", "status": progressing[0], "reason": progressing[1], "message": ""},
    ]


DONE = [
    Cond("Ready", True, "AllReplicasReady", "2/2 replicas ready"),
    Cond("Progressing", False, "ReplicasUpToDate", "2 replica(s) at spec hash abc"),
]


@pytest.mark.parametrize(
    ("previous_progressing", "reasons"),
    [
        ("WorkersCreated", ["AllReplicasReady"]),  # creation finished: one Event
        ("RollingUpdate", ["AllReplicasReady", "ReplicasUpToDate"]),  # a rollout finished: both
        ("ScalingDown", ["AllReplicasReady", "ReplicasUpToDate"]),
    ],
)
def test_creation_finishing_is_one_event(previous_progressing: str, reasons: list[str]) -> None:
    old = _old(("False", "WorkersStarting"), ("True", previous_progressing))
    _, events = merge_conditions(old, DONE, NOW, 1)
    assert [e.reason for e in events] == reasons
    if len(events) == 1:
        assert events[0].message == (
            "Ready=True: 2/2 replicas ready; Progressing=False: 2 replica(s) at spec hash abc"
        )


def test_progressing_alone_keeps_its_event() -> None:
    # Ready was already True (a replica was added and came up): only Progressing transitions.
    _, events = merge_conditions(_old(("True", "AllReplicasReady"), ("True", "WorkersCreated")), DONE, NOW, 1)
    assert [e.reason for e in events] == ["ReplicasUpToDate"]
