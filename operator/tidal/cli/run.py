"""``tidal run``: start the operator (kopf) with leader election, health probes and Prometheus metrics.

With ``--peering NAME`` (the default, ``tidal``) several copies may run: kopf's peering objects (see
``tidal.shell.peering``) let only the highest-priority one act, so two operators never reconcile at once.
``--standalone`` skips peering for development. ``--namespace`` (repeatable) restricts the operator to some
namespaces; ``--all-namespaces`` (the default when no namespace is given) watches all.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
from typing import Any, cast


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
        "--peering", default="tidal", help="kopf peering name for leader election (default tidal)"
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
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # kopf's own login reads $KUBECONFIG; our client gets the same file explicitly.
        os.environ["KUBECONFIG"] = args.kubeconfig
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    import kopf
    import prometheus_client

    from tidal.builders.pods import BuilderConfig
    from tidal.shell import handlers
    from tidal.shell.kube import Kube, make_api_client
    from tidal.shell.leadership import PeeringGate
    from tidal.shell.metrics import REGISTRY
    from tidal.shell.workercode import load_worker_code

    namespaces = list(args.namespace)
    kube = Kube(make_api_client(args.kubeconfig))
    identity = None
    gate = None
    if not args.standalone:
        # The identity kopf registers under in the peering: the reconcile's own timers follow the same rule.
        identity = f"tidal@{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        gate = PeeringGate(kube, args.peering, namespaces, identity, args.priority)
    # The worker code the pods mount (stock vLLM image): read once; a broken package fails here, not in pods.
    config = BuilderConfig(worker_code=load_worker_code())
    handlers.configure(kube, config=config, namespaces=len(namespaces), gate=gate)
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, addr=args.metrics_address, registry=REGISTRY)
    kopf.run(
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=args.priority,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=args.liveness or None,
        identity=cast(Any, identity),
    )
    return 0
