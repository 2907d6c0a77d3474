"""Status documents as the API server stores them: RFC 3339 stamps and merge-patch ``null``\\ s.

Its own module because both the reconcile planner and the autoscaler's status patch write timestamps and
compare what they would write with what is stored, and each used to carry its own copy of these rules. The
scaling record (``lastScale`` and the bounded ``scalingHistory``) is here for the same reason: both record
scale decisions, as the typed :class:`tidal.api.status.ScaleEvent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tidal.api.status import MAX_HISTORY, ScaleEvent


def rfc3339(now: datetime) -> str:
    """``2025-01-01T00:00:00Z``."""
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def without_nulls(value: Any) -> Any:
    """``value`` with null map entries removed (recursively): a merge patch's ``null`` deletes the key, so
    the stored object lacks it; compare like with like."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


__all__ = ["rfc3339", "without_nulls"]


def scale_record(old_status: Mapping[str, Any], event: ScaleEvent) -> dict[str, Any]:
    """The status fields recording ``event``: ``lastScale`` and ``scalingHistory`` with it appended (the
    newest :data:`MAX_HISTORY` kept)."""
    entry = event.to_dict()
    return {
        "lastScale": entry,
        "scalingHistory": [*(old_status.get("scalingHistory") or []), entry][-MAX_HISTORY:],
    }
