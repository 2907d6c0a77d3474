"""The kopf handlers: one level-based reconcile per LLMDeployment, run when it is new or its spec changed
(``on.event``, by ``metadata.generation``: kopf's diff-based change handlers are not used, see
:mod:`tidal.shell.diffbase`), on a timer, and whenever one of its worker pods changes.

Observe → plan → apply. Children are observed from kopf indexes fed by watches (no reads per reconcile),
``tidal.plan.plan_reconcile`` decides, and ``tidal.shell.kube`` applies with server-side apply (field
manager ``tidal-operator``), deletes with UID preconditions, and writes the status only when it changed. A
steady state therefore costs no API requests, however often it is reconciled.

Reconciles of one deployment never overlap: a trigger that arrives while one runs marks it dirty and the
running one goes round once more (bursts of pod events coalesce). Nothing sleeps in a handler: a plan's
requeue delay is an in-memory timer that triggers the reconcile again; change handlers that fail raise
``kopf.TemporaryError`` with a delay.

The autoscaler runs inside the same serialised reconcile: when ``spec.autoscaling.enabled``, every
``$TIDAL_AUTOSCALER_INTERVAL_SECONDS`` (default 15) a pass reads Prometheus off the event loop
(:mod:`tidal.shell.autoscale`), decides, merge-patches ``spec.replicas`` when the count changes, and hands its
status fields, conditions and Events to the planner, which writes them in the same status patch as its own
(so neither overwrites the other). Between passes :func:`effective_replicas` gives the count to converge to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from tidal.api import GROUP, PLURAL, VERSION, LLMDeployment, Signal
from tidal.builders.gpus import GPU_RESOURCE
from tidal.builders.names import DEPLOYMENT_LABEL, NAME_LABEL, WORKER_APP, label_value
from tidal.builders.pods import BuilderConfig
from tidal.plan import NodeInfo, ObjectRef, Observed, Plan, make_target, plan_reconcile, rfc3339
from tidal.plan.autoscale import disabled_conditions, without_nulls
from tidal.plan.failures import apply_failure_status, failure_message, is_permanent
from tidal.shell import metrics
from tidal.shell.autoscale import (
    PassResult,
    autoscale_pass,
    export_metrics,
    interval_seconds,
    patch_replicas,
)
from tidal.shell.diffbase import NoDiffBaseStorage
from tidal.shell.events import post_events
from tidal.shell.kube import Kube
from tidal.shell.leadership import POLL_SECONDS, PeeringGate
from tidal.shell.prom import PrometheusSignals

log = logging.getLogger("tidal.operator")

TIMER_INTERVAL_SECONDS = 30.0
"""Every deployment is reconciled at least this often (from the caches: no API calls when nothing changed)."""
API_THREADS = 32
"""Concurrent Kubernetes API calls (thread pool of the synchronous client)."""
CLUSTER_IP_THREADS = 4
"""Concurrent applies of Services that need a ClusterIP. The API server allocates ClusterIPs one at a time
(about 2 per second on the 2-core development machine, against hundreds of pod applies): a separate lane keeps
them from occupying the threads every other write needs."""
ERROR_BACKOFF_SECONDS = (2.0, 5.0, 15.0, 30.0, 60.0)
"""Retry delays after a transient error (409, 429, 5xx, no connection), by consecutive failures."""
EVENT_THREADS = 2
"""Threads that post Events. Events are informational: on their own small lane they never hold the threads
the reconciles' writes need, and a burst of them waits instead of crowding the API server."""
RECENT_APPLY_SECONDS = 30.0
"""A Service or PodDisruptionBudget applied this recently with the same content is not applied again while
the watch has not shown it yet (a reconcile that follows at once would otherwise repeat the write)."""
MAX_CONCURRENT_RECONCILES = 16
"""Deployments observed, planned and written at once (``$TIDAL_MAX_CONCURRENT_RECONCILES``; controller-runtime
calls it MaxConcurrentReconciles). The writes are bounded by :data:`API_THREADS` anyway: without this bound a
burst of new deployments built every plan (pod manifests, Services, status) up front and held them all while
they queued for the threads. A deployment waiting for a slot coalesces its triggers and is planned from the
freshest caches when its turn comes."""
KOPF_CONNECTIONS = 16
"""kopf's own API connections (its patches of finalizers and progress) besides its watch streams. kopf's
default aiohttp connector has no limit: a burst of new deployments opened one TLS connection per object in
flight (hundreds), each with ~300 KiB of buffers, most of the operator's peak memory. Requests beyond the
limit wait for a free connection."""
WATCH_STREAMS_PER_NAMESPACE = 8
"""Connections kept for kopf's watch streams per watched namespace (the whole cluster counts as one): it
watches 4 namespaced resources per namespace, nodes, CRDs and its peering object."""
REFUSED_BACKOFF_START_SECONDS = 5.0
"""First retry after the API server refused a write for good; doubles per consecutive failure up to
``$TIDAL_ERROR_BACKOFF_MAX_SECONDS`` (default 300)."""
WORKER_SELECTOR = {NAME_LABEL: WORKER_APP}

