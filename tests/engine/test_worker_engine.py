"""The worker against the real vLLM CPU engine: API answers, metrics, readiness, and a drain under load.

ONE worker (module fixture ``tiny_worker``) serves every test here; the drain test runs last and ends it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from typing import Any

import aiohttp
import pytest
from tests.support.engine import WorkerHandle, http_status, tiny_model_dir, tiny_worker
from tests.support.streams import StreamResult, stream_completion

__all__ = ["tiny_model_dir", "tiny_worker"]

STREAMS = 20
STREAM_TOKENS = 960  # near TIDAL_MAX_MODEL_LEN (1024): streams must outlast the drain checks on a busy CPU


def _post(url: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = json.loads(resp.read())
    assert isinstance(data, dict)
    return data


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def test_ready_and_startup_time(tiny_worker: WorkerHandle) -> None:
    assert http_status(tiny_worker.ready_url) == 200
    assert http_status(tiny_worker.base_url + "/live") == 200
    assert tiny_worker.startup_seconds > 0
    print(f"worker ready after {tiny_worker.startup_seconds:.1f} s")
    assert "preflight ok" in tiny_worker.log_text()
    # The supervisor logs readiness from its own poll of the engine, which can come just after ours.
    deadline = time.monotonic() + 15
    while "engine ready after" not in tiny_worker.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "engine ready after" in tiny_worker.log_text()


def test_completions(tiny_worker: WorkerHandle) -> None:
    out = _post(
        tiny_worker.base_url + "/v1/completions",
        {"model": "tiny", "prompt": "Hello, world", "max_tokens": 8, "ignore_eos": True},
    )
    assert out["object"] == "text_completion"
    assert out["usage"]["completion_tokens"] == 8
    assert out["choices"][0]["finish_reason"] == "length"


def test_chat_completions(tiny_worker: WorkerHandle) -> None:
    out = _post(
        tiny_worker.base_url + "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Write a story about the sea."}],
            "max_tokens": 6,
            "ignore_eos": True,
        },
    )
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] == 6


def test_models_lists_served_name(tiny_worker: WorkerHandle) -> None:
    models = json.loads(_get(tiny_worker.base_url + "/v1/models"))
    assert [m["id"] for m in models["data"]] == ["tiny"]


def test_metrics_passthrough(tiny_worker: WorkerHandle) -> None:
    _post(tiny_worker.base_url + "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2})
    text = _get(tiny_worker.metrics_url)
    for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds"):
        assert f"\n{name}" in text, f"{name} missing from /metrics"
    ttft_count = [
        line for line in text.splitlines() if line.startswith("vllm:time_to_first_token_seconds_count{")
    ]
    assert ttft_count and float(ttft_count[0].rsplit(" ", 1)[1]) >= 1
    assert 'model_name="tiny"' in text
    assert "tidal_worker_ready 1" in text
    assert "tidal_worker_in_flight_requests 0" in text


async def _drain_scenario(handle: WorkerHandle, grace: float) -> dict[str, Any]:
    url = handle.base_url
    timeout = aiohttp.ClientTimeout(total=grace + 60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        flags = [asyncio.Event() for _ in range(STREAMS)]
        tasks = [
            asyncio.ensure_future(stream_completion(session, url, i, flags[i], STREAM_TOKENS))
            for i in range(STREAMS)
        ]
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), timeout=60)
        # Every stream has started; on a busy CPU the first may already have finished (the engine batches
        # at most max_num_seqs, the rest wait their turn), which the drain does not care about: what must
        # hold is that SIGTERM lands while streams are in flight and every one of them finishes.
        in_flight_at_sigterm = sum(not t.done() for t in tasks)
        assert in_flight_at_sigterm > 0, "every stream finished before SIGTERM; raise STREAM_TOKENS"
        t_sigterm = time.monotonic()
        handle.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # During the drain: not ready, new requests refused with a clear body, metrics still served.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as fresh:
            async with fresh.get(url + "/ready") as r:
                ready_status, ready_body = r.status, await r.json()
            async with fresh.post(
                url + "/v1/completions", json={"model": "tiny", "prompt": "new", "max_tokens": 4}
            ) as r:
                refused_status, refused_body = r.status, await r.json()
            in_flight_at_refusal = sum(not t.done() for t in tasks)
            async with fresh.get(url + "/metrics") as r:
                metrics_during_drain = await r.text()
        results = await asyncio.gather(*tasks)
        streams_done = time.monotonic() - t_sigterm
        while handle.proc.poll() is None and time.monotonic() - t_sigterm < grace + 30:
            await asyncio.sleep(0.1)
        exit_after = time.monotonic() - t_sigterm
    return {
        "results": results,
        "ready_status": ready_status,
        "ready_body": ready_body,
        "refused_status": refused_status,
        "refused_body": refused_body,
        "metrics_during_drain": metrics_during_drain,
        "in_flight_at_refusal": in_flight_at_refusal,
        "in_flight_at_sigterm": in_flight_at_sigterm,
        "streams_done": streams_done,
        "exit_after": exit_after,
    }


@pytest.mark.timeout(240)
def test_drain_on_sigterm_finishes_streams_refuses_new(tiny_worker: WorkerHandle) -> None:
    """Runs last: SIGTERM with streams in flight (20 started) ends the module's worker."""
    grace = 60.0  # TIDAL_DRAIN_GRACE_SECONDS in tests/support/engine.py
    out = asyncio.run(_drain_scenario(tiny_worker, grace))
    results: list[StreamResult] = out["results"]
    failed = [r for r in results if r.status != 200 or r.error]
    truncated = [
        r
        for r in results
        if not r.done or r.finish_reason != "length" or r.completion_tokens != STREAM_TOKENS
    ]
    print(
        f"drain: {len(results)} streams ({out['in_flight_at_sigterm']} in flight at SIGTERM), "
        f"{len(failed)} failed, {len(truncated)} truncated, "
        f"{out['in_flight_at_refusal']} still in flight when a new request was refused, streams finished "
        f"{out['streams_done']:.1f} s and worker exited {out['exit_after']:.1f} s after SIGTERM"
    )
    assert not failed, failed
    assert not truncated, truncated
    assert out["in_flight_at_refusal"] > 0, "the refusal check must happen while streams are in flight"
    assert out["ready_status"] == 503 and out["ready_body"]["phase"] == "draining"
    assert out["refused_status"] == 503
    assert "draining" in out["refused_body"]["error"]["message"]
    assert "tidal_worker_draining 1" in out["metrics_during_drain"]
    assert "vllm:num_requests_running" in out["metrics_during_drain"]
    assert tiny_worker.proc.returncode == 0, tiny_worker.log_tail()
    assert out["exit_after"] < grace
    log = tiny_worker.log_text()
    assert "SIGTERM: draining" in log
    assert "drained: all in-flight requests finished" in log
