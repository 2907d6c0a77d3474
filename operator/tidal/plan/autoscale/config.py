"""Spec -> :class:`~tidal.scaling.ScalingConfig`: the autoscaler's configuration from ``spec.autoscaling`` and
the replica bounds, and one replica's modelled capacity for the ``load`` signal.

Its own module because the configuration is the one place the CRD's autoscaling fields meet the pure
algorithm's names, and the capacity model (the recommender's performance model and the simulator's
arithmetic) is cached here across passes: the rest of the pass never needs to know either.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, NamedTuple

from tidal.api import LLMDeployment
from tidal.builders.engine import EffectiveEngine, RecommendationResult, model_profile
from tidal.builders.gpus import gpu_spec
from tidal.recommender.gpus import UnknownGPUError
from tidal.recommender.perf import performance_model
from tidal.recommender.recommendation import vllm_default_limits
from tidal.scaling import ScalingConfig
from tidal.sim.capacity import TargetUnreachable, modelled_capacity
from tidal.sim.stepmodel import EngineLimits

MIN_TARGET: Final = 1e-9
"""The smallest target the algorithm is given: a signal over a denormal target (``1e-308``) is an infinite
ratio, which no replica count expresses; over ``1e-9`` it stays finite (and asks for ``maxReplicas``)."""


def scaling_config(
    deployment: LLMDeployment,
    max_num_seqs: int | None = None,
    gpu_memory_utilization: float | None = None,
    capacity: ReplicaCapacity | None = None,
    *,
    max_num_batched_tokens: int | None = None,
    recommended_max_num_batched_tokens: int | None = None,
) -> ScalingConfig:
    """The algorithm's configuration from ``spec.autoscaling`` and the replica bounds. ``max_num_seqs``,
    ``gpu_memory_utilization`` and ``max_num_batched_tokens`` are the engine's effective values (explicit,
    tuned or recommended), for engine advice (an unset chunk budget is vLLM's default for the GPU class,
    unknown for an unknown GPU); ``recommended_max_num_batched_tokens`` is the recommendation's chunk budget
    (the most chunk advice raises it to); ``capacity`` (:func:`replica_capacity`) turns the ``load`` signal
    on. Targets below :data:`MIN_TARGET` (the API accepts any positive number) are read as
    :data:`MIN_TARGET`."""
    spec = deployment.spec
    engine_mbt = spec.engine.max_num_batched_tokens
    mbt = engine_mbt if isinstance(engine_mbt, int) else max_num_batched_tokens
    if mbt is None:
        try:
            mbt, _ = vllm_default_limits(gpu_spec(spec.resources.gpu_type))
        except UnknownGPUError:
            mbt = None
    a = spec.autoscaling
    t = a.targets
    engine_seqs = spec.engine.max_num_seqs
    return ScalingConfig(
        ttft_p95_s=max(MIN_TARGET, t.ttft_p95_seconds),
        tpot_p95_s=max(MIN_TARGET, t.tpot_p95_seconds),
        queue_per_replica=max(MIN_TARGET, t.queue_length_per_replica),
        kv_cache_usage=max(MIN_TARGET, t.kv_cache_usage),
        slo_attainment=t.slo_attainment,
        headroom_prior=a.headroom_prior,
        headroom_max=a.headroom_max,
        tolerance=a.tolerance,
        panic_threshold=a.panic_threshold,
        panic_window_s=a.panic_window_seconds,
        scale_up_stabilization_s=a.scale_up_stabilization_seconds,
        scale_down_stabilization_s=a.scale_down_stabilization_seconds,
        scale_down_consecutive=a.scale_down_consecutive,
        max_scale_up_step=a.max_scale_up_step,
        max_scale_down_step=a.max_scale_down_step,
        metrics_stale_after_s=a.metrics_stale_after_seconds,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        cold_start_s=a.cold_start_seconds,
        prefill_tokens_per_replica_s=None if capacity is None else capacity.prefill_tokens_per_s,
        decode_tokens_per_replica_s=None if capacity is None else capacity.decode_tokens_per_s,
        decode_step_s=None if capacity is None else capacity.decode_step_s,
        decode_step_per_seq_s=None if capacity is None else capacity.decode_step_per_seq_s,
        max_num_seqs=engine_seqs if isinstance(engine_seqs, int) else max_num_seqs,
        gpu_memory_utilization=spec.engine.gpu_memory_fraction or gpu_memory_utilization,
        replica_warmup_s=a.replica_warmup_seconds,
        max_num_batched_tokens=mbt,
        recommended_max_num_batched_tokens=recommended_max_num_batched_tokens,
    )


@dataclass(frozen=True)
class ReplicaCapacity:
    """Prompt and generated tokens per second one replica sustains within the TPOT target (modelled)."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    source: str
    decode_step_s: float | None = None
    """Modelled decode step time at no batch, seconds (:attr:`tidal.sim.capacity.Capacity.decode_step_s`)."""
    decode_step_per_seq_s: float | None = None
    """Modelled decode step time per running sequence, seconds."""


