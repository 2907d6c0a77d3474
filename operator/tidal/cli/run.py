"""``tidal run``: start the operator (kopf) with leader election, health probes and Prometheus metrics.

With ``--peering NAME`` several copies may run: kopf's peering objects (see ``tidal.shell.peering``) let only
the highest-priority one act, so two operators never reconcile at once; a named peering that does not exist
pauses the operator until it is created. Without ``--peering`` the ``tidal`` peering is joined when it
exists, and the operator runs standalone (one warning) when it does not. ``--standalone`` skips peering.

``--prometheus-allow`` (repeatable, plus ``$TIDAL_PROMETHEUS_ALLOW``) lists the Prometheus URL prefixes CRs
may name; ``--prometheus-ca-bundle`` the CAs for https ones (see ``tidal.shell.promaccess``). A metrics or
health port already in use, or a bad setting, ends the command with one line on stderr and exit code 1.

``--namespace`` (repeatable) restricts the operator to some
namespaces; ``--all-namespaces`` (the default when no namespace is given) watches all.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
import socket
import sys
from typing import Any, cast
from urllib.parse import urlsplit


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags and the handler."""
    p = parser
    p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster service account, then $KUBECONFIG)"
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    peer = p.add_mutually_exclusive_group()
    peer.add_argument(
        "--peering",
        default=None,
        help="join this kopf peering for leader election (paused until it exists); default: join 'tidal' "
        "when it exists, else run standalone",
    )
    peer.add_argument("--standalone", action="store_true", help="no peering/leader election (development)")
    p.add_argument("--priority", type=int, default=0, help="peering priority (the highest active copy acts)")
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf health endpoint URL (empty to disable; default http://0.0.0.0:8080/healthz)",
    )
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0 to disable)")
    p.add_argument("--metrics-address", default="0.0.0.0", help="address the metrics server binds")
    p.add_argument(
        "--prometheus-allow",
        action="append",
        default=[],
        metavar="URL_PREFIX",
        help="a Prometheus URL prefix LLMDeployments may name (repeatable; also $TIDAL_PROMETHEUS_ALLOW; "
        "default: only http://prometheus-operated.monitoring.svc:9090)",
    )
    p.add_argument(
        "--prometheus-ca-bundle",
        metavar="PEM",
        help="CA bundle for https Prometheus URLs (also $TIDAL_PROMETHEUS_CA_BUNDLE; default: system CAs)",
    )
    p.add_argument(
        "--gpu-catalog-configmap",
        metavar="[NAMESPACE/]NAME",
        help="ConfigMap with a custom GPU catalogue (key gpus.yaml, the --gpu-catalog format of tidal "
        "recommend) merged over the built-in one; read once at start (default namespace: the operator's)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(handler=_run)


class StartError(Exception):
    """A setting or a port that stops ``tidal run`` before the operator starts (one line, exit code 1)."""


def _fail(message: str) -> int:
    print(f"tidal run: error: {message}", file=sys.stderr)
    return 1


def _port_free(what: str, host: str, port: int) -> None:
    """Raise :class:`StartError` when ``host:port`` cannot be bound (kopf would fail later, in a task, with a
    traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp and http.server bind
        try:
            sock.bind((host, port))
        except OSError as exc:
            why = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise StartError(f"{what} port {port} on {host or '0.0.0.0'}: {why}") from None


def _start_metrics(port: int, address: str) -> None:
    import prometheus_client

    from tidal.shell.metrics import REGISTRY

    try:
        prometheus_client.start_http_server(port, addr=address, registry=REGISTRY)
    except OSError as exc:
        raise StartError(f"metrics port {port} on {address}: {exc.strerror or exc}") from None


def _run(args: argparse.Namespace) -> int:
    try:
        return _start(args)
    except StartError as exc:
        return _fail(str(exc))


def _start(args: argparse.Namespace) -> int:
    from tidal.shell import promaccess

    try:
        access = promaccess.access_from(args.prometheus_allow, args.prometheus_ca_bundle)
    except ValueError as exc:
        raise StartError(str(exc)) from None
    if args.liveness:
        live = urlsplit(args.liveness)
        _port_free("health", live.hostname or "0.0.0.0", live.port or 80)
    if args.metrics_port:
        _port_free("metrics", args.metrics_address, args.metrics_port)
    if args.kubeconfig:
        # kopf's own login reads $KUBECONFIG; our client gets the same file explicitly.
        os.environ["KUBECONFIG"] = args.kubeconfig
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    import kopf

    from tidal.builders.pods import BuilderConfig
    from tidal.shell import handlers
    from tidal.shell.kube import Kube, make_api_client
    from tidal.shell.leadership import PeeringGate
    from tidal.shell.peering import resolve_peering
    from tidal.shell.workercode import load_worker_code

    namespaces = list(args.namespace)
    kube = Kube(make_api_client(args.kubeconfig))
    promaccess.configure(access)
    peering = None if args.standalone else resolve_peering(kube, args.peering, namespaces)
    if args.gpu_catalog_configmap:
        from tidal.shell.gpucatalog import GPUCatalogError, install_from_configmap

        try:
            catalog = install_from_configmap(kube.core, args.gpu_catalog_configmap)
        except GPUCatalogError as exc:
            print(f"tidal run: error: {exc}", file=sys.stderr)
            return 2
        logging.getLogger("tidal").info("GPU catalogue: %d types (%s)", len(catalog), ", ".join(catalog))
    identity = None
    gate = None
    if peering is not None:
        # The identity kopf registers under in the peering: the reconcile's own timers follow the same rule.
        identity = f"tidal@{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        gate = PeeringGate(kube, peering, namespaces, identity, args.priority)
    # The worker code the pods mount (stock vLLM image): read once; a broken package fails here, not in pods.
    config = BuilderConfig(worker_code=load_worker_code())
    handlers.configure(kube, config=config, namespaces=len(namespaces), gate=gate)
    if args.metrics_port:
        _start_metrics(args.metrics_port, args.metrics_address)
    kopf.run(
        standalone=peering is None,
        peering_name=peering,
        priority=args.priority,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=args.liveness or None,
        identity=cast(Any, identity),
    )
    return 0
