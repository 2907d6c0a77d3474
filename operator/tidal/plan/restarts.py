"""Container restarts of the worker pods: counted into ``status.restarts``, an Event when the count grows.

Why it exists: the kubelet restarts a worker container whose engine died (``restartPolicy: Always``), and the
pod is Ready again a minute later; without this the only trace is the pod's ``restartCount``, which nobody
watching the ``LLMDeployment`` sees. Crash *loops* and OOM kills are ``Degraded``
(:mod:`tidal.plan.replicas`); this is the single restart that recovered, said once, with the kubelet's
termination reason and exit code.

The count is the sum over the deployment's live worker pods, so a deleted pod takes its restarts with it; an
Event is posted when the sum grows against the stored one (a restart in the same pass as the deletion of a
pod with as many restarts is not announced: the pod's own ``restartCount`` still shows it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENGINE_RESTARTED = "EngineRestarted"
"""Event reason: the kubelet restarted a worker container."""


@dataclass(frozen=True)
class Restart:
    """One container of a worker pod with restarts."""

    pod: str
    container: str
    count: int
    last: str
    """The last termination: ``Error, exit code 137``, or ``unknown``."""


def container_restarts(pods: Sequence[Mapping[str, Any]]) -> list[Restart]:
    """Containers (init containers included) of ``pods`` that were restarted at least once."""
    out: list[Restart] = []
    for pod in pods:
        name = str(pod.get("metadata", {}).get("name", "?"))
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            count = int(cs.get("restartCount") or 0)
            if count <= 0:
                continue
            last = (cs.get("lastState") or {}).get("terminated") or {}
            desc = (
                f"{last.get('reason', 'Unknown')}, exit code {last.get('exitCode', '?')}"
                if last
                else "unknown"
            )
            out.append(Restart(name, str(cs.get("name", "?")), count, desc))
    return out


def restart_message(restarts: Sequence[Restart], before: int) -> str | None:
    """The Event message when the total grew past ``before``, else ``None``."""
    total = sum(r.count for r in restarts)
    if total <= before:
        return None
    parts = [f"pod {r.pod} container {r.container}: {r.count} restart(s), last {r.last}" for r in restarts]
    return f"the kubelet restarted worker containers ({before} -> {total} restarts): " + "; ".join(parts)