class LoadModel(NamedTuple):
    """One replica's modelled capacity (``None``: the ``load`` signal stays off), what ``text`` says about
    it (``status.autoscaler.loadCapacity``), and why the TPOT target cannot be met, when the model says so
    (a ``TargetUnreachable`` condition)."""

    capacity: ReplicaCapacity | None
    text: str
    unreachable: str | None = None


def replica_capacity(
    deployment: LLMDeployment, engine: EffectiveEngine, recommendation: RecommendationResult | None
) -> LoadModel:
    """One replica's modelled capacity for the ``load`` signal, from the recommender's performance model
    (:func:`tidal.recommender.perf.performance_model`) of the deployment's model, GPU and TP x PP, at the
    expected prompt and output lengths and the TPOT target (:func:`tidal.sim.capacity.modelled_capacity`,
    the same arithmetic the simulator's Tidal policy uses), with the engine's effective limits. ``None``
    (the ``load`` signal stays off) with the reason when the model or GPU is unknown, or when the engine
    does not run with the recommendation's parallelism (its KV capacity would not apply), or when the TPOT
    target is out of reach (``unreachable`` says why, naming the field)."""
    spec = deployment.spec
    rec = recommendation.status if recommendation is not None else None
    if rec is None or not rec.feasible or rec.values.tensor_parallel_size is None:
        why = "; ".join(rec.reasons[:1]) if rec is not None and rec.reasons else "no recommendation"
        return LoadModel(None, f"load signal off: {why}")
    if (engine.tensor_parallel_size, engine.pipeline_parallel_size) != (
        rec.values.tensor_parallel_size,
        rec.values.pipeline_parallel_size,
    ):
        return LoadModel(
            None,
            f"load signal off: the engine runs TP={engine.tensor_parallel_size} "
            f"PP={engine.pipeline_parallel_size}, "
            f"the recommendation is sized for TP={rec.values.tensor_parallel_size} "
            f"PP={rec.values.pipeline_parallel_size}",
        )
    profile, _ = model_profile(spec.model)
    try:
        gpu = gpu_spec(spec.resources.gpu_type)
    except UnknownGPUError as exc:
        return LoadModel(None, f"load signal off: {exc}")
    if profile is None:
        return LoadModel(None, "load signal off: the model is not known")
    return _capacity(
        profile,
        gpu,
        engine.tensor_parallel_size,
        engine.pipeline_parallel_size,
        spec.engine.dtype,
        spec.engine.kv_cache_dtype,
        engine.quantization,
        EngineLimits(
            kv_cache_tokens=int(rec.arithmetic.get("kvCacheTokens", 0)),
            max_num_seqs=engine.max_num_seqs or rec.values.max_num_seqs or 256,
            max_num_batched_tokens=engine.max_num_batched_tokens or rec.values.max_num_batched_tokens or 2048,
        ),
        spec.recommendation.expected_input_tokens,
        spec.recommendation.expected_output_tokens,
        spec.autoscaling.targets.tpot_p95_seconds,
    )


@lru_cache(maxsize=256)
def _capacity(
    profile: Any,
    gpu: Any,
    tp: int,
    pp: int,
    dtype: str,
    kv_dtype: str,
    quantization: str | None,
    limits: EngineLimits,
    prompt: int,
    output: int,
    tpot_s: float,
) -> LoadModel:
    if limits.kv_cache_tokens < prompt + output:
        return LoadModel(
            None,
            f"load signal off: a KV cache of {limits.kv_cache_tokens} tokens holds no expected request",
        )
    pm = performance_model(profile, gpu, tp, pp, dtype, kv_dtype, quantization)
    try:
        cap = modelled_capacity(pm, limits, float(prompt), float(output), tpot_s)
    except TargetUnreachable as exc:
        why = f"spec.autoscaling.targets.tpotP95Seconds={tpot_s:g} cannot be met: {exc} ({pm.source})"
        return LoadModel(None, f"load signal off: {why}", why)
    source = (
        f"modelled replica capacity {cap.prefill_tokens_per_s:.0f} prompt + {cap.decode_tokens_per_s:.0f} "
        f"generated tokens/s ({cap.requests_per_s:.2f} requests/s of {prompt}+{output} tokens at TPOT "
        f"{tpot_s:g}s, batch {cap.batch}; {pm.source})"
    )
    replica = ReplicaCapacity(
        cap.prefill_tokens_per_s,
        cap.decode_tokens_per_s,
        source,
        cap.decode_step_s,
        cap.decode_step_per_seq_s,
    )
    return LoadModel(replica, source)


__all__ = ["LoadModel", "ReplicaCapacity", "replica_capacity", "scaling_config"]
