"""Pod status a kubelet would write, for fault injection on KWOK pods (KWOK has no kubelet and leaves a pod's
status alone once it has set it running): a container crash-looping after OOM kills, back to running, and an
eviction. Patched with ``CoreV1Api.patch_namespaced_pod_status``."""

from __future__ import annotations

from typing import Any

from kubernetes import client


def _patch(core: client.CoreV1Api, pod: Any, ready: bool, restarts: int, state: dict[str, Any]) -> None:
    container = pod.spec.containers[0]
    core.patch_namespaced_pod_status(
        pod.metadata.name,
        pod.metadata.namespace,
        {
            "status": {
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": ready,
                        "restartCount": restarts,
                        "state": state,
                        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                    }
                ],
            }
        },
    )


def oom_crash_loop(core: client.CoreV1Api, pod: Any, restarts: int = 3) -> None:
    """The pod's first container was OOM-killed ``restarts`` times and waits in CrashLoopBackOff."""
    _patch(core, pod, False, restarts, {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}})


def running_again(core: client.CoreV1Api, pod: Any, restarts: int = 4) -> None:
    """The pod's first container runs and is ready again (its last termination still the OOM kill)."""
    _patch(core, pod, True, restarts, {"running": {"startedAt": "2026-12-05T00:00:00Z"}})


def evicted(core: client.CoreV1Api, pod: Any) -> None:
    """The pod was evicted by its node (phase ``Failed``, reason ``Evicted``)."""
    core.patch_namespaced_pod_status(
        pod.metadata.name,
        pod.metadata.namespace,
        {"status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."}},
    )
