"""The per-deployment state machine: one level-based reconcile per LLMDeployment key, never two at once.

Observe → plan → apply. Children are observed from kopf indexes (:mod:`tidal.shell.indexes`, no reads per
reconcile), the pass's target is resolved once (:func:`tidal.plan.resolve`), the autoscaler's pass
(:mod:`tidal.shell.autoscale`, when due) and ``tidal.plan.plan_reconcile`` decide, and the
:class:`~tidal.shell.writer.Writer` applies; the status is written only when it changed, so a steady state
costs no API requests, however often it is reconciled.

A trigger that comes while a reconcile runs marks it dirty and it goes round once more (bursts coalesce).
Nothing sleeps: a requeue is an in-memory timer; after a failure only a forced trigger reconciles before the
backoff is over; while another operator holds the peering, reconciles are deferred.
Its own module (a class, not module globals) so that each test gets its own state and the kopf wiring
(:mod:`tidal.shell.handlers`) stays a thin list of handlers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from tidal.api import LLMDeployment
from tidal.builders.pods import BuilderConfig
from tidal.plan import NodeInfo, Observed, Plan, plan_reconcile, resolve
from tidal.plan.autoscale.status import disabled_conditions
from tidal.shell import hub, metrics
from tidal.shell.autoscale import guarded_pass, next_interval
from tidal.shell.events import post_events
from tidal.shell.indexes import Key, namespace_code_hashes, values
from tidal.shell.kube import Kube
from tidal.shell.leadership import POLL_SECONDS, PeeringGate
from tidal.shell.prom import PrometheusSignals
from tidal.shell.writer import (
    RecentWrites,
    WriteError,
    Writer,
    allocates_cluster_ip,
    backoff_seconds,
    contains_status,
    in_background,
    not_recently_applied,
)

log = logging.getLogger("tidal.operator")

TIMER_INTERVAL_SECONDS: Final = 30.0
"""Every deployment is reconciled at least this often (from the caches: no API calls when nothing changed)."""
MAX_CONCURRENT_RECONCILES: Final = 16
"""Deployments observed, planned and written at once (``$TIDAL_MAX_CONCURRENT_RECONCILES``; controller-runtime
calls it MaxConcurrentReconciles). The writes are bounded by the API threads anyway: without this bound a
burst of new deployments built every plan (pod manifests, Services, status) up front and held them all while
they queued for the threads. A deployment waiting for a slot coalesces its triggers and is planned from the
freshest caches when its turn comes."""


def max_concurrent_reconciles() -> int:
    """``$TIDAL_MAX_CONCURRENT_RECONCILES`` (default :data:`MAX_CONCURRENT_RECONCILES`), at least 1."""
    raw = os.environ.get("TIDAL_MAX_CONCURRENT_RECONCILES", "")
    try:
        return max(1, int(raw)) if raw else MAX_CONCURRENT_RECONCILES
    except ValueError:
        log.warning(
            "TIDAL_MAX_CONCURRENT_RECONCILES=%r is not an integer: using %d", raw, MAX_CONCURRENT_RECONCILES
        )
        return MAX_CONCURRENT_RECONCILES


def effective_replicas(deployment: LLMDeployment, pending: int | None = None) -> int:
    """The replica count to converge to between autoscaler passes: ``spec.replicas`` (set by you, by
    ``kubectl scale`` or by the autoscaler), or the count the autoscaler just patched (``pending``) while the
    watch still shows the old spec. An autoscaler pass passes its own decision instead."""
    return deployment.spec.replicas if pending is None else pending


def export_status_metrics(ns: str, name: str, plan: Plan, deployment: LLMDeployment) -> None:
    """Desired and ready replicas and the conditions as gauges."""
    status = plan.status or deployment.status.to_dict()
    metrics.DESIRED_REPLICAS.labels(ns, name).set(status.get("desiredReplicas") or 0)
    metrics.READY_REPLICAS.labels(ns, name).set(status.get("readyReplicas") or 0)
    insufficient = False
    for cond in status.get("conditions") or []:
        metrics.CONDITION.labels(ns, name, cond["type"]).set(1 if cond["status"] == "True" else 0)
        insufficient |= cond.get("reason") == "InsufficientGPU"
    metrics.CONDITION.labels(ns, name, "InsufficientGPU").set(1 if insufficient else 0)


@dataclass
class KeyState(RecentWrites):
    """One deployment's reconcile state (in memory; an operator restart starts from the status)."""

    running: bool = False
    dirty: bool = False
    errors: int = 0
    retry_at: float = 0.0
    """Monotonic time before which only a spec change or the retry timer reconciles again (after an error:
    pod events and the periodic timer wait, so a refused write is never retried in a hot loop)."""
    requeue: asyncio.TimerHandle | None = None
    next_autoscale: float = 0.0
    """Monotonic time of the next autoscaler pass."""
    pending_replicas: int | None = None
    """``spec.replicas`` the autoscaler patched that the watch has not shown yet."""
    trigger: tuple[Any, dict[str, str]] | None = None
    """Generation and labels of the LLMDeployment at the last forced reconcile."""


