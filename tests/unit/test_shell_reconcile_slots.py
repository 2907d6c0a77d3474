"""At most ``TIDAL_MAX_CONCURRENT_RECONCILES`` reconciles observe, plan and write at once; the ClusterIP
Service applies that follow run outside the slot, so a slow IP allocation does not hold one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidal.shell import reconciler
from tidal.shell.reconciler import (
    MAX_CONCURRENT_RECONCILES,
    KeyState,
    Reconciler,
    Written,
    max_concurrent_reconciles,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", MAX_CONCURRENT_RECONCILES), ("4", 4), ("0", 1), ("-3", 1), ("many", MAX_CONCURRENT_RECONCILES)],
)
def test_the_slot_count_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: int
) -> None:
    monkeypatch.setenv("TIDAL_MAX_CONCURRENT_RECONCILES", raw)
    assert max_concurrent_reconciles() == expected


def test_reconciles_beyond_the_slots_wait_and_slow_services_run_outside_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inside = 0
    peak = 0
    slow_started = 0
    release_slow = asyncio.Event()

    async def plan_and_write(key: tuple[str, str], indexes: Any) -> Any:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        return Written(
            plan=object(),  # type: ignore[arg-type]
            slow=[{"kind": "Service"}],
            state=KeyState(),
            meta={"namespace": key[0], "name": key[1]},
            deployment=object(),  # type: ignore[arg-type]
            now=None,  # type: ignore[arg-type]
        )

    async def carry_out(*_: Any) -> None:
        nonlocal slow_started
        slow_started += 1
        await release_slow.wait()

    rec = Reconciler(kube=object())  # type: ignore[arg-type]
    monkeypatch.setattr(rec, "plan_and_write", plan_and_write)
    monkeypatch.setattr(rec.writer, "carry_out", carry_out)
    monkeypatch.setattr(reconciler, "export_status_metrics", lambda *_: None)

    async def main() -> None:
        rec.slots = asyncio.Semaphore(2)
        runs = [asyncio.create_task(rec.run_once(("ns", f"d{i}"), {})) for i in range(6)]
        # All six get through their slot while every Service apply is still blocked.
        for _ in range(200):
            if slow_started == 6:
                break
            await asyncio.sleep(0.01)
        assert slow_started == 6
        release_slow.set()
        await asyncio.gather(*runs)

    asyncio.run(main())
    assert peak == 2
