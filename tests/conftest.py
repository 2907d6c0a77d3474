"""Root pytest configuration: tier markers are assigned by directory.

tests/unit -> unit, tests/controlplane -> controlplane, tests/engine -> engine,
tests/metrics -> metrics, tests/node -> node. Shared fixtures live in tests/support and are loaded as plugins.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.support.cluster"]

_TIERS = ("unit", "controlplane", "engine", "metrics", "node")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
