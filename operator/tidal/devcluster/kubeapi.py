"""One lazily built Kubernetes API client from an admin kubeconfig, for the dev cluster and its real nodes.

Why this exists: :class:`tidal.devcluster.cluster.DevCluster` and
:class:`tidal.devcluster.realnode.RealNode` both talk to the cluster they run with its admin kubeconfig,
build the client only when first needed (the `kubernetes` package is slow to import) and close it on stop.
It lives in its own module because the cluster module imports the real node one, so neither can hold it
for the other without an import cycle.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any


class AdminClient:
    """A `kubernetes.client.ApiClient` for `kubeconfig`, built on first use and closed by :meth:`close`."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self._client: Any = None

    def client(self) -> Any:
        """The shared `kubernetes.client.ApiClient` (built now if it is not yet)."""
        if self._client is None:
            from kubernetes import config as k8s_config

            self._client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig)
            )
        return self._client

    def core_v1(self) -> Any:
        """A `kubernetes.client.CoreV1Api` on the shared client."""
        from kubernetes import client as k8s_client

        return k8s_client.CoreV1Api(self.client())

    def close(self) -> None:
        """Close the client if one was built; the next call to :meth:`client` builds a fresh one."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
