"""The kopf handlers: one level-based reconcile per LLMDeployment, run when it is new or its spec changed
(``on.event``, by ``metadata.generation``: kopf's diff-based change handlers are not used, see
:mod:`tidal.shell.diffbase`), on a timer, and whenever one of its worker pods changes.

This module is the wiring only: kopf's login and settings, and the handlers that hand a deployment's key to
the one :class:`~tidal.shell.reconciler.Reconciler` of the process (:data:`RECONCILER`). The indexes the
handlers receive are :mod:`tidal.shell.indexes`; the state machine is :mod:`tidal.shell.reconciler`; the
writes are :mod:`tidal.shell.writer`.

The autoscaler runs inside the same serialised reconcile: when ``spec.autoscaling.enabled``, every
``$TIDAL_AUTOSCALER_INTERVAL_SECONDS`` (default 15) a pass reads Prometheus off the event loop
(:mod:`tidal.shell.autoscale`), decides, merge-patches ``spec.replicas`` when the count changes, and hands its
status fields, conditions and Events to the planner, which writes them in the same status patch as its own
(so neither overwrites the other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from tidal.api import GROUP, PLURAL, VERSION
from tidal.builders.names import DEPLOYMENT_LABEL, label_value
from tidal.builders.pods import BuilderConfig
from tidal.plan import ObjectRef
from tidal.shell import metrics
from tidal.shell.diffbase import NoDiffBaseStorage
from tidal.shell.indexes import WORKER_SELECTOR, Key, indexes_of, values  # (registers the kopf indexes)
from tidal.shell.kube import Kube
from tidal.shell.leadership import PeeringGate
from tidal.shell.reconciler import TIMER_INTERVAL_SECONDS, Reconciler, max_concurrent_reconciles

API_THREADS = 32
"""Concurrent Kubernetes API calls (thread pool of the synchronous client)."""
KOPF_CONNECTIONS = 16
"""kopf's own API connections (its patches of finalizers and progress) besides its watch streams. kopf's
default aiohttp connector has no limit: a burst of new deployments opened one TLS connection per object in
flight (hundreds), each with ~300 KiB of buffers, most of the operator's peak memory. Requests beyond the
limit wait for a free connection."""
WATCH_STREAMS_PER_NAMESPACE = 8
"""Connections kept for kopf's watch streams per watched namespace (the whole cluster counts as one): it
watches 4 namespaced resources per namespace, nodes, CRDs and its peering object."""

RECONCILER = Reconciler()
"""The reconciles of this operator process."""
_namespaces = 1
"""Namespaces kopf watches (1 for the whole cluster): sizes its connection pool."""


def configure(
    kube: Kube, config: BuilderConfig | None = None, namespaces: int = 1, gate: PeeringGate | None = None
) -> None:
    """Give the handlers their client (called by ``tidal run`` before kopf starts); ``namespaces``: how many
    namespaces kopf watches (1 for the whole cluster); ``gate``: the peering this operator joined."""
    global _namespaces
    RECONCILER.writer.kube = kube
    RECONCILER.gate = gate
    _namespaces = max(1, namespaces)
    if config is not None:
        RECONCILER.config = config


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | kopf.ConnectionInfo | None:
    """kopf's own login (the Kubernetes client's in-cluster or kubeconfig credentials), on an aiohttp
    session whose connections are bounded (:data:`KOPF_CONNECTIONS`)."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    limit = KOPF_CONNECTIONS + WATCH_STREAMS_PER_NAMESPACE * _namespaces
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
    RECONCILER.writer.start_lanes()
    RECONCILER.slots = asyncio.Semaphore(max_concurrent_reconciles())
    if RECONCILER.gate is not None:
        RECONCILER.acting = await asyncio.to_thread(RECONCILER.gate.poll, datetime.now(UTC))
        RECONCILER.spawn(RECONCILER.follow_peering(RECONCILER.gate))
    _start_profile()


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
        RECONCILER.forget(key)
        return
    state = RECONCILER.state(key)
    trigger = _trigger(meta)
    if state.trigger == trigger:
        return
    state.trigger = trigger
    # In the background: kopf adds its finalizer after this handler returns, with a JSON patch conditional
    # on the resourceVersion it saw. Waiting here would let the reconcile's status write land first, fail
    # that patch (422) and make kopf diff the whole object again on its next try.
    RECONCILER.spawn(RECONCILER.quiet(key, indexes_of(kwargs), force=True))


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_INTERVAL_SECONDS, idle=TIMER_INTERVAL_SECONDS / 2)
async def on_timer(namespace: str | None, name: str, **kwargs: Any) -> None:
    """Periodic level-based pass (cheap: reads come from the caches)."""
    await RECONCILER.quiet((namespace or "", label_value(name)), indexes_of(kwargs))


