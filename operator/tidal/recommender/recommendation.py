"""The recommender's typed inputs and outputs (:class:`RecommendInput`, :class:`Recommendation`) and the
defaults they fall back to (vLLM's limits per GPU class, the MLPerf latency targets).

Its own module because every step of the recommendation (:mod:`.parallelism`, :mod:`.batching`,
:mod:`.recommend`) and every caller (the CLI, the pod builders, the simulator) reads these types; keeping them
apart from the search keeps each step importable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidal.recommender.gpus import GPUSpec
from tidal.recommender.memory import DEFAULT_BLOCK_SIZE
from tidal.recommender.models import ModelProfile

DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
"""vLLM's default. Not raised on large GPUs: the 10% left over covers CUDA-graph pools, NCCL buffers and
allocator fragmentation that vLLM's profiler does not see, and a start-up OOM costs more than 5% of KV."""
LEN_HEADROOM = 2
"""One maximum-length sequence may use at most 1/LEN_HEADROOM of the KV cache."""
MAX_SEQS_CAP = 1024
"""Never recommend more concurrent sequences than vLLM's largest default."""
MAX_PP = 16
"""Largest pipeline-parallel size tried (nodes)."""
DEFAULT_SLO_TTFT_SECONDS = 2.0
"""TTFT target when none is given (MLPerf Inference server scenario, Llama-3.1-8B: p99 TTFT <= 2 s)."""
DEFAULT_SLO_TPOT_SECONDS = 0.1
"""TPOT target when none is given (MLPerf Inference server scenario, Llama-3.1-8B: p99 TPOT <= 100 ms)."""


def vllm_default_limits(gpu: GPUSpec) -> tuple[int, int]:
    """vLLM's API-server defaults ``(max_num_batched_tokens, max_num_seqs)`` for the GPU's class."""
    return (8192, 1024) if gpu.is_large else (2048, 256)


@dataclass(frozen=True)
class RecommendInput:
    """What to recommend for; ``None`` fields are chosen by the recommender, the others are fixed."""

    model: ModelProfile
    gpu: GPUSpec
    gpus_per_node: int = 8
    tp: int | None = None
    pp: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    input_tokens: int = 1024
    """Expected prompt length."""
    output_tokens: int = 256
    """Expected generated length."""
    slo_ttft_seconds: float | None = None
    """TTFT target; None: DEFAULT_SLO_TTFT_SECONDS."""
    slo_tpot_seconds: float | None = None
    """TPOT target; None: DEFAULT_SLO_TPOT_SECONDS."""
    min_concurrency: int = 16
    """Sequences of the expected length the KV cache must hold for a parallelism to count as fitting."""
    block_size: int = DEFAULT_BLOCK_SIZE
    enforce_eager: bool = False
    long_input_tokens: int | None = None
    """The long prompts of the expected mix (e.g. p90); None: 2 x ``input_tokens`` (chunk sizing)."""
    vllm_release: str | None = None
    """vLLM release whose overheads to use (None: the calibrated default, v0.19)."""
    measured_kv_tokens: int | None = None
    """KV capacity the running engine reported (the online check, :mod:`tidal.recommender.kvcheck`): when set
    it replaces the memory plan's prediction for ``max_model_len`` and ``max_num_seqs`` (parallelism and the
    memory fraction are still chosen from the plan, so the engine it was measured on keeps its shape)."""


@dataclass(frozen=True)
class Predicted:
    """Predicted latency at the recommended concurrency (the batch full, steady state)."""

    ttft_seconds: float
    tpot_seconds: float
    output_tokens_per_second: float


@dataclass(frozen=True)
class Recommendation:
    """Engine settings, the arithmetic behind them and whether vLLM would start with them."""

    model: str
    gpu: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    dtype: str
    kv_cache_dtype: str
    quantization: str | None
    block_size: int
    weights_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int
    kv_bytes_per_token: int
    """Per GPU, after the TP split."""
    feasible: bool
    slo_met: bool
    """The predicted latency at ``max_num_seqs`` meets the TTFT/TPOT targets (given or default)."""
    predicted: Predicted
    slo_ttft_seconds: float = DEFAULT_SLO_TTFT_SECONDS
    slo_tpot_seconds: float = DEFAULT_SLO_TPOT_SECONDS
    reasons: tuple[str, ...] = ()
    arithmetic: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    """Which settings were given rather than recommended."""

    @property
    def num_gpus(self) -> int:
        """GPUs one replica uses."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the ``tidal recommend --json`` output)."""
        return {
            "model": self.model,
            "gpu": self.gpu,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "num_gpus": self.num_gpus,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "dtype": self.dtype,
            "kv_cache_dtype": self.kv_cache_dtype,
            "quantization": self.quantization,
            "block_size": self.block_size,
            "weights_gib_per_gpu": round(self.weights_gib_per_gpu, 3),
            "kv_cache_gib_per_gpu": round(self.kv_cache_gib_per_gpu, 3),
            "kv_cache_tokens": self.kv_cache_tokens,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "feasible": self.feasible,
            "slo_met": self.slo_met,
            "slo": {"ttft_seconds": self.slo_ttft_seconds, "tpot_seconds": self.slo_tpot_seconds},
            "reasons": list(self.reasons),
            "arithmetic": list(self.arithmetic),
            "fixed": list(self.fixed),
            "predicted": {
                "ttft_seconds": round(self.predicted.ttft_seconds, 6),
                "tpot_seconds": round(self.predicted.tpot_seconds, 6),
                "output_tokens_per_second": round(self.predicted.output_tokens_per_second, 2),
            },
        }

    def engine_args(self) -> list[str]:
        """The vLLM command-line flags that apply this recommendation."""
        args = [
            f"--tensor-parallel-size={self.tensor_parallel_size}",
            f"--pipeline-parallel-size={self.pipeline_parallel_size}",
            f"--gpu-memory-utilization={self.gpu_memory_utilization:g}",
            f"--max-model-len={self.max_model_len}",
            f"--max-num-seqs={self.max_num_seqs}",
            f"--max-num-batched-tokens={self.max_num_batched_tokens}",
        ]
        if self.kv_cache_dtype.startswith("fp8"):
            args.append(f"--kv-cache-dtype={self.kv_cache_dtype}")
        if self.quantization:
            args.append(f"--quantization={self.quantization}")
        return args


def expected_len(inp: RecommendInput) -> int:
    """Tokens one expected request occupies at its end (prompt + output)."""
    return max(1, inp.input_tokens) + max(1, inp.output_tokens)


def slo_targets(inp: RecommendInput) -> tuple[float, float]:
    """(TTFT, TPOT) targets: the given ones, else the defaults."""
    ttft = inp.slo_ttft_seconds if inp.slo_ttft_seconds is not None else DEFAULT_SLO_TTFT_SECONDS
    tpot = inp.slo_tpot_seconds if inp.slo_tpot_seconds is not None else DEFAULT_SLO_TPOT_SECONDS
    return ttft, tpot
