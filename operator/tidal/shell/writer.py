"""The reconcile's writes: deletes and server-side applies on their lanes, refusals turned into
``Degraded``/``ApplyFailed`` with an Event, the retry backoff, and the memory of writes the watch has not
shown yet.

Its own module because how the operator writes (which thread lane, in which order, what it repeats, how long
it waits after a failure) is what keeps a burst of deployments from crowding the API server, and it is
independent of what the planner decided: the reconciler (:mod:`tidal.shell.reconciler`) hands it a plan.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from kubernetes.client.exceptions import ApiException

from tidal.api import LLMDeployment
from tidal.plan import ObjectRef, Observed, rfc3339
from tidal.plan.documents import without_nulls
from tidal.plan.failures import apply_failure_status, failure_message, is_permanent
from tidal.shell.events import post_events
from tidal.shell.kube import Kube

log = logging.getLogger("tidal.operator")

CLUSTER_IP_THREADS: Final = 4
"""Concurrent applies of Services that need a ClusterIP. The API server allocates ClusterIPs one at a time
(about 2 per second on the 2-core development machine, against hundreds of pod applies): a separate lane keeps
them from occupying the threads every other write needs."""
EVENT_THREADS: Final = 2
"""Threads that post Events. Events are informational: on their own small lane they never hold the threads
the reconciles' writes need, and a burst of them waits instead of crowding the API server."""
RECENT_APPLY_SECONDS: Final = 30.0
"""A Service or PodDisruptionBudget applied this recently with the same content is not applied again while
the watch has not shown it yet (a reconcile that follows at once would otherwise repeat the write)."""
ERROR_BACKOFF_SECONDS: Final = (2.0, 5.0, 15.0, 30.0, 60.0)
"""Retry delays after a transient error (409, 429, 5xx, no connection), by consecutive failures."""
REFUSED_BACKOFF_START_SECONDS: Final = 5.0
"""First retry after the API server refused a write for good; doubles per consecutive failure up to
``$TIDAL_ERROR_BACKOFF_MAX_SECONDS`` (default 300)."""


