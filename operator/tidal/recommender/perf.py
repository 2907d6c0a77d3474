"""Latency model of one vLLM engine step, with the physical floor no step can beat.

One continuous-batching step processes ``prefill_tokens`` prompt tokens (chunked prefill) and
``decode_seqs`` sequences that each emit one token, reading ``kv_tokens`` tokens of cached context. On the
GPU of one TP rank (pipeline stages run one after the other, so their times add up):

    step = alpha                                 fixed per-step cost (scheduler, launches, sampling)
         + max(W / (bw*eta_w), prefill * c_p)    read the weights once; large prefills are compute-bound
         + kv_tokens * kv_bytes / (bw*eta_kv)    read the KV cache
         + decode_seqs * beta                    per-sequence decode cost (GEMM rows, sampler)
         + tp_comm                               two all-reduces per layer when TP > 1
    c_p  = 2 * active_params_per_gpu / (peak_flops * MFU_prefill)
    beta = kappa * 2 * active_params_per_gpu / peak_flops

    floor = max((W + kv_tokens * kv_bytes) / bw,  2 * active_params_per_gpu * (prefill + decode) / peak_flops)

and ``step_seconds`` never returns less than the floor. ``W`` for a MoE model counts only the experts the
step's tokens route to (expected distinct experts under uniform routing). eta_w, eta_kv, MFU_prefill, kappa
and alpha are fitted to vLLM on one H100 serving Llama-3.1-8B (``tests/data/h100_llama31_8b_steps.json``,
measured by ``bench/gpu_step_calibration.py``): decode steps within 5% from batch 1 to 256 at 512 and 2,048
tokens of context, prefill of 512-8,192 tokens within 7%.

:meth:`PerformanceModel.calibrated` builds a model from coefficients measured elsewhere (e.g. a tiny CPU
model: alpha, beta and seconds per prefill token), so the simulator can replay a real engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tidal.recommender.gpus import GPUSpec
from tidal.recommender.memory import (
    effective_quantization,
    kv_bytes_per_token,
    pp_partition,
    resolve_dtype,
    weight_bytes,
)
from tidal.recommender.models import ModelProfile, dtype_bytes

WEIGHT_BW_EFFICIENCY = 0.85
"""eta_w: fraction of peak bandwidth a step's weight read achieves (H100 fit: 15.0 GB in 5.3 ms of 6.6 ms)."""
KV_BW_EFFICIENCY = 0.92
"""eta_kv: fraction of peak bandwidth paged-attention KV reads achieve (H100 fit: 3.08 of 3.35 TB/s)."""
PREFILL_MFU = 0.55
"""Model FLOPs utilisation of large prefill chunks (H100 fit: 8,192 tokens of Llama-3.1-8B in 242 ms)."""
DECODE_COMPUTE_FACTOR = 0.76
"""kappa: per-decode-sequence cost as a fraction of its FLOPs at peak (H100 fit: 11.6 us per sequence)."""
STEP_OVERHEAD_S = 0.6e-3
"""Fixed part of alpha: scheduler and sampler work per step, independent of the model."""
PER_LAYER_OVERHEAD_S = 22e-6
"""Per-layer part of alpha: kernel launches, small ops (32 layers: alpha ~ 1.3 ms with CUDA graphs, H100)."""
PP_HOP_S = 50e-6
"""Sending one batch's hidden states from one pipeline stage to the next (network hop between nodes)."""
ALLREDUCE_LATENCY_S = 6e-6
"""Latency of one small all-reduce over NVLink (custom all-reduce); PCIe pays the same plus bandwidth."""


