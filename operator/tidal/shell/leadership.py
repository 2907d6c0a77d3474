"""Whether this operator may act: kopf's peering rule, applied to Tidal's own timers too.

kopf pauses an operator when its peering object shows another live operator with a higher priority, or with
the same priority (then all of them pause). A paused kopf stops its watches and calls no handler, but the
reconcile's own in-memory timers (rollout requeues, autoscaler passes every 15 s, error retries) would go on
acting from caches that no longer change - so during a rolling update of the operator, the old pod could keep
writing next to the new one. :class:`PeeringGate` reads the same peering object (``tidal run`` passes kopf the
identity it registers under) and :func:`blocking_peer` applies kopf's rule; the reconcile defers while the
gate is closed and catches up when it opens. ``--standalone`` has no gate.

A peering object that is absent (404: no kopf.dev CRDs, or no object of that name) closes the gate, as it
pauses kopf (``tidal run`` joins a peering only when it was named or found, see
:func:`tidal.shell.peering.resolve_peering`). Every state change is logged once, in one line (an API error
as status and reason, never the client's header dump); a repeated failure is logged at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from tidal.shell.kube import Kube, api_error_text

log = logging.getLogger("tidal.operator")

POLL_SECONDS = 5.0
"""How often the gate reads the peering object(s)."""
DEFAULT_LIFETIME_SECONDS = 60
"""kopf's ``settings.peering.lifetime``: a peer not seen for this long is dead."""


def blocking_peer(status: Mapping[str, Any], me: str, priority: int, now: datetime) -> str | None:
    """The live peer that pauses ``me`` by kopf's rule (another operator of higher or equal priority whose
    ``lastseen`` + ``lifetime`` is still ahead of ``now``), described; ``None`` when ``me`` may act."""
    for identity, info in sorted(status.items()):
        if identity == me or not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.fromisoformat(str(info["lastseen"]))
            lifetime = timedelta(seconds=int(info.get("lifetime", DEFAULT_LIFETIME_SECONDS)))
            peer_priority = int(info.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue  # not a peer record kopf would count either
        if seen.tzinfo is None or seen + lifetime <= now:
            continue
        if peer_priority >= priority:
            return f"{identity} (priority {peer_priority}, ours {priority})"
    return None


class PeeringGate:
    """Reads the (Cluster)KopfPeering object(s) this operator joined and says whether it may act."""

    def __init__(self, kube: Kube, name: str, namespaces: list[str], me: str, priority: int) -> None:
        self.kube, self.name, self.namespaces = kube, name, namespaces
        self.me, self.priority = me, priority
        self.blocked_by: str | None = None
        self._last_error: str | None = None

    def _statuses(self) -> list[Mapping[str, Any]]:
        custom = self.kube.custom
        if not self.namespaces:
            obj = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", self.name)
            return [obj.get("status") or {}]
        return [
            custom.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", self.name).get("status")
            or {}
            for ns in self.namespaces
        ]

    def poll(self, now: datetime) -> bool:
        """Read the peering and return whether this operator may act. An absent peering object pauses (as
        kopf); another failed read keeps the last answer (kopf keeps its own state when its peering watch
        fails, too)."""
        try:
            statuses = self._statuses()
        except ApiException as exc:
            if exc.status != 404:
                return self._read_failed(api_error_text(exc))
            kind = "ClusterKopfPeering" if not self.namespaces else "KopfPeering"
            self._set(f"no {kind} {self.name!r} ({api_error_text(exc)}): create it or run with --standalone")
            return False
        except Exception as exc:
            return self._read_failed(api_error_text(exc))
        self._last_error = None
        peers = (blocking_peer(s, self.me, self.priority, now) for s in statuses)
        peer = next((b for b in peers if b is not None), None)
        self._set(None if peer is None else f"in favour of {peer}")
        return self.blocked_by is None

    def _read_failed(self, text: str) -> bool:
        level = logging.DEBUG if text == self._last_error else logging.WARNING
        log.log(level, "could not read the kopf peering %r: %s; keeping the last answer", self.name, text)
        self._last_error = text
        return self.blocked_by is None

    def _set(self, blocked: str | None) -> None:
        if blocked != self.blocked_by:
            if blocked is None:
                log.info("peering %r: acting again", self.name)
            else:
                log.warning("peering %r: paused (%s); reconciles deferred", self.name, blocked)
        self.blocked_by = blocked