Key = tuple[str, str]
"""(namespace, label value of the deployment name)."""


# ----------------------------------------------------------------------------------------------- state


@dataclass
class _KeyState:
    running: bool = False
    dirty: bool = False
    errors: int = 0
    retry_at: float = 0.0
    """Monotonic time before which only a spec change or the retry timer reconciles again (after an error:
    pod events and the periodic timer wait, so a refused write is never retried in a hot loop)."""
    requeue: asyncio.TimerHandle | None = None
    last_status: dict[str, Any] | None = None
    next_autoscale: float = 0.0
    """Monotonic time of the next autoscaler pass."""
    pending_replicas: int | None = None
    """``spec.replicas`` the autoscaler patched that the watch has not shown yet."""
    trigger: tuple[Any, dict[str, str]] | None = None
    """Generation and labels of the LLMDeployment at the last forced reconcile (see :func:`_trigger`)."""
    applied: dict[str, tuple[str, float]] = field(default_factory=dict)
    """``kind/name`` -> (content, monotonic time) of Services and PDBs applied that the watch has not shown
    yet (see :data:`RECENT_APPLY_SECONDS`)."""


@dataclass
class Runtime:
    """What the handlers share within one operator process (set up by ``tidal run``)."""

    kube: Kube | None = None
    config: BuilderConfig = field(default_factory=BuilderConfig)
    states: dict[Key, _KeyState] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    signals: PrometheusSignals | None = None
    """The Prometheus reader (created at the first autoscaler pass)."""
    cluster_ip_lane: ThreadPoolExecutor | None = None
    """Threads for applies of ClusterIP Services (see :data:`CLUSTER_IP_THREADS`)."""
    event_lane: ThreadPoolExecutor | None = None
    """Threads that post Events (see :data:`EVENT_THREADS`)."""
    slots: asyncio.Semaphore | None = None
    """At most :func:`max_concurrent_reconciles` reconciles observe, plan and write at once."""
    namespaces: int = 1
    """Namespaces kopf watches (1 for the whole cluster): sizes its connection pool."""
    gate: PeeringGate | None = None
    """kopf's peering rule for the reconcile's own timers (``None``: standalone, always acting)."""
    acting: bool = True
    """The gate's last answer: while ``False`` reconciles are deferred (kopf is paused too)."""
    deferred: set[Key] = field(default_factory=set)
    """Deployments whose reconcile came while paused: reconciled when the operator acts again."""
    indexes: Mapping[str, Any] | None = None
    """kopf's indexes (the same objects for the operator's lifetime), for the deferred reconciles."""


RUNTIME = Runtime()


def configure(
    kube: Kube, config: BuilderConfig | None = None, namespaces: int = 1, gate: PeeringGate | None = None
) -> None:
    """Give the handlers their client (called by ``tidal run`` before kopf starts); ``namespaces``: how many
    namespaces kopf watches (1 for the whole cluster); ``gate``: the peering this operator joined."""
    RUNTIME.kube = kube
    RUNTIME.namespaces = max(1, namespaces)
    RUNTIME.gate = gate
    if config is not None:
        RUNTIME.config = config


