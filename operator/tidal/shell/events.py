"""The Event poster: turns the planner's ``EventSpec`` values into core/v1 Events on the LLMDeployment, so
``kubectl describe llmd`` and ``kubectl get events`` show every condition transition and every action
(replica created, deleted, restarted) with its reason.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from tidal.api import API_VERSION, KIND
from tidal.builders.names import MANAGER
from tidal.plan import EventSpec, rfc3339
from tidal.shell.kube import Kube

log = logging.getLogger(__name__)
INSTANCE = socket.gethostname()


def event_body(meta: Mapping[str, Any], event: EventSpec, now: datetime) -> dict[str, Any]:
    """The Event object for ``event`` about the deployment with metadata ``meta``."""
    stamp = rfc3339(now)
    return {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": event.reason,
        "message": event.message[:1024],
        "type": event.type,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": MANAGER},
        "reportingComponent": MANAGER,
        "reportingInstance": INSTANCE,
    }


def post_events(kube: Kube, meta: Mapping[str, Any], events: list[EventSpec], now: datetime) -> None:
    """Post each event; a failure to post is logged, never fails the reconcile."""
    for event in events:
        try:
            kube.create_event(str(meta["namespace"]), event_body(meta, event, now))
        except ApiException as exc:
            log.warning(
                "could not post Event %s on %s/%s: %s",
                event.reason,
                meta["namespace"],
                meta["name"],
                exc.reason,
            )
