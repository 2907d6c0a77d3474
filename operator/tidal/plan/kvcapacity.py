"""The online KV-capacity check for one ``LLMDeployment``: the ready engines' reported capacity against the
memory model's prediction for the settings they run with -> ``status.kvCapacity``, a ``KVCapacityMismatch``
Warning Event, and the capacity the next recommendation sizes with (:func:`tokens_in_use`).

Its own module because the check joins three things no other planner module holds together: the effective
engine (:mod:`tidal.builders.engine`), the pure comparison (:mod:`tidal.recommender.kvcheck`) and the status.
The shell (:mod:`tidal.shell.kvcapacity`) reads the reports from Prometheus and hands them here; the
autoscaler's status patch (:mod:`tidal.plan.autoscale.status`) carries the result into the same write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tidal.api import LLMDeployment
from tidal.api.status import KVCapacityStatus, LLMDeploymentStatus, RecommendedValues
from tidal.builders.engine import EffectiveEngine
from tidal.builders.modelprofile import model_profile
from tidal.plan.replicas import ReplicaView
from tidal.plan.types import EventSpec
from tidal.recommender.gpus import UnknownGPUError, get_gpu
from tidal.recommender.kvcheck import EngineKV, EngineSettings, capacity_in_use, compare, predicted_tokens

KV_CAPACITY_MISMATCH: Final = "KVCapacityMismatch"
"""Warning Event reason: the measured KV capacity differs from the prediction by more than 5 %."""


@dataclass
class KVCapacityUpdate:
    """What one check writes: ``status.kvCapacity`` (``None``: leave it as it is) and its Events."""

    status: dict[str, Any] | None = None
    events: list[EventSpec] = field(default_factory=list)


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in ``args`` (the last one wins, as in argparse)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def engine_settings(deployment: LLMDeployment, engine: EffectiveEngine) -> EngineSettings:
    """The running engine's KV-relevant settings: the effective values, plus ``--kv-cache-memory-bytes`` and
    ``--enforce-eager`` from ``spec.engine.extraArgs``."""
    eng = deployment.spec.engine
    budget = _flag_value(engine.extra_args, "--kv-cache-memory-bytes")
    return EngineSettings(
        tp=engine.tensor_parallel_size,
        pp=engine.pipeline_parallel_size,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        dtype=eng.dtype,
        quantization=engine.quantization,
        kv_cache_dtype=eng.kv_cache_dtype,
        enforce_eager="--enforce-eager" in engine.extra_args,
        kv_cache_memory_bytes=int(budget) if budget and budget.isdigit() else None,
    )


def reporting_pods(views: Iterable[ReplicaView], spec_hash: str) -> set[str]:
    """The pods whose reports count: those of ready replicas at the target's spec hash (the prediction is
    for the target's settings; a replica of an older spec runs other ones)."""
    return {
        str((p.get("metadata") or {}).get("name"))
        for v in views
        if v.ready and v.spec_hash == spec_hash
        for p in v.pods
    }


def tokens_in_use(
    status: LLMDeploymentStatus | None, settings: EngineSettings, recommended: RecommendedValues | None
) -> int | None:
    """The measured capacity the recommendation sizes with: ``status.kvCapacity.tokensInUse`` while the
    engine runs on the basis it was measured on, and the recommendation is for that basis too (in ``Advise``
    mode the engine may run vLLM's defaults, not the recommended TP): else ``None``, the prediction stands."""
    kv = status.kv_capacity if status is not None else None
    if kv is None or kv.tokens_in_use is None or kv.basis != settings.basis or recommended is None:
        return None
    util = recommended.gpu_memory_utilization
    rec_basis = EngineSettings(
        tp=recommended.tensor_parallel_size or 1,
        pp=recommended.pipeline_parallel_size or 1,
        gpu_memory_utilization=util,
        kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
    ).basis
    return kv.tokens_in_use if rec_basis == settings.basis else None


def kv_capacity_update(
    deployment: LLMDeployment,
    engine: EffectiveEngine,
    reports: Sequence[EngineKV],
    old_status: Mapping[str, Any] | None,
    stamp: str,
) -> KVCapacityUpdate:
    """Compare ``reports`` with the prediction for ``engine``: the new ``status.kvCapacity`` (its
    ``measuredAt`` kept while the numbers stay the same, so a steady state writes nothing) and a
    ``KVCapacityMismatch`` Warning Event when a mismatch is first seen or the capacity in use changes."""
    if not reports:
        return KVCapacityUpdate()
    profile, _ = model_profile(deployment.spec.model)
    try:
        gpu = get_gpu(deployment.spec.resources.gpu_type)
    except UnknownGPUError:
        return KVCapacityUpdate()
    if profile is None:
        return KVCapacityUpdate()
    settings = engine_settings(deployment, engine)
    smallest_block = min(reports, key=lambda r: r.tokens).block_size
    check = compare(predicted_tokens(profile, gpu, settings, max(1, smallest_block)), reports)
    if check is None:
        return KVCapacityUpdate()
    old = dict((old_status or {}).get("kvCapacity") or {})
    same_basis = old.get("basis") == settings.basis
    in_use = capacity_in_use(check, old.get("tokensInUse") if same_basis else None)
    new = KVCapacityStatus(
        predicted_tokens=check.predicted_tokens,
        measured_tokens=check.measured_tokens,
        num_blocks=check.smallest.num_blocks,
        block_size=check.smallest.block_size,
        pod=check.smallest.pod,
        engines=check.engines,
        relative_error=round(check.relative_error, 6),
        mismatch=check.mismatch,
        tokens_in_use=in_use,
        basis=settings.basis,
        measured_at=stamp,
        message=check.message(),
    ).to_dict()
    new["tokensInUse"] = in_use  # null removes an earlier value (the status is merge-patched)
    if {k: v for k, v in old.items() if k != "measuredAt"} == {
        k: v for k, v in new.items() if k != "measuredAt"
    }:
        new["measuredAt"] = old.get("measuredAt", stamp)
    events: list[EventSpec] = []
    changed_use = in_use != (old.get("tokensInUse") if same_basis else None)
    if check.mismatch and (not old.get("mismatch") or not same_basis or changed_use):
        events.append(EventSpec("Warning", KV_CAPACITY_MISMATCH, check.message()))
    return KVCapacityUpdate(new, events)


__all__ = [
    "KV_CAPACITY_MISMATCH",
    "KVCapacityUpdate",
    "engine_settings",
    "kv_capacity_update",
    "reporting_pods",
    "tokens_in_use",
]
