"""The namespace's shared worker-code ConfigMap goes with its last deployment (``tidal.shell.handlers``):
another deployment keeps it, one being deleted itself does not. Two deployments deleted together (as by
``kubectl delete llmd --all``) each saw the other and left the ConfigMap behind (the control-plane test
failed one run in three before 2026-12-07)."""

from __future__ import annotations

from typing import Any

import pytest

from tidal.shell.handlers import first_live_deployment, others_remain

pytestmark = pytest.mark.unit


def _dep(deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "x"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ({("ns", "a"): [_dep(True)]}, False),  # the last one
        ({("ns", "a"): [_dep(True)], ("ns", "b"): [_dep()]}, True),  # b stays
        ({("ns", "a"): [_dep(True)], ("ns", "b"): [_dep(True)]}, False),  # deleted together
        ({("ns", "a"): [_dep(True)], ("other", "b"): [_dep()]}, False),  # another namespace's
        ({("ns", "a"): [_dep(True)], ("ns", "b"): []}, False),  # gone from the index
    ],
)
def test_others_remain(index: dict[tuple[str, str], list[dict[str, Any]]], expected: bool) -> None:
    assert others_remain(index, ("ns", "a")) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ({("ns", "b"): [_dep()], ("ns", "a"): [_dep()]}, ("ns", "a")),  # one, the first by key
        ({("ns", "a"): [_dep(True)], ("ns", "b"): [_dep()]}, ("ns", "b")),  # not one being deleted
        ({("ns", "a"): [_dep(True)]}, None),  # none left to put it back
        ({("other", "a"): [_dep()]}, None),  # another namespace's
        ({("ns", "a"): []}, None),  # gone from the index
    ],
)
def test_a_deleted_shared_configmap_reconciles_one_live_deployment(
    index: dict[tuple[str, str], list[dict[str, Any]]], expected: tuple[str, str] | None
) -> None:
    assert first_live_deployment(index, "ns") == expected  # type: ignore[arg-type]
