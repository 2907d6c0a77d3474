"""One replica's modelled capacity within the TPOT target, from the step-time model alone (pure, no numpy).

What the operator can know before serving: for a batch ``B`` of sequences with the mean context, a request
costs ``P·g`` of prefill plus ``G·d(B)/B`` of decode time, and TPOT is ``d(B)/(1 - λ·P·g)``; the largest
``λ`` over ``B`` is the capacity. It feeds Tidal's ``load`` signal (prompt and generated tokens per
replica-second), the demo's replica model and the baselines' concurrency targets. Kept apart from the
simulator so the operator's reconcile path imports no numpy (it costs ~11 MiB of resident memory).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tidal.sim.stepmodel import EngineLimits, StepTimeModel

__all__ = ["Capacity", "TargetUnreachable", "concurrency_at", "modelled_capacity"]

MIN_PREFILL_S_PER_TOKEN = 1e-9
"""The smallest prefill cost per prompt token the capacity uses (a billion prompt tokens per second)."""


class TargetUnreachable(ValueError):
    """The TPOT target is shorter than one decode step with a single sequence in flight: no request rate,
    however small, meets it (the API accepts any positive target; the model decides what a GPU can do)."""

    def __init__(self, tpot_target_s: float, fastest_step_s: float) -> None:
        super().__init__(
            f"TPOT target {tpot_target_s:g}s is below the modelled decode step of one sequence "
            f"({fastest_step_s * 1000:.3g} ms)"
        )
        self.tpot_target_s = tpot_target_s
        self.fastest_step_s = fastest_step_s


@dataclass(frozen=True)
class Capacity:
    """One replica's modelled capacity at the SLO for a request mix."""

    requests_per_s: float
    batch: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    concurrency: float
    decode_step_s: float = 0.0
    """Modelled decode step time with no sequence (the intercept of a line through one sequence and the
    capacity's batch, at the mix's mean context): with ``decode_step_per_seq_s`` the step time the
    autoscaler's online calibration compares the engine's with (:mod:`tidal.scaling.calibration`)."""
    decode_step_per_seq_s: float = 0.0
    """Modelled decode step time added per sequence in the batch (the slope of that line)."""


def modelled_capacity(
    model: StepTimeModel, limits: EngineLimits, prompt_mean: float, output_mean: float, tpot_target_s: float
) -> Capacity:
    """Largest sustainable request rate of one replica under the TPOT target (see module docstring). Raises
    :class:`TargetUnreachable` when no batch size meets the target (not even one sequence at a time),
    ``ValueError`` when the KV cache holds no request of the mix."""
    chunk = limits.max_num_batched_tokens
    # Prefill seconds per prompt token; a step model flat over the chunk (memory-bound) gives 0: floored at
    # MIN_PREFILL_S_PER_TOKEN (the capacity is then bounded by decode alone).
    flat = model.step_seconds(0, 0, 0)
    gamma = max(MIN_PREFILL_S_PER_TOKEN, (model.step_seconds(chunk, 0, 0) - flat) / chunk)
    ctx = prompt_mean + output_mean / 2
    best = Capacity(0.0, 1, 1.0 / gamma, 1.0, 0.0)
    fastest = float("inf")
    b = 1
    while b <= limits.max_num_seqs:
        if b * (prompt_mean + output_mean) > limits.kv_cache_tokens:
            break
        d = model.step_seconds(0, b, int(b * ctx))
        fastest = min(fastest, d)
        lam = 1.0 / (prompt_mean * gamma + output_mean * d / b)
        tpot = d / max(1e-9, 1 - lam * prompt_mean * gamma)
        if tpot > tpot_target_s:
            # The TPOT bound binds: the rate at which d/(1 - λPg) equals the target.
            lam = min(lam, (1 - d / tpot_target_s) / (prompt_mean * gamma))
        if lam > best.requests_per_s:
            best = Capacity(lam, b, 1.0 / gamma, b / d, float(b))
        b = b + 1 if b < 16 else int(b * 1.1) + 1
    if fastest == float("inf"):
        raise ValueError(
            f"a KV cache of {limits.kv_cache_tokens} tokens holds no request of "
            f"{prompt_mean:g}+{output_mean:g} tokens"
        )
    if best.requests_per_s <= 0:
        raise TargetUnreachable(tpot_target_s, fastest)
    # Decode tokens per replica-second such that prompt/P_cap + generated/D_cap = 1 at the capacity.
    dec = output_mean / (1.0 / best.requests_per_s - prompt_mean * gamma)
    one = model.step_seconds(0, 1, int(ctx))
    at = model.step_seconds(0, best.batch, int(best.batch * ctx))
    slope = max(0.0, (at - one) / (best.batch - 1)) if best.batch > 1 else 0.0
    return replace(
        best, decode_tokens_per_s=dec, decode_step_s=max(0.0, one - slope), decode_step_per_seq_s=slope
    )


def concurrency_at(
    model: StepTimeModel, limits: EngineLimits, prompt_mean: float, output_mean: float, rate: float
) -> float:
    """Modelled requests in flight on one replica at ``rate`` (Little's law on the decode fixed point
    ``B = λ·G·TPOT(B)``, ``TPOT = d(B)/(1 - λ·P·g)``)."""
    chunk = limits.max_num_batched_tokens
    gamma = (model.step_seconds(chunk, 0, 0) - model.step_seconds(0, 0, 0)) / chunk
    busy = rate * prompt_mean * gamma
    if busy >= 1:
        return float(limits.max_num_seqs)
    ctx = prompt_mean + output_mean / 2
    b = 1.0
    for _ in range(200):
        d = model.step_seconds(0, max(1, round(b)), int(b * ctx))
        nb = rate * output_mean * d / (1 - busy)
        if abs(nb - b) < 0.01:
            break
        b = min(float(limits.max_num_seqs), 0.5 * b + 0.5 * nb)
    return b