class WriteError(Exception):
    """A delete or apply of the plan failed; ``permanent`` when the API server refused it for good."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass
class RecentWrites:
    """What this operator wrote for one deployment that the watch may not have shown yet."""

    last_status: dict[str, Any] | None = None
    """Every status field written since the watch last showed all of them."""
    applied: dict[str, tuple[str, float]] = field(default_factory=dict)
    """``kind/name`` -> (content, monotonic time) of Services and PDBs applied that the watch has not shown
    yet (see :data:`RECENT_APPLY_SECONDS`)."""


def backoff_seconds(errors: int, permanent: bool) -> float:
    """Delay before retry number ``errors`` (>= 1): exponential for refused writes, the transient table
    otherwise; both capped at ``$TIDAL_ERROR_BACKOFF_MAX_SECONDS`` (default 300)."""
    cap = float(os.environ.get("TIDAL_ERROR_BACKOFF_MAX_SECONDS", "300"))
    if permanent:
        delay = REFUSED_BACKOFF_START_SECONDS * 2.0 ** min(max(errors - 1, 0), 16)
    else:
        delay = ERROR_BACKOFF_SECONDS[min(max(errors, 1), len(ERROR_BACKOFF_SECONDS)) - 1]
    return min(cap, delay)


def contains_status(written: Mapping[str, Any] | None, status: Mapping[str, Any]) -> bool:
    """``status`` was already written (every key with the same value)."""
    return written is not None and all(
        without_nulls(written.get(k)) == without_nulls(v) for k, v in status.items()
    )


def allocates_cluster_ip(obj: Mapping[str, Any]) -> bool:
    """A Service that needs a ClusterIP (applied on its own lane, after the status)."""
    return obj.get("kind") == "Service" and (obj.get("spec") or {}).get("clusterIP") != "None"


def _remembered(obj: Mapping[str, Any]) -> str | None:
    """The key under which an apply of ``obj`` is remembered (Services and PDBs), else ``None``."""
    if obj.get("kind") not in ("Service", "PodDisruptionBudget"):
        return None
    return f"{obj['kind']}/{obj['metadata']['name']}"


def not_recently_applied(
    memory: RecentWrites, apply: list[dict[str, Any]], observed: Observed
) -> list[dict[str, Any]]:
    """``apply`` less the Services and PDBs applied with the same content within
    :data:`RECENT_APPLY_SECONDS` that the watch has not shown yet (what it has shown is forgotten: from then
    on the planner compares with the observed object)."""
    for kind, objs in (("Service", observed.services), ("PodDisruptionBudget", observed.pdbs)):
        for obj in objs:
            memory.applied.pop(f"{kind}/{obj.get('metadata', {}).get('name')}", None)
    now = time.monotonic()
    out = []
    for obj in apply:
        key = _remembered(obj)
        previous = memory.applied.get(key) if key is not None else None
        if (
            previous is not None
            and now - previous[1] < RECENT_APPLY_SECONDS
            and previous[0] == json.dumps(obj, sort_keys=True)
        ):
            continue
        out.append(obj)
    return out


def _describe(exc: BaseException) -> tuple[int | None, str]:
    """(HTTP status or ``None``, the API server's message) of a failed request."""
    if not isinstance(exc, ApiException):
        return None, f"{type(exc).__name__}: {exc}"
    text = exc.reason or ""
    try:
        body = json.loads(exc.body) if exc.body else {}
        text = str(body.get("message") or text)
    except (TypeError, ValueError, AttributeError):
        pass
    return exc.status, text


def _first_failure(results: list[Any], what: list[tuple[str, str, str]]) -> None:
    """Raise :class:`WriteError` for the first refused write (a permanent one before transient ones)."""
    failures: list[tuple[bool, str]] = []
    for result, (kind, ns, name) in zip(results, what, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancellation
            status, text = _describe(result)
            failures.append((is_permanent(status), failure_message(kind, ns, name, status, text)))
    if failures:
        permanent, message = max(failures, key=lambda f: f[0])
        raise WriteError(message, permanent)


def in_background(executor: ThreadPoolExecutor | None, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on ``executor`` without waiting; an exception is logged."""
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def done(f: asyncio.Future[None]) -> None:
        if not f.cancelled() and f.exception() is not None:
            log.warning("background %s failed: %s", getattr(fn, "__name__", fn), f.exception())

    future.add_done_callback(done)


class Writer:
    """Carries out plans with one client: deletes and applies on their lanes, refusals reported."""

    def __init__(self, kube: Kube | None, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.kube = kube
        self.spawn = spawn
        """Runs a background coroutine (the reconciler keeps a reference until it is done)."""
        self.cluster_ip_lane: ThreadPoolExecutor | None = None
        """Threads for applies of ClusterIP Services (see :data:`CLUSTER_IP_THREADS`)."""
        self.event_lane: ThreadPoolExecutor | None = None
        """Threads that post Events (see :data:`EVENT_THREADS`)."""

    def start_lanes(self) -> None:
        """Create the ClusterIP and Event lanes (at operator startup)."""
        self.cluster_ip_lane = ThreadPoolExecutor(
            max_workers=CLUSTER_IP_THREADS, thread_name_prefix="tidal-cluster-ip"
        )
        self.event_lane = ThreadPoolExecutor(max_workers=EVENT_THREADS, thread_name_prefix="tidal-events")

    def client(self) -> Kube:
        """The client (set up by ``tidal run`` before kopf starts)."""
        assert self.kube is not None, "tidal.shell.handlers.configure() was not called"
        return self.kube

    async def carry_out(
        self,
        delete: list[ObjectRef],
        apply: list[dict[str, Any]],
        memory: RecentWrites,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        """Deletes, then applies, each batch concurrently; raises :class:`WriteError` when one failed (the
        others of its batch are still done). Applies run on ``executor`` (default: the loop's); the Services
        and PDBs applied are remembered in ``memory`` (see :func:`not_recently_applied`)."""
        kube = self.client()
        loop = asyncio.get_running_loop()
        # Deletes first: a rollout's surge replica must not appear before the old one it replaces is gone.
        results = await asyncio.gather(
            *(asyncio.to_thread(kube.delete, ref) for ref in delete), return_exceptions=True
        )
        _first_failure(list(results), [(r.kind, r.namespace, r.name) for r in delete])
        applied = await asyncio.gather(
            *(loop.run_in_executor(executor, kube.apply, obj) for obj in apply), return_exceptions=True
        )
        now = time.monotonic()
        for obj, result in zip(apply, applied, strict=True):
            key = _remembered(obj)
            if key is not None and not isinstance(result, BaseException):
                memory.applied[key] = (json.dumps(obj, sort_keys=True), now)
        _first_failure(
            list(applied),
            [
                (str(o["kind"]), str(o["metadata"].get("namespace", "")), str(o["metadata"]["name"]))
                for o in apply
            ],
        )

    async def carry_out_reporting(
        self,
        delete: list[ObjectRef],
        apply: list[dict[str, Any]],
        memory: RecentWrites,
        meta: Mapping[str, Any],
        deployment: LLMDeployment,
        now: datetime,
        lane: ThreadPoolExecutor | None = None,
    ) -> None:
        """:meth:`carry_out`; a write the API server refused for good is also reported (Degraded, an
        Event)."""
        try:
            await self.carry_out(delete, apply, memory, lane)
        except WriteError as exc:
            if exc.permanent:
                self.report_refusal(memory, meta, deployment, exc.message, now)
            raise

    def report_refusal(
        self,
        memory: RecentWrites,
        meta: Mapping[str, Any],
        deployment: LLMDeployment,
        message: str,
        now: datetime,
    ) -> None:
        """``Degraded=True``/``ApplyFailed`` and a Warning Event, once per distinct refusal (off the loop, in
        the background: the reconcile raises at once and backs off)."""
        kube = self.client()
        status, events = apply_failure_status(
            deployment.status.to_dict(), message, rfc3339(now), deployment.metadata.generation
        )
        log.warning("%s/%s: %s", meta.get("namespace"), meta.get("name"), message)
        if status is None or contains_status(memory.last_status, status):
            return
        memory.last_status = {**(memory.last_status or {}), **status}
        ns, name = str(meta["namespace"]), str(meta["name"])

        def write() -> None:
            try:
                kube.patch_status(ns, name, status)
            except Exception as exc:  # the next refusal tries again
                memory.last_status = None
                log.warning("%s/%s: could not write the ApplyFailed condition: %s", ns, name, exc)
                return
            post_events(kube, meta, events, now)

        self.spawn(asyncio.to_thread(write))


__all__ = [
    "CLUSTER_IP_THREADS",
    "ERROR_BACKOFF_SECONDS",
    "EVENT_THREADS",
    "RECENT_APPLY_SECONDS",
    "REFUSED_BACKOFF_START_SECONDS",
    "RecentWrites",
    "WriteError",
    "Writer",
    "allocates_cluster_ip",
    "backoff_seconds",
    "contains_status",
    "in_background",
    "not_recently_applied",
]
