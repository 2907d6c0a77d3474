"""``max_num_batched_tokens`` from the TPOT target and the prompt mix (tidal.recommender.chunking)."""

from __future__ import annotations

from tidal.recommender.catalog import catalog_profile
from tidal.recommender.chunking import CHUNK_GRANULE, choose_chunk, steady_tokens
from tidal.recommender.gpus import get_gpu
from tidal.recommender.perf import performance_model
from tidal.recommender.recommend import RecommendInput, recommend

PM = performance_model(catalog_profile("Llama-3.1-8B"), get_gpu("H100-80GB"))


def test_long_prompts_and_a_tight_tpot_get_a_smaller_chunk() -> None:
    batch, prompt, out, target = 8, 4096, 32, 0.05
    c = choose_chunk(PM, batch=batch, input_tokens=prompt, output_tokens=out, tpot_target_s=target,
                     default_tokens=8192)  # fmt: skip
    kv = batch * (prompt + out // 2)
    assert c.meets_tpot and c.tokens < 8192 and c.tokens % CHUNK_GRANULE == 0
    assert c.tokens >= steady_tokens(batch, prompt, out) == c.steady_tokens
    assert PM.step_seconds(c.tokens - batch, batch, kv) <= target  # a full chunk meets the target ...
    assert PM.step_seconds(c.tokens + CHUNK_GRANULE - batch, batch, kv) > target  # ... one granule more not
    assert PM.step_seconds(8192 - batch, batch, kv) > target  # vLLM's default would miss it


def test_short_prompts_keep_the_default() -> None:
    c = choose_chunk(
        PM, batch=64, input_tokens=128, output_tokens=512, tpot_target_s=0.05, default_tokens=8192
    )
    assert c.tokens == 8192 and c.meets_tpot  # no prompt of the mix fills a big chunk


def test_unreachable_target_keeps_the_default() -> None:
    c = choose_chunk(
        PM, batch=8, input_tokens=4096, output_tokens=32, tpot_target_s=0.001, default_tokens=8192
    )
    assert c.tokens == 8192 and not c.meets_tpot and "decode step alone" in c.reason


def test_recommend_sizes_the_chunk_for_the_target() -> None:
    inp = RecommendInput(
        model=catalog_profile("Llama-3.1-8B"), gpu=get_gpu("H100-80GB"), input_tokens=4096, output_tokens=32,
        slo_tpot_seconds=0.05, slo_ttft_seconds=5.0,
    )  # fmt: skip
    rec = recommend(inp)
    assert rec.max_num_batched_tokens < 8192 and rec.max_num_batched_tokens >= rec.max_num_seqs
    assert any(r.startswith("max_num_batched_tokens") and "50 ms TPOT target" in r for r in rec.reasons)
    assert recommend(inp, max_num_batched_tokens=8192).max_num_batched_tokens == 8192  # given stays