# ----------------------------------------------------------------------------------------------- hooks


def effective_replicas(deployment: LLMDeployment, observed: Observed, pending: int | None = None) -> int:
    """The replica count to converge to between autoscaler passes: ``spec.replicas`` (set by you, by
    ``kubectl scale`` or by the autoscaler), or the count the autoscaler just patched (``pending``) while the
    watch still shows the old spec. An autoscaler pass passes its own decision instead."""
    return deployment.spec.replicas if pending is None else pending


def effective_signal(deployment: LLMDeployment, observed: Observed) -> Signal | None:
    """The key scaling signal for ``status.signal`` (``None``: the planner shows ready/desired)."""
    return None


# ----------------------------------------------------------------------------------------------- indexes


def _slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    status = body.get("status", {}) or {}
    spec = body.get("spec", {}) or {}
    return {
        "metadata": {
            k: meta.get(k)
            for k in ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp")
            if meta.get(k) is not None
        },
        "status": {
            k: status.get(k)
            for k in ("phase", "reason", "conditions", "containerStatuses", "initContainerStatuses")
            if status.get(k) is not None
        },
        # Where it runs and the GPUs it holds: the autoscaler's free-GPU arithmetic.
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": [
                {"resources": {"requests": {GPU_RESOURCE: _gpu_request(c)}}}
                for c in spec.get("containers") or []
            ],
        },
    }


def _gpu_request(container: Mapping[str, Any]) -> Any:
    res = container.get("resources") or {}
    return (res.get("requests") or {}).get(GPU_RESOURCE, (res.get("limits") or {}).get(GPU_RESOURCE, 0))


_CHILD_META = ("name", "namespace", "uid", "labels", "ownerReferences", "deletionTimestamp")
"""What the reconcile compares of a Service or PDB besides its spec (not ``managedFields``: ~2 KiB each)."""


