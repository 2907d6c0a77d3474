"""What the status says when the API server refuses one of the reconcile's writes.

A server-side apply or delete refused for good (422 Invalid, 403 Forbidden by a quota or an admission
policy, a webhook's denial) will not succeed by retrying alone: the user must be told. The shell classifies
the error (:func:`is_permanent`), and :func:`apply_failure_status` turns it into ``Degraded=True`` with reason
``ApplyFailed`` and the refused object and the API server's message, keeping the other conditions as they were
(the plan was not carried out, so the planner's view of the state after it would be wrong). One Warning Event
per distinct error: a retry that meets the same refusal writes nothing and posts nothing. The next reconcile
whose writes succeed plans ``Degraded`` from the workers again, which clears it (a transition, so an Event).

Transient errors (409 conflict, 429 throttling, 5xx, connection failures) change no condition: the shell
retries them with backoff.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tidal.plan import conditions as C
from tidal.plan.conditions import Cond, merge_conditions
from tidal.plan.types import EventSpec

APPLY_FAILED: Final = C.APPLY_FAILED
MESSAGE_LIMIT: Final = 512
"""Characters of the API server's message kept in the condition and the Event."""


def is_permanent(status: int | None) -> bool:
    """An HTTP status the API server will answer again to the same request: a 4xx other than 409 (conflict,
    e.g. a stale UID precondition or a concurrent write) and 429 (throttled). ``None`` (no answer: a
    connection error) and 5xx are transient."""
    return status is not None and 400 <= status < 500 and status not in (409, 429)


def failure_message(kind: str, namespace: str, name: str, status: int | None, message: str) -> str:
    """``Pod ns/name refused (422): <the API server's message>``, truncated."""
    code = f" ({status})" if status is not None else ""
    return f"{kind} {namespace}/{name} refused{code}: {message}"[:MESSAGE_LIMIT]


def apply_failure_status(
    old_status: Mapping[str, Any], message: str, stamp: str, generation: int | None
) -> tuple[dict[str, Any] | None, list[EventSpec]]:
    """(status fields to write, Events) for a refused write: ``Degraded=True``/``ApplyFailed`` with
    ``message``, other conditions unchanged. ``(None, [])`` when the status already says exactly this."""
    old_conds = list(old_status.get("conditions") or [])
    prev = next((c for c in old_conds if c.get("type") == C.DEGRADED), None)
    if (
        prev is not None
        and prev.get("status") == "True"
        and prev.get("reason") == APPLY_FAILED
        and prev.get("message") == message
    ):
        return None, []
    kept = [
        Cond(str(c["type"]), c.get("status") == "True", str(c.get("reason", "")), str(c.get("message", "")))
        for c in old_conds
        if c.get("type") in (C.READY, C.PROGRESSING)
    ]
    merged, transitions = merge_conditions(
        old_conds, [*kept, Cond(C.DEGRADED, True, APPLY_FAILED, message)], stamp, generation
    )
    events = [e for e in transitions if e.reason == APPLY_FAILED]
    if not events:  # still ApplyFailed, but a different refusal: news too
        events = [EventSpec("Warning", APPLY_FAILED, f"{C.DEGRADED}=True: {message}"[:1024])]
    return {"conditions": merged}, events
