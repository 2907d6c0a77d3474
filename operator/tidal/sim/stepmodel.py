"""Step-time models for the simulator: the protocol it needs, and how it gets the recommender's.

The simulator only needs two numbers per engine step: how long the step takes and the physical floor
it can never beat (memory bandwidth for weights + KV read, compute for the FLOPs). Anything with
those two methods works (tests use tiny hand-made models). :func:`load_step_model` returns the
recommender's :class:`tidal.recommender.perf.PerformanceModel` when that module is available, and
otherwise a linear model fitted to the H100 / Llama-3.1-8B measurements in
``tests/data/h100_llama31_8b_steps.json`` (bench/gpu_step_calibration.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class StepTimeModel(Protocol):
    """Seconds for one engine step with ``prefill_tokens`` prompt tokens, ``decode_seqs`` sequences
    decoding one token each, and ``kv_tokens`` tokens of context read from the KV cache."""

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float: ...

    def physical_floor_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float: ...


@dataclass(frozen=True)
class EngineLimits:
    """The engine settings the simulated scheduler obeys (from the recommender or flags)."""

    kv_cache_tokens: int = 400_000
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    block_size: int = 16


def check_limits(limits: EngineLimits) -> None:
    """Refuse engine limits vLLM would refuse or that leave nothing to simulate (``ValueError``)."""
    if limits.max_num_batched_tokens < 1 or limits.max_num_seqs < 1 or limits.block_size < 1:
        raise ValueError(
            "max_num_batched_tokens, max_num_seqs and block_size must be >= 1, got "
            f"{limits.max_num_batched_tokens}, {limits.max_num_seqs}, {limits.block_size}"
        )
    if limits.max_num_batched_tokens < limits.max_num_seqs:
        raise ValueError(
            f"max_num_batched_tokens {limits.max_num_batched_tokens:,} < max_num_seqs "
            f"{limits.max_num_seqs:,}: vLLM refuses this (each decoding sequence needs a token of the budget)"
        )
    if limits.kv_cache_tokens <= limits.block_size:
        raise ValueError(f"kv_cache_tokens must exceed one block, got {limits.kv_cache_tokens}")


@dataclass(frozen=True)
class LinearStepModel:
    """``step = fixed + per_seq·B + kv_tokens·kv_bytes/eff_bw + prefill·per_prefill_token``
    (+ ``prefill_step`` when the step prefills), never below
    ``max((weights + kv bytes)/peak_bw, FLOPs/peak_flops)``. Defaults: Llama-3.1-8B bf16 on one H100
    (fit to the measured steps: B=1 6.6 ms, B=128 at 2k context 19 ms, 8k-token prefill 242 ms)."""

    fixed_s: float = 6.3e-3
    per_seq_s: float = 7e-6
    per_prefill_token_s: float = 29e-6
    kv_bytes_per_token: float = 131072.0
    effective_bw: float = 2.5e12
    weight_bytes: float = 15.01e9
    params: float = 7.5e9
    peak_bw: float = 3.35e12
    peak_flops: float = 989e12
    prefill_step_s: float = 0.0
    """Extra fixed time of a step that carries prompt tokens (a second attention path, sampling of the
    first token); 0 for the GPU fit, measured for calibrated CPU models (bench/sim_validation.py)."""

    def physical_floor_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        mem = (self.weight_bytes + kv_tokens * self.kv_bytes_per_token) / self.peak_bw
        flops = 2.0 * self.params * (prefill_tokens + decode_seqs) / self.peak_flops
        return max(mem, flops)

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        t = (
            self.fixed_s
            + self.per_seq_s * decode_seqs
            + kv_tokens * self.kv_bytes_per_token / self.effective_bw
            + prefill_tokens * self.per_prefill_token_s
            + (self.prefill_step_s if prefill_tokens else 0.0)
        )
        return max(t, self.physical_floor_seconds(prefill_tokens, decode_seqs, kv_tokens))


@dataclass(frozen=True)
class ScaledStepModel:
    """The engine that is ``1 + capacity_error`` times as fast as ``nominal`` (every step time, the
    physical floor included, divided by that factor): the simulated engine when the policies' capacity
    model is wrong by ``capacity_error`` (+0.3: the engine serves 30 % more than the model says)."""

    nominal: StepTimeModel
    capacity_error: float

    def __post_init__(self) -> None:
        if self.capacity_error <= -1.0:
            raise ValueError(f"capacity_error must be > -1, got {self.capacity_error}")

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        return self.nominal.step_seconds(prefill_tokens, decode_seqs, kv_tokens) / (1 + self.capacity_error)

    def physical_floor_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        return self.nominal.physical_floor_seconds(prefill_tokens, decode_seqs, kv_tokens) / (
            1 + self.capacity_error
        )


def engine_model(nominal: StepTimeModel, capacity_error: float) -> StepTimeModel:
    """The step model the simulated engine runs: ``nominal`` itself when the error is 0."""
    return nominal if capacity_error == 0 else ScaledStepModel(nominal, capacity_error)


@dataclass
class LoadedModel:
    """A step model together with the engine limits to simulate and where they came from."""

    model: StepTimeModel
    limits: EngineLimits
    source: str


def load_step_model(model: str, gpu: str, tp: int = 1, **recommend_input: Any) -> LoadedModel:
    """The recommender's performance model and recommended engine limits, or the built-in fallback.

    ``recommend_input``: further :class:`tidal.recommender.recommend.RecommendInput` fields the deployment
    gives (``input_tokens``, ``output_tokens``, ``slo_ttft_seconds``, ``slo_tpot_seconds``,
    ``max_num_batched_tokens``, ...), so the limits are the ones its recommendation would apply; a given
    ``max_num_batched_tokens`` (or ``max_num_seqs``) is kept as given, also without the recommender; None
    values are left to the recommender."""
    recommend_input = {k: v for k, v in recommend_input.items() if v is not None}
    try:
        perf: Any = importlib.import_module("tidal.recommender.perf")
        catalog: Any = importlib.import_module("tidal.recommender.catalog")
        gpus: Any = importlib.import_module("tidal.recommender.gpus")
    except ImportError:
        return LoadedModel(
            LinearStepModel(),
            _given(EngineLimits(), recommend_input),
            "builtin H100/Llama-3.1-8B fit (recommender absent)",
        )
    profile = catalog.get_model(model)
    g = gpus.get_gpu(gpu)
    pm = perf.performance_model(profile, g, tp=tp)
    limits = EngineLimits()
    note = ""
    try:
        rec_mod: Any = importlib.import_module("tidal.recommender.recommend")
        rec = rec_mod.recommend(profile, g, tp=tp, **recommend_input)
        limits = EngineLimits(
            kv_cache_tokens=int(_get(rec, "kv_cache_tokens", limits.kv_cache_tokens)),
            max_num_seqs=int(_get(rec, "max_num_seqs", limits.max_num_seqs)),
            max_num_batched_tokens=int(_get(rec, "max_num_batched_tokens", limits.max_num_batched_tokens)),
        )
    except Exception as exc:  # the recommender is optional for simulation; fall back to vLLM defaults
        note = f"; no recommendation ({exc}): vLLM's default limits"
    return LoadedModel(
        pm,
        _given(limits, recommend_input),
        f"recommender performance model ({model} on {gpu}, tp={tp}){note}",
    )


def _given(limits: EngineLimits, fields: dict[str, Any]) -> EngineLimits:
    """``limits`` with the engine limits ``fields`` fixes (``max_num_seqs``, ``max_num_batched_tokens``)."""
    fixed = {
        k: int(fields[k]) for k in ("max_num_seqs", "max_num_batched_tokens") if fields.get(k) is not None
    }
    return replace(limits, **fixed)


def _get(obj: Any, name: str, default: Any) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    for holder in (obj, getattr(obj, "engine", None), getattr(obj, "config", None)):
        if holder is not None and getattr(holder, name, None) is not None:
            return getattr(holder, name)
    return default
