"""Where an operator process's memory goes: run a Python program under ``tracemalloc`` and write a report.

Usage: python bench/memprobe.py REPORT_FILE -c CODE [ARGS...]   (or a script path instead of ``-c CODE``)

A background thread snapshots the traced allocations whenever they have grown 10 % past the largest snapshot
so far (the resident peak follows the largest burst of live objects: freed memory is rarely given back). At
exit (the benchmark stops the operator with SIGINT) it writes to REPORT_FILE the top allocation sites by line
and by file at that largest snapshot and at exit, and the count of live objects by type (what
``objgraph.most_common_types`` shows).
Used by ``bench/reconcile_scale.py --memory``. tracemalloc makes the process several times slower and larger,
so this finds the shares, not the absolute figures.
"""

from __future__ import annotations

import atexit
import gc
import runpy
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

FRAMES = 3
POLL_SECONDS = 0.5
SNAPSHOT_EVERY_SECONDS = 15.0


class PeakKeeper:
    """Snapshots the traced allocations whenever they have grown 10 % past the largest snapshot so far."""

    def __init__(self) -> None:
        self.snapshot: tracemalloc.Snapshot | None = None
        self.size = 0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def poll(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            self.check()

    def check(self) -> None:
        current, _ = tracemalloc.get_traced_memory()
        if current > self.size * 1.1 and time.monotonic() >= self.next_at:
            with self.lock:
                self.snapshot, self.size = _snapshot(), current
                # A snapshot costs seconds: no more than one per SNAPSHOT_EVERY_SECONDS.
                self.next_at = time.monotonic() + SNAPSHOT_EVERY_SECONDS


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    )


def _top(lines: list[str], title: str, snap: tracemalloc.Snapshot) -> None:
    for group in ("traceback", "filename"):
        stats: list[Any] = snap.statistics(group)
        lines.append(f"\n== {title}: top by {group} ==")
        for stat in stats[:25]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:>9} blocks")
            frames = stat.traceback.format(limit=FRAMES if group == "traceback" else 1)
            lines.extend("    " + f.strip() for f in frames if f.strip())


def write_report(report: Path, keeper: PeakKeeper) -> None:
    """The traced allocations at the largest snapshot and now, by site and by file; live objects by type."""
    current, peak = tracemalloc.get_traced_memory()
    lines = [
        f"traced now {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
        f"largest snapshot {keeper.size / 2**20:.1f} MiB"
    ]
    if keeper.snapshot is not None:
        _top(lines, "largest snapshot", keeper.snapshot)
    _top(lines, "at exit", _snapshot())
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    lines.append("\n== live objects by type (gc) ==")
    lines.extend(f"{count:>10} {name}" for name, count in counts.most_common(40))
    report.write_text("\n".join(lines) + "\n")


def main() -> None:
    report = Path(sys.argv[1])
    rest = sys.argv[2:]
    tracemalloc.start(FRAMES)
    keeper = PeakKeeper()
    threading.Thread(target=keeper.poll, daemon=True).start()
    atexit.register(write_report, report, keeper)
    if rest[0] == "-c":
        sys.argv = ["-c", *rest[2:]]
        exec(compile(rest[1], "<memprobe -c>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