def _slim_child(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    return {
        "metadata": {k: meta.get(k) for k in _CHILD_META if meta.get(k) is not None},
        "spec": dict(body.get("spec", {}) or {}),
    }


_LLMD_META = ("name", "namespace", "uid", "generation", "labels", "creationTimestamp", "deletionTimestamp")
"""The metadata the reconcile reads (not ``managedFields`` or kopf's annotations, which copy the spec)."""


@kopf.index(GROUP, VERSION, PLURAL)
async def llmd_index(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Latest LLMDeployment bodies by key (slim: what the reconcile reads)."""
    meta = body.get("metadata", {})
    slim: dict[str, Any] = {
        k: body.get(k) for k in ("apiVersion", "kind", "spec", "status") if body.get(k) is not None
    }
    slim["metadata"] = {k: meta.get(k) for k in _LLMD_META if meta.get(k) is not None}
    return {(namespace or "", label_value(name)): slim}


@kopf.index("pods", labels=WORKER_SELECTOR)
async def pod_index(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[Key, dict[str, Any]]:
    """Worker pods by owning deployment."""
    return {(namespace or "", labels.get(DEPLOYMENT_LABEL, "")): _slim_pod(body)}


@kopf.index("services", labels=WORKER_SELECTOR)
async def service_index(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[Key, dict[str, Any]]:
    """Services by owning deployment."""
    return {(namespace or "", labels.get(DEPLOYMENT_LABEL, "")): _slim_child(body)}


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=WORKER_SELECTOR)
async def pdb_index(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[Key, dict[str, Any]]:
    """PodDisruptionBudgets by owning deployment."""
    return {(namespace or "", labels.get(DEPLOYMENT_LABEL, "")): _slim_child(body)}


@kopf.index("nodes")
async def node_index(
    body: kopf.Body, name: str, labels: Mapping[str, str], spec: kopf.Spec, **_: Any
) -> dict[None, NodeInfo]:
    """GPU capacity of every node, for the planner's GPU arithmetic."""
    alloc = (body.get("status", {}) or {}).get("allocatable", {}) or {}
    try:
        gpus = int(alloc.get(GPU_RESOURCE, 0))
    except (TypeError, ValueError):
        gpus = 0
    return {None: NodeInfo(name, dict(labels), gpus, not spec.get("unschedulable", False))}


def _values(index: kopf.Index[Key, dict[str, Any]], key: Key) -> list[dict[str, Any]]:
    store = index.get(key)
    return list(store) if store is not None else []


# ----------------------------------------------------------------------------------------------- reconcile


@dataclass
class _Written:
    """What :func:`_plan_and_write` leaves for after the reconcile slot: the ClusterIP Services."""

    plan: Plan
    slow: list[dict[str, Any]]
    state: _KeyState
    meta: Mapping[str, Any]
    deployment: LLMDeployment
    now: datetime


def _slots() -> asyncio.Semaphore:
    if RUNTIME.slots is None:
        RUNTIME.slots = asyncio.Semaphore(max_concurrent_reconciles())
    return RUNTIME.slots


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


async def _run_once(key: Key, indexes: Mapping[str, Any]) -> Plan | None:
    """One reconcile pass. Observing, planning and the writes the status depends on run in one of the
    reconcile slots; the ClusterIP Services are applied after the slot is released."""
    async with _slots():
        written = await _plan_and_write(key, indexes)
    if written is None:
        return None
    plan, deployment = written.plan, written.deployment
    ns, name = str(written.meta["namespace"]), str(written.meta["name"])
    if written.slow:
        await _carry_out_reporting(
            [], written.slow, written.state, written.meta, deployment, written.now, RUNTIME.cluster_ip_lane
        )
    _export_metrics(ns, name, plan, deployment)
    return plan


async def _plan_and_write(key: Key, indexes: Mapping[str, Any]) -> _Written | None:
    kube = RUNTIME.kube
    assert kube is not None, "tidal.shell.handlers.configure() was not called"
    bodies = _values(indexes["llmd_index"], key)
    if not bodies:
        return None
    body = bodies[-1]
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return None
    state = RUNTIME.states.setdefault(key, _KeyState())
    seen = body.get("status") or {}
    if state.last_status is not None:
        if _contains_status(seen, state.last_status):
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
        pods=_values(indexes["pod_index"], key),
        services=_values(indexes["service_index"], key),
        pdbs=_values(indexes["pdb_index"], key),
        nodes=nodes,
    )
    now = datetime.now(UTC)
    ns, name = str(meta["namespace"]), str(meta["name"])
    if state.pending_replicas == deployment.spec.replicas:
        state.pending_replicas = None
    autoscaling = deployment.spec.autoscaling.enabled
    patch = None
    if autoscaling and time.monotonic() >= state.next_autoscale:
        interval = interval_seconds()
        state.next_autoscale = time.monotonic() + interval
        result = await _autoscale(deployment, observed, indexes, state, now)
        patch = result.patch
        if result.decision.changed:
            await asyncio.to_thread(patch_replicas, kube, ns, name, result.decision.desired)
            state.pending_replicas = result.decision.desired
            log.info("%s/%s: %s", ns, name, result.decision.message)
        export_metrics(ns, name, result)
    elif not autoscaling:
        state.pending_replicas = None
    plan = plan_reconcile(
        deployment,
        observed,
        now,
        replicas=None
        if patch is not None
        else effective_replicas(deployment, observed, state.pending_replicas),
        signal=effective_signal(deployment, observed),
        config=RUNTIME.config,
        autoscaler=patch,
        extra_conditions=() if autoscaling else disabled_conditions(deployment.status.to_dict()),
    )
    if autoscaling:
        due = max(0.5, state.next_autoscale - time.monotonic())
        plan.requeue_after = due if plan.requeue_after is None else min(plan.requeue_after, due)
    # ClusterIP Services last, after the status: the API server allocates their IPs slowly, one at a time,
    # and nothing in the status depends on them (a refusal still turns into Degraded/ApplyFailed).
    apply = _not_recently_applied(state, plan.apply, observed)
    slow = [o for o in apply if _allocates_cluster_ip(o)]
    fast = [o for o in apply if not _allocates_cluster_ip(o)]
    await _carry_out_reporting(plan.delete, fast, state, meta, deployment, now)
    wrote = False
    if plan.status is not None and not _contains_status(state.last_status, plan.status):
        await asyncio.to_thread(kube.patch_status, ns, name, plan.status)
        # Everything written that the watch may not have shown yet (several writes can be in flight).
        state.last_status = {**(state.last_status or {}), **plan.status}
        wrote = True
    if plan.events and (wrote or plan.apply or plan.delete):
        # Events are informational: posted off the reconcile's critical path, on their own lane.
        _in_background(RUNTIME.event_lane, post_events, kube, meta, plan.events, now)
    if plan.apply or plan.delete or wrote:
        log.info("%s", plan.summary)
    return _Written(plan, slow, state, meta, deployment, now)


async def _carry_out_reporting(
    delete: list[ObjectRef],
    apply: list[dict[str, Any]],
    state: _KeyState,
    meta: Mapping[str, Any],
    deployment: LLMDeployment,
    now: datetime,
    lane: ThreadPoolExecutor | None = None,
) -> None:
    """:func:`_carry_out`; a write the API server refused for good is also reported (Degraded, an Event)."""
    kube = RUNTIME.kube
    assert kube is not None
    try:
        await _carry_out(kube, delete, apply, state, lane)
    except WriteError as exc:
        if exc.permanent:
            _report_refusal(kube, state, meta, deployment, exc.message, now)
        raise


class WriteError(Exception):
    """A delete or apply of the plan failed; ``permanent`` when the API server refused it for good."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


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


def _allocates_cluster_ip(obj: Mapping[str, Any]) -> bool:
    return obj.get("kind") == "Service" and (obj.get("spec") or {}).get("clusterIP") != "None"


def _remembered(obj: Mapping[str, Any]) -> str | None:
    """The key under which an apply of ``obj`` is remembered (Services and PDBs), else ``None``."""
    if obj.get("kind") not in ("Service", "PodDisruptionBudget"):
        return None
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _not_recently_applied(
    state: _KeyState, apply: list[dict[str, Any]], observed: Observed
) -> list[dict[str, Any]]:
    """``apply`` less the Services and PDBs applied with the same content within
    :data:`RECENT_APPLY_SECONDS` that the watch has not shown yet (what it has shown is forgotten: from then
    on the planner compares with the observed object)."""
    for kind, objs in (("Service", observed.services), ("PodDisruptionBudget", observed.pdbs)):
        for obj in objs:
            state.applied.pop(f"{kind}/{obj.get('metadata', {}).get('name')}", None)
    now = time.monotonic()
    out = []
    for obj in apply:
        key = _remembered(obj)
        previous = state.applied.get(key) if key is not None else None
        if (
            previous is not None
            and now - previous[1] < RECENT_APPLY_SECONDS
            and previous[0] == json.dumps(obj, sort_keys=True)
        ):
            continue
        out.append(obj)
    return out


def _in_background(executor: ThreadPoolExecutor | None, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on ``executor`` without waiting; an exception is logged."""
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def done(f: asyncio.Future[None]) -> None:
        if not f.cancelled() and f.exception() is not None:
            log.warning("background %s failed: %s", getattr(fn, "__name__", fn), f.exception())

    future.add_done_callback(done)


async def _carry_out(
    kube: Kube,
    delete: list[ObjectRef],
    apply: list[dict[str, Any]],
    state: _KeyState,
    executor: ThreadPoolExecutor | None = None,
) -> None:
    """Deletes, then applies, each batch concurrently; raises :class:`WriteError` when one failed (the others
    of its batch are still done). Applies run on ``executor`` (default: the loop's); the Services and PDBs
    applied are remembered in ``state`` (see :func:`_not_recently_applied`)."""
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
            state.applied[key] = (json.dumps(obj, sort_keys=True), now)
    _first_failure(
        list(applied),
        [
            (str(o["kind"]), str(o["metadata"].get("namespace", "")), str(o["metadata"]["name"]))
            for o in apply
        ],
    )


def _report_refusal(
    kube: Kube,
    state: _KeyState,
    meta: Mapping[str, Any],
    deployment: LLMDeployment,
    message: str,
    now: datetime,
) -> None:
    """``Degraded=True``/``ApplyFailed`` and a Warning Event, once per distinct refusal (off the loop, in the
    background: the reconcile raises at once and backs off)."""
    status, events = apply_failure_status(
        deployment.status.to_dict(), message, rfc3339(now), deployment.metadata.generation
    )
    log.warning("%s/%s: %s", meta.get("namespace"), meta.get("name"), message)
    if status is None or _contains_status(state.last_status, status):
        return
    state.last_status = {**(state.last_status or {}), **status}
    ns, name = str(meta["namespace"]), str(meta["name"])

    def write() -> None:
        try:
            kube.patch_status(ns, name, status)
        except Exception as exc:  # the next refusal tries again
            state.last_status = None
            log.warning("%s/%s: could not write the ApplyFailed condition: %s", ns, name, exc)
            return
        post_events(kube, meta, events, now)

    _spawn(asyncio.to_thread(write))


def _contains_status(written: Mapping[str, Any] | None, status: Mapping[str, Any]) -> bool:
    """``status`` was already written (every key with the same value)."""
    return written is not None and all(
        without_nulls(written.get(k)) == without_nulls(v) for k, v in status.items()
    )


async def _autoscale(
    deployment: LLMDeployment,
    observed: Observed,
    indexes: Mapping[str, Any],
    state: _KeyState,
    now: datetime,
) -> PassResult:
    """One autoscaler pass (Prometheus is read in a thread, never on the event loop)."""
    if RUNTIME.signals is None:
        RUNTIME.signals = PrometheusSignals()
    target = make_target(deployment, deployment.spec.replicas, RUNTIME.config)
    pod_store = indexes["pod_index"]
    all_pods = [p for k in list(pod_store) for p in _values(pod_store, k)]
    return await asyncio.to_thread(
        autoscale_pass,
        deployment,
        target,
        deployment.status.to_dict(),
        observed.pods,
        all_pods,
        observed.nodes,
        RUNTIME.signals,
        time.time(),
        now,
        rfc3339(now),
        RUNTIME.kube,
    )


def _export_metrics(ns: str, name: str, plan: Plan, deployment: LLMDeployment) -> None:
    status = plan.status or deployment.status.to_dict()
    metrics.DESIRED_REPLICAS.labels(ns, name).set(status.get("desiredReplicas") or 0)
    metrics.READY_REPLICAS.labels(ns, name).set(status.get("readyReplicas") or 0)
    insufficient = False
    for cond in status.get("conditions") or []:
        metrics.CONDITION.labels(ns, name, cond["type"]).set(1 if cond["status"] == "True" else 0)
        insufficient |= cond.get("reason") == "InsufficientGPU"
    metrics.CONDITION.labels(ns, name, "InsufficientGPU").set(1 if insufficient else 0)


def backoff_seconds(errors: int, permanent: bool) -> float:
    """Delay before retry number ``errors`` (>= 1): exponential for refused writes, the transient table
    otherwise; both capped at ``$TIDAL_ERROR_BACKOFF_MAX_SECONDS`` (default 300)."""
    cap = float(os.environ.get("TIDAL_ERROR_BACKOFF_MAX_SECONDS", "300"))
    if permanent:
        delay = REFUSED_BACKOFF_START_SECONDS * 2.0 ** min(max(errors - 1, 0), 16)
    else:
        delay = ERROR_BACKOFF_SECONDS[min(max(errors, 1), len(ERROR_BACKOFF_SECONDS)) - 1]
    return min(cap, delay)


async def reconcile(key: Key, indexes: Mapping[str, Any], force: bool = False) -> None:
    """Reconcile one deployment, coalescing triggers that arrive while it runs. Raises what failed. After a
    failure only ``force`` (a spec change, the retry timer) reconciles before the backoff is over."""
    state = RUNTIME.states.setdefault(key, _KeyState())
    RUNTIME.indexes = indexes
    if not RUNTIME.acting:
        RUNTIME.deferred.add(key)  # another operator acts (kopf is paused): catch up when we act again
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
                plan = await _run_once(key, indexes)
            except Exception as exc:
                state.errors += 1
                state.next_autoscale = 0.0  # a pass whose status was not written is done again
                metrics.RECONCILES.labels("Error").inc()
                permanent = isinstance(exc, WriteError) and exc.permanent
                metrics.RECONCILE_ERRORS.labels("ApplyFailed" if permanent else type(exc).__name__).inc()
                delay = backoff_seconds(state.errors, permanent)
                state.retry_at = time.monotonic() + delay
                _requeue(key, indexes, delay)
                raise
            finally:
                metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
            state.errors = 0
            state.retry_at = 0.0
            requeue = plan.requeue_after if plan is not None else None
            metrics.RECONCILES.labels("Requeue" if requeue else "Success").inc()
            if requeue is not None and requeue < TIMER_INTERVAL_SECONDS:
                _requeue(key, indexes, requeue)
            if not state.dirty:
                return
    finally:
        state.running = False


def _requeue(key: Key, indexes: Mapping[str, Any], delay: float) -> None:
    state = RUNTIME.states.setdefault(key, _KeyState())
    if state.requeue is not None:
        state.requeue.cancel()
    loop = asyncio.get_running_loop()

    def fire() -> None:
        state.requeue = None
        _spawn(_quiet(key, indexes, force=True))

    state.requeue = loop.call_later(delay, fire)


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` as a task the operator keeps a reference to until it is done."""
    task = asyncio.get_running_loop().create_task(coro)
    RUNTIME.tasks.add(task)
    task.add_done_callback(RUNTIME.tasks.discard)


async def _quiet(key: Key, indexes: Mapping[str, Any], force: bool = False) -> None:
    """Reconcile; a failure is logged (the reconcile has already scheduled its retry)."""
    try:
        await reconcile(key, indexes, force)
    except WriteError as exc:
        errors = RUNTIME.states.get(key, _KeyState()).errors
        log.warning("reconcile of %s/%s failed (%d in a row): %s; retrying", *key, errors, exc.message)
    except Exception:
        log.exception("reconcile of %s/%s failed; retrying", *key)


def _forget(key: Key) -> None:
    """Drop the in-memory state of a deployment that is gone (and its pending requeue)."""
    state = RUNTIME.states.pop(key, None)
    if state is not None and state.requeue is not None:
        state.requeue.cancel()


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("llmd_index", "pod_index", "service_index", "pdb_index", "node_index")}


# ----------------------------------------------------------------------------------------------- handlers


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | kopf.ConnectionInfo | None:
    """kopf's own login (the Kubernetes client's in-cluster or kubeconfig credentials), on an aiohttp
    session whose connections are bounded (:data:`KOPF_CONNECTIONS`)."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    limit = KOPF_CONNECTIONS + WATCH_STREAMS_PER_NAMESPACE * RUNTIME.namespaces
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        priority=info.priority,
        aiohttp_session=session,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf settings: progress in annotations (the status schema is ours), few kopf Events, probes."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tidal.dev")
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    # kopf logs every handler run at INFO (thousands of lines a minute with many deployments); the
    # reconcile logs what it changes, and kopf's warnings and errors still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The Kubernetes client is synchronous: give its calls enough threads (and connections, see kube.py).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=API_THREADS))
    RUNTIME.cluster_ip_lane = ThreadPoolExecutor(
        max_workers=CLUSTER_IP_THREADS, thread_name_prefix="tidal-cluster-ip"
    )
    RUNTIME.event_lane = ThreadPoolExecutor(max_workers=EVENT_THREADS, thread_name_prefix="tidal-events")
    RUNTIME.slots = asyncio.Semaphore(max_concurrent_reconciles())
    if RUNTIME.gate is not None:
        RUNTIME.acting = await asyncio.to_thread(RUNTIME.gate.poll, datetime.now(UTC))
        _spawn(_follow_peering(RUNTIME.gate))
    _start_profile()


async def _follow_peering(gate: PeeringGate) -> None:
    """Every :data:`~tidal.shell.leadership.POLL_SECONDS`: whether this operator may act; when it may again,
    reconcile what was deferred while it could not."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        acting = await asyncio.to_thread(gate.poll, datetime.now(UTC))
        resumed = acting and not RUNTIME.acting
        RUNTIME.acting = acting
        if resumed and RUNTIME.indexes is not None:
            deferred, RUNTIME.deferred = RUNTIME.deferred, set()
            for key in deferred:
                _spawn(_quiet(key, RUNTIME.indexes, force=True))


def _start_profile() -> None:
    """``$TIDAL_PROFILE=FILE``: profile the operator's event loop thread (cProfile; handlers, planner, kopf)
    and write the stats to FILE at exit (the benchmark's ``--profile``)."""
    path = os.environ.get("TIDAL_PROFILE")
    if not path:
        return
    import atexit
    import cProfile

    profiler = cProfile.Profile()

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(path)

    profiler.enable()
    atexit.register(dump)


def _trigger(meta: Mapping[str, Any]) -> tuple[Any, dict[str, str]]:
    """What of an LLMDeployment's watch event calls for a reconcile: the generation (the API server bumps
    it on every spec change) and the labels. Status writes and kopf's own metadata change neither."""
    return meta.get("generation"), dict(meta.get("labels") or {})


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_deployment_event(
    type: str | None, namespace: str | None, name: str, meta: Mapping[str, Any], **kwargs: Any
) -> None:
    """A new deployment, a spec change, or the operator's first sight of one (its initial listing):
    reconcile now, even during a backoff (the change may be the fix). Events that change neither the
    generation nor the labels (status writes, kopf's finalizer) do not reconcile. A failure is retried by the
    reconcile's own backoff timer. Called on the first event of a new object, so a new deployment is
    reconciled while kopf's finalizer patch is on its way (one API round trip sooner than ``on.create``)."""
    key = (namespace or "", label_value(name))
    if type == "DELETED":
        _forget(key)
        return
    state = RUNTIME.states.setdefault(key, _KeyState())
    trigger = _trigger(meta)
    if state.trigger == trigger:
        return
    state.trigger = trigger
    # In the background: kopf adds its finalizer after this handler returns, with a JSON patch conditional
    # on the resourceVersion it saw. Waiting here would let the reconcile's status write land first, fail
    # that patch (422) and make kopf diff the whole object again on its next try.
    _spawn(_quiet(key, _indexes(kwargs), force=True))


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_INTERVAL_SECONDS, idle=TIMER_INTERVAL_SECONDS / 2)
async def on_timer(namespace: str | None, name: str, **kwargs: Any) -> None:
    """Periodic level-based pass (cheap: reads come from the caches)."""
    await _quiet((namespace or "", label_value(name)), _indexes(kwargs))


@kopf.on.event("pods", labels=WORKER_SELECTOR)
async def on_pod_event(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
    """A worker pod changed: reconcile its deployment."""
    owner = labels.get(DEPLOYMENT_LABEL)
    if owner:
        await _quiet((namespace or "", owner), _indexes(kwargs))


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def on_delete(namespace: str | None, name: str, **kwargs: Any) -> None:
    """Delete every child now (the garbage collector would too, through the owner references), then let kopf
    drop its finalizer."""
    kube = RUNTIME.kube
    assert kube is not None
    namespace = namespace or ""
    key = (namespace, label_value(name))
    idx = _indexes(kwargs)
    refs = [
        ObjectRef(
            api, kind, namespace, str(o["metadata"]["name"]), o["metadata"].get("uid"), "deployment deleted"
        )
        for index, api, kind in (
            ("pod_index", "v1", "Pod"),
            ("service_index", "v1", "Service"),
            ("pdb_index", "policy/v1", "PodDisruptionBudget"),
        )
        for o in _values(idx[index], key)
        if not (kind == "Pod" and o["metadata"].get("deletionTimestamp"))
    ]
    for ref in refs:
        await asyncio.to_thread(kube.delete, ref)
    _forget(key)
    for gauge in (metrics.DESIRED_REPLICAS, metrics.READY_REPLICAS, metrics.DEGRADED_REPLICAS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for signal in ("ttft", "tpot", "queue", "kv", "load"):
        with contextlib.suppress(KeyError):
            metrics.SIGNAL_RATIO.remove(namespace, name, signal)