@dataclass(frozen=True)
class PerformanceModel:
    """Coefficients of the step-time model for one (model, GPU, TP, PP, dtype) — see the module docstring."""

    alpha_s: float
    """Fixed seconds per step."""
    beta_s: float
    """Seconds per decoding sequence."""
    prefill_s_per_token: float
    """c_p: compute seconds per prefill token."""
    dense_weight_bytes: float
    """Weight bytes every step reads on one GPU, summed over pipeline stages (all but routed experts and the
    input embedding table, of which a step reads only its tokens' rows)."""
    expert_bytes: float = 0.0
    """Bytes of one routed expert on one GPU (one layer)."""
    moe_layers: int = 0
    num_experts: int = 0
    experts_per_tok: int = 0
    kv_bytes_per_token: float = 0.0
    """KV bytes per context token on one GPU, summed over pipeline stages."""
    bandwidth_bytes_per_s: float = 0.0
    """Peak memory bandwidth (0: no physical floor, e.g. a calibrated CPU model without one)."""
    peak_flops: float = 0.0
    active_params_per_gpu: float = 0.0
    weight_bw_efficiency: float = WEIGHT_BW_EFFICIENCY
    kv_bw_efficiency: float = KV_BW_EFFICIENCY
    comm_bytes_per_token: float = 0.0
    """Bytes every TP rank all-reduces per token per step (2 x layers x hidden x act_bytes)."""
    comm_bytes_per_s: float = 0.0
    """Per-direction interconnect bandwidth x tp/(2(tp-1)) (ring all-reduce), 0 when TP = 1."""
    comm_fixed_s: float = 0.0
    """Fixed communication per step: TP all-reduce latency (2 x layers x latency) and PP stage hops."""
    kv_s_per_token: float = 0.0
    """Calibrated models only: measured seconds per context token read."""
    is_calibrated: bool = False
    """True: the step is ``alpha + beta*decode + c_p*prefill + kv_s*kv`` from measurements; weights and
    bandwidth only set the floor."""
    source: str = "roofline"
    """Where the coefficients came from (for display)."""

    @classmethod
    def calibrated(
        cls,
        alpha_s: float,
        beta_s: float,
        prefill_s_per_token: float,
        *,
        kv_s_per_token: float = 0.0,
        weight_bytes: float = 0.0,
        bandwidth_bytes_per_s: float = 0.0,
        peak_flops: float = 0.0,
        params: float = 0.0,
        source: str = "calibrated",
    ) -> PerformanceModel:
        """A model from measured coefficients: ``step = alpha + beta*decode + c_p*prefill + kv_s*kv_tokens``.

        The optional ``weight_bytes``/``bandwidth_bytes_per_s``/``peak_flops``/``params`` give it a physical
        floor (weights over bandwidth, FLOPs over peak); without them the floor is 0.
        """
        return cls(
            alpha_s=alpha_s,
            beta_s=beta_s,
            prefill_s_per_token=prefill_s_per_token,
            dense_weight_bytes=weight_bytes,
            bandwidth_bytes_per_s=bandwidth_bytes_per_s,
            peak_flops=peak_flops,
            active_params_per_gpu=params,
            kv_s_per_token=kv_s_per_token,
            is_calibrated=True,
            source=source,
        )

    # -- the model ---------------------------------------------------------------------------------------

    def weight_bytes_read(self, tokens: int) -> float:
        """Weight bytes a step with ``tokens`` tokens reads on one GPU (routed experts: only those used)."""
        w = self.dense_weight_bytes
        if self.num_experts and tokens > 0:
            k, e = self.experts_per_tok, self.num_experts
            touched = e * (1.0 - (1.0 - k / e) ** tokens)
            w += self.moe_layers * touched * self.expert_bytes
        return w

    def _kv_seconds(self, kv_tokens: int) -> float:
        if self.is_calibrated:
            return kv_tokens * self.kv_s_per_token
        if self.bandwidth_bytes_per_s <= 0:
            return 0.0
        return kv_tokens * self.kv_bytes_per_token / (self.bandwidth_bytes_per_s * self.kv_bw_efficiency)

    def physical_floor_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        """The time no step can beat: bytes it must read over peak bandwidth, FLOPs over peak compute."""
        tokens = max(0, prefill_tokens) + max(0, decode_seqs)
        mem = 0.0
        if self.bandwidth_bytes_per_s > 0:
            mem = (self.weight_bytes_read(tokens) + kv_tokens * self.kv_bytes_per_token) / (
                self.bandwidth_bytes_per_s
            )
        flops = 0.0
        if self.peak_flops > 0:
            flops = 2.0 * self.active_params_per_gpu * tokens / self.peak_flops
        return max(mem, flops)

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        """Predicted seconds of one engine step (never below :meth:`physical_floor_seconds`)."""
        prefill_tokens, decode_seqs, kv_tokens = (
            max(0, prefill_tokens),
            max(0, decode_seqs),
            max(0, kv_tokens),
        )
        tokens = prefill_tokens + decode_seqs
        weights = 0.0
        if self.bandwidth_bytes_per_s > 0 and not self.is_calibrated:
            weights = self.weight_bytes_read(tokens) / (
                self.bandwidth_bytes_per_s * self.weight_bw_efficiency
            )
        t = (
            self.alpha_s
            + max(weights, prefill_tokens * self.prefill_s_per_token)
            + self._kv_seconds(kv_tokens)
            + decode_seqs * self.beta_s
        )
        t += self.comm_fixed_s
        if self.comm_bytes_per_s > 0:
            t += tokens * self.comm_bytes_per_token / self.comm_bytes_per_s
        return max(t, self.physical_floor_seconds(prefill_tokens, decode_seqs, kv_tokens))

    def describe(self) -> list[str]:
        """The coefficients, for display."""
        return [
            f"step = alpha {self.alpha_s * 1e3:.2f} ms + max(weights "
            f"{self.weight_bytes_read(1) / 1e9:.2f} GB / "
            f"(bw x {self.weight_bw_efficiency:.2f}), prefill x {self.prefill_s_per_token * 1e6:.1f} us) + "
            f"KV read + decode x beta {self.beta_s * 1e6:.1f} us"
            + (f" + TP all-reduce {self.comm_fixed_s * 1e3:.2f} ms + bytes" if self.comm_bytes_per_s else ""),
            f"floor = max((weights + KV bytes) / {self.bandwidth_bytes_per_s / 1e12:.2f} TB/s, "
            f"2 x {self.active_params_per_gpu / 1e9:.2f} B params/GPU x tokens / "
            f"{self.peak_flops / 1e12:.0f} TFLOP/s)",
        ]


