"""GPU-hours (``status.gpuHours``): the GPUs the worker pods hold x the time since the last accounting.

Its own module because two writers account them: an autoscaler pass (:mod:`tidal.plan.autoscale.status`)
and, without autoscaling, the reconcile planner (:func:`account_gpu_hours`); both use the same accounting
time key in ``status.autoscaler`` and the same gap cap, so the total never counts an interval twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from tidal.plan.replicas import pod_gpus

GPU_HOURS_AT: Final = "gpuHoursAt"
"""Key in ``status.autoscaler``: Unix time up to which ``status.gpuHours`` is accounted."""
MAX_GPU_HOURS_GAP_S: Final = 6 * 3600.0
"""A longer gap between two accountings (autoscaling was off, the operator was down for long) is counted
as this long: the replica count during the gap is unknown."""
GPU_HOURS_WRITE_SECONDS: Final = 300.0
"""At most this long between GPU-hour accountings while worker pods hold GPUs and nothing else is written."""


def accumulate_gpu_hours(
    status: Mapping[str, Any] | None, gpus_in_use: int, now: float
) -> tuple[float, float]:
    """(new ``gpuHours``, the increment): ``gpus_in_use`` x the time since the last accounting (none the
    first time; a gap is capped at :data:`MAX_GPU_HOURS_GAP_S`)."""
    status = status or {}
    total = float(status.get("gpuHours") or 0.0)
    since = (status.get("autoscaler") or {}).get(GPU_HOURS_AT)
    if since is None:
        return total, 0.0
    elapsed = min(max(0.0, now - float(since)), MAX_GPU_HOURS_GAP_S)
    delta = gpus_in_use * elapsed / 3600.0
    return total + delta, delta


def worker_gpus(pods: Sequence[Mapping[str, Any]]) -> int:
    """GPUs the worker pods hold: the requests of pods bound to a node that have not finished."""
    return sum(
        pod_gpus(pod)
        for pod in pods
        if (pod.get("spec") or {}).get("nodeName")
        and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def account_gpu_hours(
    old_status: Mapping[str, Any], gpus: int, now: float, writing: bool
) -> dict[str, Any] | None:
    """``gpuHours`` and ``autoscaler`` (with the accounting time, the key the autoscaler uses too) to add to
    the status write, or ``None`` when the accounting can wait for a later write. ``gpus`` (held now) x the
    time since the last accounting: a count changes when pods are created or deleted, which writes the status
    anyway (pods not yet bound hold none), so the error is the binding or release delay within one interval.
    Due on its own (one write) when pods held GPUs for :data:`GPU_HOURS_WRITE_SECONDS` since the last
    accounting, or when accounting never started; never while no pod holds a GPU."""
    old_as = old_status.get("autoscaler") or {}
    since = old_as.get(GPU_HOURS_AT)
    due = since is None or (gpus > 0 and now - float(since) >= GPU_HOURS_WRITE_SECONDS)
    if not (writing or due):
        return None
    total, _ = accumulate_gpu_hours(old_status, gpus, now)
    return {"gpuHours": round(total, 6), "autoscaler": {**old_as, GPU_HOURS_AT: now}}


__all__ = [
    "GPU_HOURS_AT",
    "GPU_HOURS_WRITE_SECONDS",
    "MAX_GPU_HOURS_GAP_S",
    "account_gpu_hours",
    "accumulate_gpu_hours",
    "worker_gpus",
]
