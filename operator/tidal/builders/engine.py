"""The effective engine settings of a deployment: the spec's explicit values, plus the recommender's values
for the settings left ``"auto"`` when ``spec.recommendation.mode`` is ``Apply``. In ``Apply`` mode the
overrides engine tuning recorded in ``status.engineTuning`` (:mod:`tidal.scaling.tuning`) come between the
two: explicit spec value > tuned override > recommendation.

These settings are what the pod contract carries (and so what the spec hash covers): in ``Apply`` mode a new
recommendation rolls the pods, in ``Advise`` mode the recommendation is only written to
``status.recommendation`` and the ``"auto"`` settings are left to vLLM (TP and PP default to 1). Explicit
values always win; where they differ from what Tidal would choose on its own, the difference is reported.

The recommender is pure and deterministic, so its result is cached per input. The model's architecture
comes from :mod:`tidal.builders.modelprofile` (its names are re-exported here).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tidal.api import AUTO, LLMDeploymentSpec, RecommendationStatus
from tidal.api.enginefields import SETTINGS
from tidal.api.status import LLMDeploymentStatus, PredictedPerformance, RecommendedValues
from tidal.builders.gpus import gpu_spec
from tidal.builders.modelprofile import (
    MODEL_UNRESOLVED_HINT,
    checkpoint_bytes,
    model_name_hint,
    model_profile,
)
from tidal.recommender.gpus import UnknownGPUError
from tidal.recommender.models import ModelProfile
from tidal.recommender.recommend import Recommendation, RecommendInput, recommend_config

_MAX_REASONS = 32
_MAX_MESSAGE = 1000


@dataclass(frozen=True)
class EffectiveEngine:
    """The engine settings the workers run with (``None``: vLLM's own default)."""

    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    dtype: str | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    enable_prefix_caching: bool | None = None
    extra_args: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()
    """Fields taken from the recommendation (``Apply`` mode, the spec said ``"auto"``)."""
    tuned: tuple[str, ...] = ()
    """Fields taken from ``status.engineTuning.overrides`` (``Apply`` mode, the spec said ``"auto"``)."""

    @property
    def world_size(self) -> int:
        """GPUs of one replica: TP x PP."""
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass(frozen=True)
class ReplicaShape:
    """How one replica maps onto pods: ``group_size`` pods of ``gpus_per_pod`` GPUs each."""

    world_size: int
    group_size: int
    gpus_per_pod: int

    @property
    def multi_node(self) -> bool:
        """A Ray group across several nodes."""
        return self.group_size > 1


def replica_shape(world_size: int, gpus_per_node: int) -> ReplicaShape:
    """One pod when the replica fits a node, else the fewest pods that split the GPUs evenly, each fitting a
    node (TP x PP = 16 on 8-GPU nodes: 2 pods of 8)."""
    if world_size <= gpus_per_node:
        return ReplicaShape(world_size, 1, world_size)
    k = math.ceil(world_size / gpus_per_node)
    while world_size % k or world_size // k > gpus_per_node:
        k += 1
    return ReplicaShape(world_size, k, world_size // k)


__all__ = [
    "MODEL_UNRESOLVED_HINT",
    "EffectiveEngine",
    "RecommendationResult",
    "ReplicaShape",
    "checkpoint_bytes",
    "model_name_hint",
    "model_profile",
    "recommend_for_spec",
    "replica_shape",
    "resolve_engine",
    "tuned_overrides",
]


# ----------------------------------------------------------------------------------------- recommendation


@dataclass(frozen=True)
class RecommendationResult:
    """The recommendation for a spec: what goes to ``status.recommendation`` and the values Apply uses."""

    status: RecommendationStatus
    values: dict[str, int | float]
    """Recommended value per engine field (``tensor_parallel_size``, ...) for the settings left ``"auto"``."""


@lru_cache(maxsize=512)
def _recommend_cached(inp: RecommendInput) -> Recommendation:
    return recommend_config(inp)


def _explicit(spec: LLMDeploymentSpec) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for setting in SETTINGS:
        raw = getattr(spec.engine, setting.field)
        if raw != AUTO:
            out[setting.field] = setting.parse(raw)
    return out


def _values_of(rec: Recommendation) -> dict[str, int | float]:
    return {s.field: getattr(rec, s.field) for s in SETTINGS}


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _quantization_conflict(spec: LLMDeploymentSpec, profile: ModelProfile) -> list[str]:
    """A warning when ``spec.engine.quantization`` names another method than the checkpoint declares (vLLM
    refuses to start then). The API refuses it when ``spec.model.architecture.quantization`` says so; this
    catches the catalogue's knowledge of the checkpoint."""
    own, asked = profile.quantization, spec.engine.quantization
    if not own or asked in ("none", own):
        return []
    return [
        f"warning: spec.engine.quantization={asked} but the checkpoint declares {own}; vLLM refuses a "
        "mismatch: leave spec.engine.quantization none to use the checkpoint's"
    ]


def recommend_for_spec(
    spec: LLMDeploymentSpec, generation: int | None, measured_kv_tokens: int | None = None
) -> RecommendationResult | None:
    """Run the recommender for ``spec`` (``None`` when neither the model nor the GPU is known: the reason
    is returned in a status without values). ``measured_kv_tokens``: the KV capacity the running engines
    reported, in place of the prediction (``status.kvCapacity.tokensInUse``)."""
    profile, source = model_profile(spec.model)
    try:
        gpu = gpu_spec(spec.resources.gpu_type)
    except UnknownGPUError as exc:
        profile, source = None, str(exc)
    if profile is None:
        return RecommendationResult(
            RecommendationStatus(
                applied=False, feasible=True, reasons=[_cut(source)], observed_generation=generation
            ),
            {},
        )
    quant = None if spec.engine.quantization == "none" else spec.engine.quantization
    targets = spec.autoscaling.targets
    base = RecommendInput(
        model=profile,
        gpu=gpu,
        gpus_per_node=spec.resources.gpus_per_node,
        dtype=spec.engine.dtype,
        quantization=quant,
        kv_cache_dtype=spec.engine.kv_cache_dtype,
        input_tokens=spec.recommendation.expected_input_tokens,
        output_tokens=spec.recommendation.expected_output_tokens,
        slo_ttft_seconds=targets.ttft_p95_seconds,
        slo_tpot_seconds=targets.tpot_p95_seconds,
        measured_kv_tokens=measured_kv_tokens,
    )
    explicit = _explicit(spec)
    overrides: dict[str, Any] = {
        s.recommend_input: explicit[s.field] for s in SETTINGS if s.field in explicit
    }
    fixed = dataclasses.replace(base, **overrides)
    try:
        rec = _recommend_cached(fixed)
        free = _recommend_cached(base) if explicit else rec
    except (ValueError, ZeroDivisionError) as exc:
        return RecommendationResult(
            RecommendationStatus(
                applied=False,
                feasible=False,
                reasons=[_cut(f"recommender: {exc}")],
                observed_generation=generation,
            ),
            {},
        )
    reasons = [_cut(f"model: {source}"), *_quantization_conflict(spec, profile)]
    status = _status_of(spec, rec, reasons, _differences(explicit, _values_of(free)), generation)
    values = _values_of(rec)
    return RecommendationResult(status, {k: v for k, v in values.items() if k not in explicit})


def _differences(explicit: dict[str, int | float], free_values: dict[str, int | float]) -> list[str]:
    """Where an explicit setting differs from what Tidal would choose on its own."""
    return [
        _cut(
            f"spec.engine.{s.spec_name}={explicit[s.field]:g} is explicit and wins; Tidal would choose "
            f"{free_values[s.field]:g}"
        )
        for s in SETTINGS
        if s.field in explicit and not math.isclose(float(explicit[s.field]), float(free_values[s.field]))
    ]


def _status_of(
    spec: LLMDeploymentSpec,
    rec: Recommendation,
    reasons: list[str],
    differences: list[str],
    generation: int | None,
) -> RecommendationStatus:
    """``status.recommendation`` for ``rec``: its values, ``reasons`` then the recommender's own, the
    explicit settings that differ, the memory arithmetic and the predicted performance."""
    values = _values_of(rec)
    return RecommendationStatus(
        values=RecommendedValues(**{k: v for k, v in values.items()}),  # type: ignore[arg-type]
        applied=spec.recommendation.mode == "Apply" and rec.feasible,
        feasible=rec.feasible,
        reasons=[*reasons, *(_cut(r) for r in rec.reasons)][:_MAX_REASONS],
        differences=differences[:16],
        arithmetic={
            "weightsGiBPerGpu": round(rec.weights_gib_per_gpu, 3),
            "kvCacheGiBPerGpu": round(rec.kv_cache_gib_per_gpu, 3),
            "kvCacheTokens": float(rec.kv_cache_tokens),
            "kvBytesPerToken": float(rec.kv_bytes_per_token),
        },
        predicted=PredictedPerformance(
            ttft_seconds=round(rec.predicted.ttft_seconds, 6),
            tpot_seconds=round(rec.predicted.tpot_seconds, 6),
            output_tokens_per_second=round(rec.predicted.output_tokens_per_second, 2),
        ),
        observed_generation=generation,
    )


# ---------------------------------------------------------------------------------------- effective engine


def tuned_overrides(status: LLMDeploymentStatus | None) -> dict[str, int | float]:
    """The tuned overrides in ``status.engineTuning`` by engine field name (empty when there are none)."""
    tuning = status.engine_tuning if status is not None else None
    if tuning is None:
        return {}
    return {k: v for k, v in tuning.overrides.model_dump(by_alias=False).items() if v is not None}


def resolve_engine(
    spec: LLMDeploymentSpec,
    recommendation: RecommendationResult | None,
    overrides: dict[str, int | float] | None = None,
) -> EffectiveEngine:
    """The settings the workers run with: explicit values; in ``Apply`` mode a tuned override (``overrides``,
    by engine field name, see :func:`tuned_overrides`), else the recommended value of a feasible
    recommendation, for each ``"auto"`` setting; otherwise vLLM's default (TP = PP = 1)."""
    eng = spec.engine
    apply_mode = spec.recommendation.mode == "Apply"
    tuned_values = overrides if apply_mode and overrides else {}
    use = (
        recommendation.values
        if recommendation is not None
        and spec.recommendation.mode == "Apply"
        and recommendation.status.feasible
        else {}
    )
    chosen: dict[str, Any] = {}
    applied: list[str] = []
    tuned: list[str] = []
    for setting in SETTINGS:
        field_name, raw = setting.field, getattr(eng, setting.field)
        if raw != AUTO:
            chosen[field_name] = setting.parse(raw)
        elif field_name in tuned_values:
            chosen[field_name] = setting.parse(tuned_values[field_name])
            tuned.append(field_name)
        elif field_name in use:
            chosen[field_name] = use[field_name]
            applied.append(field_name)
        else:
            chosen[field_name] = setting.default
    extra = list(eng.extra_args)
    if eng.speculative_decoding is not None:
        sd = eng.speculative_decoding
        cfg: dict[str, Any] = {"method": sd.method, "num_speculative_tokens": sd.num_speculative_tokens}
        if sd.draft_model is not None:
            # vLLM takes a Hub repository id or a local path, not Tidal's URI form.
            scheme, _, rest = sd.draft_model.partition("://")
            cfg["model"] = rest.split("@", 1)[0] if scheme == "hf" else sd.draft_model
        extra = ["--speculative-config", json.dumps(cfg, sort_keys=True, separators=(",", ":")), *extra]
    return EffectiveEngine(
        **chosen,  # one value per registry setting
        dtype=None if eng.dtype == "auto" else eng.dtype,
        quantization=None if eng.quantization == "none" else eng.quantization,
        kv_cache_dtype=None if eng.kv_cache_dtype == "auto" else eng.kv_cache_dtype,
        enable_prefix_caching=eng.enable_prefix_caching,
        extra_args=tuple(extra),
        applied=tuple(applied),
        tuned=tuple(tuned),
    )