def performance_model(
    profile: ModelProfile,
    gpu: GPUSpec,
    tp: int = 1,
    pp: int = 1,
    weight_dtype: str = "bfloat16",
    kv_cache_dtype: str = "auto",
    quantization: str | None = None,
) -> PerformanceModel:
    """The roofline-based step model of ``profile`` on ``gpu`` with TP x PP (see the module docstring)."""
    dtype = resolve_dtype(profile, weight_dtype)
    w = weight_bytes(profile, tp, 1, dtype, quantization)  # pp=1: all layers, read one stage after another
    act_b = dtype_bytes(dtype)
    expert_bytes = 0.0
    if profile.is_moe:
        expert_bytes = profile.expert_params() / tp * w.bytes_per_param_experts
    dense = w.per_gpu - profile.num_moe_layers * profile.num_experts * expert_bytes
    if not profile.tie_word_embeddings:
        # The input embedding is a lookup: a step reads a few rows, not the table.
        dense -= math.ceil(profile.vocab_size / 64) * 64 * profile.hidden_size / tp * act_b
    active_per_gpu = profile.active_params / tp
    q = effective_quantization(profile, quantization)
    compute = "fp8" if (q == "fp8" or dtype.startswith("fp8")) else "bfloat16"
    flops = gpu.flops_per_s(compute)
    kv_per_tok = float(kv_bytes_per_token(profile, tp, 1, kv_cache_dtype, dtype))
    comm_bytes = comm_bw = comm_fixed = 0.0
    if tp > 1:
        comm_bytes = 2.0 * profile.num_layers * profile.hidden_size * act_b
        comm_bw = (gpu.interconnect_gbps * 1e9 / 2) * tp / (2.0 * (tp - 1))
        comm_fixed = 2.0 * profile.num_layers * ALLREDUCE_LATENCY_S
    if pp > 1:
        # Stages run one after the other for one batch; each hop sends the hidden states to the next stage.
        comm_fixed += (len(pp_partition(profile.num_layers, pp)) - 1) * PP_HOP_S
    return PerformanceModel(
        alpha_s=STEP_OVERHEAD_S + PER_LAYER_OVERHEAD_S * profile.num_layers,
        beta_s=DECODE_COMPUTE_FACTOR * 2.0 * active_per_gpu / flops,
        prefill_s_per_token=2.0 * active_per_gpu / (flops * PREFILL_MFU),
        dense_weight_bytes=max(0.0, dense),
        expert_bytes=expert_bytes,
        moe_layers=profile.num_moe_layers,
        num_experts=profile.num_experts,
        experts_per_tok=profile.num_experts_per_tok,
        kv_bytes_per_token=kv_per_tok,
        bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s,
        peak_flops=flops,
        active_params_per_gpu=active_per_gpu,
        comm_bytes_per_token=comm_bytes,
        comm_bytes_per_s=comm_bw,
        comm_fixed_s=comm_fixed,
        source=f"roofline ({profile.name} on {gpu.name}, tp={tp}, pp={pp})",
    )


@dataclass(frozen=True)
class LatencyPrediction:
    """Steady-state latency of a replica running ``batch`` sequences."""

    batch: int
    ttft_seconds: float
    tpot_seconds: float
    output_tokens_per_second: float
    step_seconds: float
    prefill_tokens_per_step: int


def predict(
    model: PerformanceModel,
    batch: int,
    input_tokens: int,
    output_tokens: int,
    max_num_batched_tokens: int,
) -> LatencyPrediction:
    """Latency with ``batch`` sequences decoding and new prompts arriving to replace finished ones.

    Each step decodes ``batch`` tokens and, to keep the batch full, prefills on average
    ``batch x input / output`` prompt tokens (at most the token budget left after the decodes). A new
    request's prompt is prefilled in chunks of that budget alongside the decodes: TTFT = steps to prefill x
    step time. Queueing is not modelled (the batch is the concurrency limit).
    """
    batch = max(1, batch)
    output_tokens = max(1, output_tokens)
    budget = max(1, max_num_batched_tokens - batch)
    prefill = min(budget, math.ceil(batch * input_tokens / output_tokens))
    kv = batch * (input_tokens + output_tokens // 2)
    step = model.step_seconds(prefill, batch, kv)
    chunk = max(budget, 1)
    ttft_steps = max(1, math.ceil(input_tokens / chunk))
    ttft_step = model.step_seconds(min(input_tokens, chunk) + max(0, prefill - input_tokens), batch, kv)
    return LatencyPrediction(
        batch=batch,
        ttft_seconds=ttft_steps * max(step, ttft_step),
        tpot_seconds=step,
        output_tokens_per_second=batch / step,
        step_seconds=step,
        prefill_tokens_per_step=prefill,
    )
