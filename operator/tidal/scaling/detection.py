"""Performance detection: sick replicas and engine-setting advice, from the same observations.

A *sick* replica is one whose latency is far worse than its peers' while it carries no more load than
they do: the fleet is not saturated, that replica is broken (a throttled GPU, a bad node, a noisy
neighbour). It is flagged (Event ``ReplicaDegraded``: replace it) and removed from the fleet latency
signal, so one bad pod cannot by itself scale the deployment out. Only *warm* replicas are judged, and only
against warm peers: a replica ready for less than ``replica_warmup_s`` (cold prefix cache, first batches)
or completing fewer than ``min_replica_request_rate`` requests per second (quantiles of a handful of
samples) is neither judged nor a peer, so the replicas a panic scale-up just added are not flagged.

Engine advice reads saturation patterns that more replicas would not fix: a KV cache that is full
while batches are small (raise ``gpu_memory_utilization`` or lower ``max_model_len``), and frequent
preemptions (lower ``max_num_seqs``), and a prefill chunk budget the live prompt mix makes too large for
the TPOT target or too small for the TTFT target (``max_num_batched_tokens``,
:mod:`tidal.scaling.chunkadvice`). Each piece of advice names the setting, the engine's current value
and a concrete, bounded next value (:func:`tidal.scaling.tuning.bounded_value`), so ``Apply`` mode can
apply it as it stands (:func:`tidal.scaling.tuning.plan_engine_tuning`).
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from tidal.recommender.recommend import DEFAULT_GPU_MEMORY_UTILIZATION
from tidal.scaling.chunkadvice import chunk_advice
from tidal.scaling.tuning import (
    GPU_MEMORY_CEILING,
    GPU_MEMORY_STEP,
    GPU_MEMORY_UTILIZATION,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    bounded_value,
)
from tidal.scaling.types import EngineAdvice, FleetObservation, ReplicaStats, ScalingConfig, SickReplica

LOAD_SLACK = 1.25
"""A replica counts as "not more loaded" when its running+waiting is at most this x the peers' median
(plus one request, so near-idle fleets are not judged on noise)."""
MIN_LATENCY_FRACTION = 0.5
"""Only latencies above this fraction of the target are worth flagging (a 30 ms TTFT that is 3x the
peers' 10 ms is not a problem)."""
KV_SATURATED = 0.9
SMALL_BATCH_FRACTION = 0.25
PREEMPTIONS_PER_REPLICA_S = 0.05


def _load(r: ReplicaStats) -> float:
    return (r.running or 0.0) + (r.waiting or 0.0)


def is_warm(config: ScalingConfig, r: ReplicaStats) -> bool:
    """Whether ``r`` has served long and busily enough to be compared with its peers (unknown = yes)."""
    if r.age_s is not None and r.age_s < config.replica_warmup_s:
        return False
    return r.request_rate is None or r.request_rate >= config.min_replica_request_rate


def detect_sick_replicas(config: ScalingConfig, obs: FleetObservation) -> tuple[SickReplica, ...]:
    """Warm replicas whose TTFT or TPOT is > ``sick_latency_factor`` x the median of the other warm ones at
    no more load."""
    reps = [r for r in obs.replicas if is_warm(config, r)]
    if len(reps) < 2:
        return ()
    sick: list[SickReplica] = []
    for r in reps:
        peers = [p for p in reps if p.replica != r.replica]
        peer_load = statistics.median(_load(p) for p in peers)
        if _load(r) > LOAD_SLACK * peer_load + 1.0:
            continue  # busier than its peers: slow for a reason
        for signal, target in (("ttft", config.ttft_p95_s), ("tpot", config.tpot_p95_s)):
            value = r.ttft_p95 if signal == "ttft" else r.tpot_p95
            peer_values = [v for v in ((p.ttft_p95 if signal == "ttft" else p.tpot_p95) for p in peers) if v]
            if value is None or not peer_values:
                continue
            med = statistics.median(peer_values)
            floor = MIN_LATENCY_FRACTION * target if target else 0.0
            if med > 0 and value > config.sick_latency_factor * med and value > floor:
                factor = value / med
                sick.append(
                    SickReplica(
                        replica=r.replica,
                        signal=signal,
                        value=value,
                        peer_median=med,
                        factor=factor,
                        message=(
                            f"replica {r.replica}: {signal}_p95 {value:.3g}s is {factor:.1f}x "
                            f"its peers' median "
                            f"{med:.3g}s at load {_load(r):.0f} vs peers' {peer_load:.0f}; replace it "
                            "(excluded from the fleet latency signal)"
                        ),
                    )
                )
                break
    return tuple(sick)


def exclude_sick(obs: FleetObservation, sick: tuple[SickReplica, ...]) -> FleetObservation:
    """The observation with fleet latencies recomputed from the healthy replicas only.

    Per-replica p95s cannot be merged exactly; the worst healthy replica's p95 is used, which is
    conservative for scale-up (it never hides a real fleet-wide breach)."""
    if not sick:
        return obs
    bad = {s.replica for s in sick}
    healthy = [r for r in obs.replicas if r.replica not in bad]
    ttfts = [r.ttft_p95 for r in healthy if r.ttft_p95 is not None]
    tpots = [r.tpot_p95 for r in healthy if r.tpot_p95 is not None]
    return replace(
        obs,
        ttft_p95=max(ttfts) if ttfts else None,
        tpot_p95=max(tpots) if tpots else None,
        replicas=tuple(healthy),
    )


def engine_advice(config: ScalingConfig, obs: FleetObservation, ready: int) -> tuple[EngineAdvice, ...]:
    """Advice on engine settings that more replicas would not fix, each with a concrete bounded value."""
    out: list[EngineAdvice] = []
    n = max(ready, 1)
    running_per = (obs.running or 0.0) / n
    kv = obs.kv_cache_usage
    small_batch = config.max_num_seqs is not None and running_per < SMALL_BATCH_FRACTION * config.max_num_seqs
    if kv is not None and kv >= KV_SATURATED and small_batch:
        util = config.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
        raised = bounded_value(GPU_MEMORY_UTILIZATION, util, util + GPU_MEMORY_STEP)
        seen = (
            f"KV cache {kv:.0%} full with only {running_per:.0f} running sequences per replica "
            f"(max_num_seqs {config.max_num_seqs})"
        )
        if raised is not None:
            out.append(
                EngineAdvice(
                    setting=GPU_MEMORY_UTILIZATION,
                    direction="increase",
                    suggested=raised,
                    current=util,
                    message=(
                        f"{seen}: give the KV cache more memory, gpu_memory_utilization {util:.2f} -> "
                        f"{raised:.2f} (ceiling {GPU_MEMORY_CEILING:.2f}), or lower max_model_len"
                    ),
                )
            )
        else:
            out.append(
                EngineAdvice(
                    setting=MAX_MODEL_LEN,
                    direction="decrease",
                    suggested=None,
                    current=None,
                    message=(
                        f"{seen}: gpu_memory_utilization {util:.2f} is at or above the ceiling "
                        f"{GPU_MEMORY_CEILING:.2f}; lower max_model_len (advice only: a shorter context "
                        "refuses longer requests)"
                    ),
                )
            )
    if obs.preemption_rate is not None and obs.preemption_rate / n > PREEMPTIONS_PER_REPLICA_S:
        target = max(1.0, round(running_per * 0.8)) if running_per > 0 else None
        current = config.max_num_seqs
        suggested: float | None = target
        if current is not None:
            suggested = bounded_value(MAX_NUM_SEQS, current, target if target is not None else current / 2)
        out.append(
            EngineAdvice(
                setting=MAX_NUM_SEQS,
                direction="decrease",
                suggested=suggested,
                current=None if current is None else float(current),
                message=(
                    f"{obs.preemption_rate / n:.2f} preemptions/s per replica "
                    f"(> {PREEMPTIONS_PER_REPLICA_S}) at {running_per:.0f} running sequences per replica: "
                    "lower max_num_seqs"
                    + (f" {current} -> {suggested:.0f}" if current is not None and suggested else "")
                    + (f" to about {suggested:.0f}" if current is None and suggested else "")
                    + " so admitted sequences fit in the KV cache instead of being recomputed"
                ),
            )
        )
    chunk = chunk_advice(config, obs, ready)
    if chunk is not None:
        out.append(chunk)
    return tuple(out)