@dataclass
class Written:
    """What :meth:`Reconciler.plan_and_write` leaves for after the reconcile slot: the ClusterIP Services."""

    plan: Plan
    slow: list[dict[str, Any]]
    state: KeyState
    meta: Mapping[str, Any]
    deployment: LLMDeployment
    now: datetime


class Reconciler:
    """The reconciles of one operator process (set up by ``tidal run`` through ``handlers.configure``)."""

    def __init__(
        self,
        kube: Kube | None = None,
        config: BuilderConfig | None = None,
        gate: PeeringGate | None = None,
        acting: bool = True,
    ) -> None:
        self.config = config or BuilderConfig()
        self.states: dict[Key, KeyState] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.writer = Writer(kube, self.spawn)
        self.signals: PrometheusSignals | None = None  # created at the first autoscaler pass
        self.slots: asyncio.Semaphore | None = None  # at most max_concurrent_reconciles() plan at once
        self.gate = gate
        """kopf's peering rule for the reconcile's own timers (``None``: standalone, always acting)."""
        self.acting = acting
        """The gate's last answer: while ``False`` reconciles are deferred (kopf is paused too)."""
        self.deferred: set[Key] = set()
        """Deployments whose reconcile came while paused: reconciled when the operator acts again."""
        self.indexes: Mapping[str, Any] | None = None
        """kopf's indexes (the same objects for the operator's lifetime), for the deferred reconciles."""

    def state(self, key: Key) -> KeyState:
        """The state of ``key`` (created at first sight)."""
        return self.states.setdefault(key, KeyState())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the operator keeps a reference to until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def forget(self, key: Key) -> None:
        """Drop the in-memory state of a deployment that is gone (and its pending requeue)."""
        state = self.states.pop(key, None)
        if state is not None and state.requeue is not None:
            state.requeue.cancel()

    async def reconcile(self, key: Key, indexes: Mapping[str, Any], force: bool = False) -> None:
        """Reconcile one deployment, coalescing triggers that arrive while it runs. Raises what failed. After
        a failure only ``force`` (a spec change, the retry timer) reconciles before the backoff is over."""
        state = self.state(key)
        self.indexes = indexes
        if not self.acting:
            self.deferred.add(key)  # another operator acts (kopf is paused): catch up when we act again
            return
        if state.running:
            state.dirty = True
            return
        if not force and time.monotonic() < state.retry_at:
            return
        state.running = True
        try:
            while True:
                state.dirty = False
                started = time.perf_counter()
                try:
                    plan = await self.run_once(key, indexes)
                except Exception as exc:
                    state.errors += 1
                    state.next_autoscale = 0.0  # a pass whose status was not written is done again
                    metrics.RECONCILES.labels("Error").inc()
                    permanent = isinstance(exc, WriteError) and exc.permanent
                    metrics.RECONCILE_ERRORS.labels("ApplyFailed" if permanent else type(exc).__name__).inc()
                    delay = backoff_seconds(state.errors, permanent)
                    state.retry_at = time.monotonic() + delay
                    self.requeue(key, indexes, delay)
                    raise
                finally:
                    metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
                state.errors = 0
                state.retry_at = 0.0
                requeue = plan.requeue_after if plan is not None else None
                metrics.RECONCILES.labels("Requeue" if requeue else "Success").inc()
                if requeue is not None and requeue < TIMER_INTERVAL_SECONDS:
                    self.requeue(key, indexes, requeue)
                if not state.dirty:
                    return
        finally:
            state.running = False

    def requeue(self, key: Key, indexes: Mapping[str, Any], delay: float) -> None:
        """Reconcile ``key`` (forced) in ``delay`` seconds, replacing a pending requeue."""
        state = self.state(key)
        if state.requeue is not None:
            state.requeue.cancel()

        def fire() -> None:
            state.requeue = None
            self.spawn(self.quiet(key, indexes, force=True))

        state.requeue = asyncio.get_running_loop().call_later(delay, fire)

    async def quiet(self, key: Key, indexes: Mapping[str, Any], force: bool = False) -> None:
        """Reconcile; a failure is logged (the reconcile has already scheduled its retry)."""
        try:
            await self.reconcile(key, indexes, force)
        except WriteError as exc:
            errors = self.states.get(key, KeyState()).errors
            log.warning("reconcile of %s/%s failed (%d in a row): %s; retrying", *key, errors, exc.message)
        except Exception:
            log.exception("reconcile of %s/%s failed; retrying", *key)

    async def follow_peering(self, gate: PeeringGate, poll_seconds: float = POLL_SECONDS) -> None:
        """Every ``poll_seconds``: whether this operator may act; when it may again, reconcile what was
        deferred while it could not."""
        while True:
            await asyncio.sleep(poll_seconds)
            acting = await asyncio.to_thread(gate.poll, datetime.now(UTC))
            resumed = acting and not self.acting
            self.acting = acting
            if resumed and self.indexes is not None:
                deferred, self.deferred = self.deferred, set()
                for key in deferred:
                    self.spawn(self.quiet(key, self.indexes, force=True))

    async def run_once(self, key: Key, indexes: Mapping[str, Any]) -> Plan | None:
        """One reconcile pass. Observing, planning and the writes the status depends on run in one of the
        reconcile slots; the ClusterIP Services are applied after the slot is released."""
        if self.slots is None:
            self.slots = asyncio.Semaphore(max_concurrent_reconciles())
        async with self.slots:
            written = await self.plan_and_write(key, indexes)
        if written is None:
            return None
        plan, deployment = written.plan, written.deployment
        ns, name = str(written.meta["namespace"]), str(written.meta["name"])
        if written.slow:
            await self.writer.carry_out_reporting(
                [],
                written.slow,
                written.state,
                written.meta,
                deployment,
                written.now,
                self.writer.cluster_ip_lane,
            )
        export_status_metrics(ns, name, plan, deployment)
        return plan

    def observe(
        self, key: Key, indexes: Mapping[str, Any], state: KeyState
    ) -> tuple[Mapping[str, Any], LLMDeployment, Observed] | None:
        """The deployment (its metadata and model) and its children as the indexes show them; ``None`` when
        it is gone, being deleted or invalid."""
        bodies = values(indexes["llmd_index"], key)
        if not bodies:
            return None
        body = bodies[-1]
        meta = body.get("metadata", {})
        if meta.get("deletionTimestamp"):
            return None
        seen = body.get("status") or {}
        if state.last_status is not None:
            if contains_status(seen, state.last_status):
                state.last_status = None  # the watch has shown our writes
            else:
                # The watch has not shown our last status write yet: plan from what we know we wrote (else a
                # pass's conditions could be dropped by a reconcile planned from the older status).
                body = {**body, "status": {**seen, **state.last_status}}
        try:
            try:
                deployment = LLMDeployment.model_validate(body)
            except ValidationError:
                # A status from an older operator version must not block the reconcile: plan from the spec.
                deployment = LLMDeployment.model_validate({k: v for k, v in body.items() if k != "status"})
        except ValidationError as exc:
            # The CRD schema and CEL refuse what the models refuse, so this means a stale or foreign schema.
            log.error("%s/%s is not a valid LLMDeployment: %s", meta.get("namespace"), meta.get("name"), exc)
            return None
        node_store = indexes["node_index"].get(None)
        nodes: list[NodeInfo] | None = list(node_store) if node_store else None
        observed = Observed(
            pods=values(indexes["pod_index"], key),
            services=values(indexes["service_index"], key),
            pdbs=values(indexes["pdb_index"], key),
            config_maps=[
                *values(indexes["config_map_index"], (key[0], "")),
                *values(indexes["config_map_index"], key),
            ],
            code_hashes_in_use=lambda: namespace_code_hashes(indexes["pod_index"], key[0]),
            nodes=nodes,
        )
        return meta, deployment, observed

    async def plan_and_write(self, key: Key, indexes: Mapping[str, Any]) -> Written | None:
        """Observe, run the autoscaler's pass when due, plan, and write all but the ClusterIP Services."""
        kube = self.writer.client()
        state = self.state(key)
        seen = self.observe(key, indexes, state)
        if seen is None:
            return None
        meta, deployment, observed = seen
        now = datetime.now(UTC)
        ns, name = str(meta["namespace"]), str(meta["name"])
        await hub.fetch_hub_model(deployment.spec.model)  # hf:// models outside the catalogue
        resolved = resolve(deployment, observed.pods, now, self.config)
        if state.pending_replicas == deployment.spec.replicas:
            state.pending_replicas = None
        autoscaling = deployment.spec.autoscaling.enabled
        patch = None
        if autoscaling and time.monotonic() >= state.next_autoscale:
            state.next_autoscale = time.monotonic() + next_interval()
            if self.signals is None:
                self.signals = PrometheusSignals()
            pod_store = indexes["pod_index"]
            all_pods = [p for k in list(pod_store) for p in values(pod_store, k)]
            held = effective_replicas(deployment, state.pending_replicas)
            patch, patched = await guarded_pass(
                kube, deployment, resolved, observed, all_pods, self.signals, now, held
            )
            state.pending_replicas = patched if patched is not None else state.pending_replicas
        elif not autoscaling:
            state.pending_replicas = None
        plan = plan_reconcile(
            deployment,
            observed,
            now,
            replicas=None if patch is not None else effective_replicas(deployment, state.pending_replicas),
            config=self.config,
            autoscaler=patch,
            extra_conditions=() if autoscaling else disabled_conditions(deployment.status.to_dict()),
            resolved=resolved,
        )
        if autoscaling:
            due = max(0.5, state.next_autoscale - time.monotonic())
            plan.requeue_after = due if plan.requeue_after is None else min(plan.requeue_after, due)
        # ClusterIP Services last, after the status: the API server allocates their IPs slowly, one at a time,
        # and nothing in the status depends on them (a refusal still turns into Degraded/ApplyFailed).
        apply = not_recently_applied(state, plan.apply, observed)
        slow = [o for o in apply if allocates_cluster_ip(o)]
        fast = [o for o in apply if not allocates_cluster_ip(o)]
        await self.writer.carry_out_reporting(plan.delete, fast, state, meta, deployment, now)
        wrote = False
        if plan.status is not None and not contains_status(state.last_status, plan.status):
            await asyncio.to_thread(kube.patch_status, ns, name, plan.status)
            # Everything written that the watch may not have shown yet (several writes can be in flight).
            state.last_status = {**(state.last_status or {}), **plan.status}
            wrote = True
        if plan.events and (wrote or plan.apply or plan.delete):
            # Events are informational: posted off the reconcile's critical path, on their own lane.
            in_background(self.writer.event_lane, post_events, kube, meta, plan.events, now)
        if plan.apply or plan.delete or wrote:
            log.info("%s", plan.summary)
        return Written(plan, slow, state, meta, deployment, now)


__all__ = [
    "MAX_CONCURRENT_RECONCILES",
    "TIMER_INTERVAL_SECONDS",
    "KeyState",
    "Reconciler",
    "Written",
    "effective_replicas",
    "export_status_metrics",
    "max_concurrent_reconciles",
]
