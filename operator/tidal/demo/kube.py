"""The demo's Kubernetes API steps: the CRDs created and Established, the namespace with its default
ServiceAccount and the placeholder token Secret, and the waiting and error-tolerant reads the show uses.

It exists apart from :mod:`tidal.demo.runner` so the runner reads as the order of the demo, and these calls
(each idempotent: an object already there is kept) read on their own.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tidal.demo")


def _create_or_keep(create: Callable[[], Any]) -> None:
    """Create an object; one that exists already (409) is kept."""
    from kubernetes.client.exceptions import ApiException

    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise


def install_crds(api_client: Any) -> None:
    """Create the ``LLMDeployment`` CRD and kopf's peering CRDs and wait until each is Established."""
    from kubernetes import client

    from tidal.api.crdgen import build_crd
    from tidal.shell.peering import PEERING_CRDS

    ext: Any = client.ApiextensionsV1Api(api_client)
    docs = [build_crd(), *PEERING_CRDS]
    for doc in docs:
        _create_or_keep(functools.partial(ext.create_custom_resource_definition, doc))

    def established(name: str) -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for doc in docs:
        name = str(doc["metadata"]["name"])
        wait_for(functools.partial(established, name), 30, f"CRD {name} Established")


def prepare_namespace(api_client: Any, namespace: str) -> None:
    """Create ``namespace``, wait for its default ServiceAccount, add the example's token Secret."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core: Any = client.CoreV1Api(api_client)
    _create_or_keep(functools.partial(core.create_namespace, {"metadata": {"name": namespace}}))
    wait_for(
        lambda: bool(core.read_namespaced_service_account("default", namespace)),
        30,
        "default ServiceAccount",
        errors=(ApiException,),
    )
    # The example's pods read HF_TOKEN from this Secret; KWOK runs no container, so a placeholder will do.
    secret = {"metadata": {"name": "hf-token"}, "stringData": {"token": "demo-placeholder"}}
    _create_or_keep(functools.partial(core.create_namespaced_secret, namespace, secret))


def get_or_none(call: Callable[[], Any]) -> Any:
    """``call()``, or ``None`` (logged) when the API call fails: the show goes on with what it had."""
    from kubernetes.client.exceptions import ApiException

    try:
        return call()
    except ApiException as exc:
        log.warning("API call failed: %s %s", exc.status, exc.reason)
        return None


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll ``predicate`` every 0.25 s until it is true; ``errors`` raised by it count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except errors:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.25)
