"""What the demo prints: a ``kubectl get llmd -w``-style table, the deployment's Events, and the summary.

Pure formatting over plain values (no I/O), so the layout is unit-tested. Colour is ANSI and optional
(``--no-color``, or when stdout is not a terminal, or ``NO_COLOR`` is set).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RESET = "\033[0m"
COLORS = {"up": "\033[32m", "down": "\033[33m", "warn": "\033[31m", "dim": "\033[2m", "bold": "\033[1m"}

COLUMNS = (("TIME", 6), ("PHASE", 8), ("LOAD", 10), ("SERVED", 10), ("WAITING", 8), ("DESIRED", 8),
           ("READY", 6), ("SIGNAL", 34), ("LAST-SCALE", 18))  # fmt: skip


@dataclass
class Palette:
    """ANSI colours, or none."""

    enabled: bool = True

    def paint(self, text: str, color: str) -> str:
        if not self.enabled or color not in COLORS:
            return text
        return f"{COLORS[color]}{text}{RESET}"


def header() -> str:
    return "  ".join(name.ljust(width) for name, width in COLUMNS).rstrip()


def clock(seconds: float) -> str:
    """``m:ss`` since the demo started."""
    s = max(0, int(seconds))
    return f"{s // 60}:{s % 60:02d}"


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    t: float
    phase: str
    offered_rps: float
    served_rps: float
    waiting: float
    desired: int | None
    ready: int | None
    signal: str
    last_scale: str

    def key(self) -> tuple[Any, ...]:
        """What makes a row worth printing again (besides time)."""
        return (self.phase, self.desired, self.ready, self.last_scale)


def row(r: Row) -> str:
    cells = [
        clock(r.t),
        r.phase,
        f"{r.offered_rps:.1f} r/s",
        f"{r.served_rps:.1f} r/s",
        f"{r.waiting:.0f}",
        "-" if r.desired is None else str(r.desired),
        "-" if r.ready is None else str(r.ready),
        r.signal or "-",
        r.last_scale or "-",
    ]
    return "  ".join(c.ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)).rstrip()


def status_fields(obj: Mapping[str, Any] | None) -> tuple[int | None, int | None, str, str]:
    """(desired, ready, signal summary, last scale reason) from an LLMDeployment object."""
    if not obj:
        return None, None, "", ""
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    desired = status.get("desiredReplicas", spec.get("replicas"))
    ready = status.get("readyReplicas", 0)
    signal = (status.get("signal") or {}).get("summary", "")
    last = (status.get("lastScale") or {}).get("reason", "")
    return desired, ready, signal, last


@dataclass(frozen=True)
class EventLine:
    """One Event on the deployment."""

    t: float
    type: str
    reason: str
    message: str


SCALE_UP = "ScaledUp"
SCALE_DOWN = "ScaledDown"
INITIAL = "(initial)"
"""In the message of the ScaledUp Event of a new deployment's first replicas."""


def event(e: EventLine, palette: Palette) -> str:
    color = {SCALE_UP: "up", SCALE_DOWN: "down"}.get(e.reason, "warn" if e.type == "Warning" else "dim")
    text = f"{clock(e.t):<6}  event  {e.reason}: {e.message}"
    return palette.paint(text, color)


@dataclass
class Summary:
    """Counted over the run."""

    duration_s: float = 0.0
    scale_ups: int = 0
    scale_downs: int = 0
    peak_desired: int = 0
    peak_ready: int = 0
    events: list[EventLine] = field(default_factory=list)

    def observe(self, desired: int | None, ready: int | None) -> None:
        self.peak_desired = max(self.peak_desired, desired or 0)
        self.peak_ready = max(self.peak_ready, ready or 0)

    def record(self, e: EventLine) -> None:
        self.events.append(e)
        if e.reason == SCALE_UP and INITIAL in e.message:
            return  # creating the first replicas is not the autoscaler reacting to load
        if e.reason == SCALE_UP:
            self.scale_ups += 1
        elif e.reason == SCALE_DOWN:
            self.scale_downs += 1

    @property
    def ok(self) -> bool:
        """The demo showed what it is for: at least one scale-up and one scale-down Event."""
        return self.scale_ups >= 1 and self.scale_downs >= 1

    def first(self, reason: str) -> float | None:
        return next((e.t for e in self.events if e.reason == reason and INITIAL not in e.message), None)


def summary(s: Summary, palette: Palette) -> list[str]:
    def at(reason: str) -> str:
        t = s.first(reason)
        return "" if t is None else f" (first at {clock(t)})"

    lines = [
        palette.paint("Summary", "bold"),
        f"  duration        {clock(s.duration_s)} ({s.duration_s:.0f} s)",
        f"  scale-ups       {s.scale_ups}{at(SCALE_UP)}",
        f"  scale-downs     {s.scale_downs}{at(SCALE_DOWN)}",
        f"  peak replicas   {s.peak_desired} desired, {s.peak_ready} ready",
    ]
    if s.ok:
        lines.append(palette.paint("  result          autoscaling went up and came back down", "up"))
    else:
        missing = [n for n, c in ((SCALE_UP, s.scale_ups), (SCALE_DOWN, s.scale_downs)) if c == 0]
        lines.append(palette.paint(f"  result          no {' and no '.join(missing)} Event seen", "warn"))
    return lines


def intro(lines: Sequence[str], palette: Palette) -> list[str]:
    return [palette.paint(line, "dim") for line in lines]