@kopf.on.event("pods", labels=WORKER_SELECTOR)
async def on_pod_event(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
    """A worker pod changed: reconcile its deployment."""
    owner = labels.get(DEPLOYMENT_LABEL)
    if owner:
        await RECONCILER.quiet((namespace or "", owner), indexes_of(kwargs))


@kopf.on.event("configmaps", labels=WORKER_SELECTOR)
async def on_config_map_event(
    type: str | None, namespace: str | None, labels: Mapping[str, str], **kwargs: Any
) -> None:
    """A worker-code ConfigMap was deleted: a deployment that uses it puts it back now (new pods cannot start
    without it): its own deployment, or, for the namespace's shared one, one deployment of the namespace that
    is not being deleted (every deployment of a namespace plans the same current code, so one reconcile
    restores it for all; reconciling all of them would cost one pass per deployment. The one whose code no
    pod mounts any more is not re-created: the plan wants only the current code)."""
    if type != "DELETED":
        return
    ns = namespace or ""
    idx = indexes_of(kwargs)
    owner = labels.get(DEPLOYMENT_LABEL)
    key = (ns, owner) if owner else first_live_deployment(idx["llmd_index"], ns)
    if key is not None:
        await RECONCILER.quiet(key, idx)


def first_live_deployment(llmd_index: kopf.Index[Key, dict[str, Any]], namespace: str) -> Key | None:
    """The first deployment (by key) of ``namespace`` that is not being deleted, or ``None``."""
    return next(
        (
            k
            for k in sorted(list(llmd_index))
            if k[0] == namespace
            and any(not o["metadata"].get("deletionTimestamp") for o in values(llmd_index, k))
        ),
        None,
    )


def others_remain(llmd_index: kopf.Index[Key, dict[str, Any]], key: Key) -> bool:
    """Whether another deployment of ``key``'s namespace stays: one not being deleted itself (deleted
    together, as by ``kubectl delete llmd --all``, each would otherwise leave the shared ConfigMap to the
    other)."""
    return any(
        k[0] == key[0] and k != key and not o["metadata"].get("deletionTimestamp")
        for k in list(llmd_index)
        for o in values(llmd_index, k)
    )


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def on_delete(namespace: str | None, name: str, **kwargs: Any) -> None:
    """Delete every child now (the garbage collector would too, through the owner references), then let kopf
    drop its finalizer."""
    kube = RECONCILER.writer.client()
    namespace = namespace or ""
    key = (namespace, label_value(name))
    idx = indexes_of(kwargs)
    refs = [
        ObjectRef(
            api, kind, namespace, str(o["metadata"]["name"]), o["metadata"].get("uid"), "deployment deleted"
        )
        for index, api, kind in (
            ("pod_index", "v1", "Pod"),
            ("service_index", "v1", "Service"),
            ("pdb_index", "policy/v1", "PodDisruptionBudget"),
            ("config_map_index", "v1", "ConfigMap"),
        )
        for o in values(idx[index], key)
        if not (kind == "Pod" and o["metadata"].get("deletionTimestamp"))
    ]
    # The namespace's shared worker code goes with its last deployment (a deployment created meanwhile puts it
    # back: its deletion reconciles the namespace, see on_config_map_event).
    if not others_remain(idx["llmd_index"], key):
        refs.extend(
            ObjectRef(
                "v1",
                "ConfigMap",
                namespace,
                str(o["metadata"]["name"]),
                o["metadata"].get("uid"),
                "the namespace's last deployment deleted",
            )
            for o in values(idx["config_map_index"], (namespace, ""))
        )
    for ref in refs:
        await asyncio.to_thread(kube.delete, ref)
    RECONCILER.forget(key)
    for gauge in (metrics.DESIRED_REPLICAS, metrics.READY_REPLICAS, metrics.DEGRADED_REPLICAS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for signal in ("ttft", "tpot", "queue", "kv", "load"):
        with contextlib.suppress(KeyError):
            metrics.SIGNAL_RATIO.remove(namespace, name, signal)
