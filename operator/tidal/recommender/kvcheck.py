"""The online check of the KV-capacity prediction: what the running engines report against what the memory
model predicted for the same settings, and which capacity to use from then on.

vLLM reports its KV capacity once at start-up, as the labels ``num_gpu_blocks`` and ``block_size`` of the
info gauge ``vllm:cache_config_info`` (on the CPU build ``num_gpu_blocks`` counts the CPU KV cache's blocks:
the same scheduler field). ``num_gpu_blocks x block_size`` is the token capacity of one engine, the number the
memory model's ``kv_tokens`` predicts (per GPU after the TP split, the smallest pipeline stage deciding).

Its own module because the comparison is pure arithmetic over typed reports (the Prometheus query is the
shell's, the status and Event the planner's), and the rule that decides when a measurement replaces the
prediction (:func:`capacity_in_use`) must be one place: it decides whether a new measurement rolls the
replicas (``Apply`` mode re-sizes ``max_model_len`` and ``max_num_seqs`` from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tidal.recommender.gpus import GPUSpec
from tidal.recommender.memory import kv_tokens_for_kv_memory
from tidal.recommender.memplan import memory_plan
from tidal.recommender.models import ModelProfile
from tidal.recommender.recommendation import DEFAULT_GPU_MEMORY_UTILIZATION, vllm_default_limits

MISMATCH_FRACTION: Final = 0.05
"""A measurement more than 5 % away from the prediction is a mismatch (issue 15): it is reported (a Warning
Event) and used instead of the prediction. Within 5 % the prediction stands (re-sizing would roll the replicas
for a difference smaller than the batch-size steps)."""


@dataclass(frozen=True)
class EngineKV:
    """One engine's reported KV capacity (``vllm:cache_config_info``)."""

    pod: str
    num_blocks: int
    block_size: int

    @property
    def tokens(self) -> int:
        """Token capacity: blocks x tokens per block."""
        return self.num_blocks * self.block_size


@dataclass(frozen=True)
class EngineSettings:
    """The settings of the running engine that decide its KV capacity (``None``: vLLM's default)."""

    tp: int = 1
    pp: int = 1
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    enforce_eager: bool = False
    kv_cache_memory_bytes: int | None = None
    """``--kv-cache-memory-bytes``: the KV space is given, not derived from the memory fraction."""
    vllm_release: str | None = None

    @property
    def basis(self) -> str:
        """What a measurement depends on, as text: a measurement applies only to an engine with the same
        basis (``status.kvCapacity.basis``)."""
        util = self.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
        budget = f" kvCacheMemoryBytes={self.kv_cache_memory_bytes}" if self.kv_cache_memory_bytes else ""
        return f"TP={self.tp} PP={self.pp} gpuMemoryUtilization={util:g}{budget}"


def predicted_tokens(profile: ModelProfile, gpu: GPUSpec, engine: EngineSettings, block_size: int) -> int:
    """The memory model's KV tokens for ``engine`` (vLLM's defaults for unset limits), in blocks of
    ``block_size`` (the engine's own, as reported: the block size is a setting, not a prediction)."""
    if engine.kv_cache_memory_bytes:
        return kv_tokens_for_kv_memory(
            profile, engine.kv_cache_memory_bytes, engine.tp, engine.kv_cache_dtype, block_size,
            pp=engine.pp, dtype=engine.dtype,
        )  # fmt: skip
    mbt, seqs = vllm_default_limits(gpu)
    plan = memory_plan(
        profile,
        gpu.memory_bytes,
        tp=engine.tp,
        pp=engine.pp,
        gpu_memory_utilization=engine.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION,
        dtype=engine.dtype,
        quantization=engine.quantization,
        kv_cache_dtype=engine.kv_cache_dtype,
        max_num_batched_tokens=engine.max_num_batched_tokens or mbt,
        max_num_seqs=engine.max_num_seqs or seqs,
        block_size=block_size,
        enforce_eager=engine.enforce_eager,
        vllm_release=engine.vllm_release,
    )
    return max(0, plan.kv_tokens)


@dataclass(frozen=True)
class KVCheck:
    """The prediction against the smallest reported capacity (the replica that holds the least decides)."""

    predicted_tokens: int
    smallest: EngineKV
    engines: int

    @property
    def measured_tokens(self) -> int:
        """The smallest engine's token capacity."""
        return self.smallest.tokens

    @property
    def relative_error(self) -> float:
        """(predicted - measured) / measured: +0.10 means the model promised 10 % more than the engine has."""
        return (self.predicted_tokens - self.measured_tokens) / max(self.measured_tokens, 1)

    @property
    def mismatch(self) -> bool:
        """More than :data:`MISMATCH_FRACTION` apart."""
        return abs(self.relative_error) > MISMATCH_FRACTION

    def message(self) -> str:
        """One line with the numbers (the Event's and the status's text)."""
        s = self.smallest
        verdict = (
            f"differ by {self.relative_error:+.1%} (more than {MISMATCH_FRACTION:.0%}): the measured "
            "capacity is used from now on"
            if self.mismatch
            else f"agree within {MISMATCH_FRACTION:.0%} ({self.relative_error:+.1%})"
        )
        return (
            f"KV capacity predicted {self.predicted_tokens:,} tokens, measured {self.measured_tokens:,} "
            f"({s.num_blocks:,} blocks x {s.block_size} tokens, pod {s.pod}, smallest of {self.engines} "
            f"engine(s)): {verdict}"
        )


def compare(predicted: int, reports: Sequence[EngineKV]) -> KVCheck | None:
    """The check of ``predicted`` against ``reports`` (``None`` when no engine reported a capacity)."""
    valid = [r for r in reports if r.num_blocks > 0 and r.block_size > 0]
    if not valid:
        return None
    smallest = min(valid, key=lambda r: (r.tokens, r.pod))
    return KVCheck(predicted, smallest, len(valid))


def capacity_in_use(check: KVCheck, previous: int | None) -> int | None:
    """The KV capacity to size with from now on: ``None`` (the prediction stands) while the measurement
    agrees within :data:`MISMATCH_FRACTION`; else the measured value, except that a capacity already in use
    (``previous``, same basis) is kept while the new measurement is within the fraction of it: re-sizing with
    the measurement changes ``max_num_seqs``, which moves the engine's own measurement a little, and that must
    not roll the replicas again."""
    if previous is not None and abs(check.measured_tokens - previous) <= MISMATCH_FRACTION * previous:
        return previous
    return check.measured_tokens if check.mismatch else None


__all__ = [
    "MISMATCH_FRACTION",
    "EngineKV",
    "EngineSettings",
    "KVCheck",
    "capacity_in_use",
    "compare",
    "predicted_tokens",
]
