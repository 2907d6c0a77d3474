"""A streaming OpenAI-completions client for drain tests: what each stream saw (chunks, ``[DONE]``, finish
reason, the usage's token count), so a test can tell a finished stream from a failed or truncated one.

Shared by the engine tier (SIGTERM to a bare worker) and the node tier (a scale-down through the kubelet).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp


@dataclass
class StreamResult:
    """What one streaming client saw."""

    status: int
    chunks: int = 0
    done: bool = False
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str = ""

    def complete(self, tokens: int) -> bool:
        """Whether the stream ended normally with all ``tokens`` (``ignore_eos``: finish reason length)."""
        return (
            self.status == 200
            and not self.error
            and self.done
            and self.finish_reason == "length"
            and self.completion_tokens == tokens
        )


async def stream_completion(
    session: aiohttp.ClientSession, url: str, i: int, started: asyncio.Event, tokens: int, model: str = "tiny"
) -> StreamResult:
    """Stream one completion of ``tokens`` tokens from ``url``; ``started`` is set at its first chunk."""
    body = {
        "model": model,
        "prompt": f"Request {i}: tell me about tides",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
            res = StreamResult(status=resp.status)
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: ") :]
                if payload == "[DONE]":
                    res.done = True
                    continue
                data = json.loads(payload)
                if data.get("usage"):
                    res.completion_tokens = int(data["usage"]["completion_tokens"])
                for choice in data.get("choices", []):
                    res.chunks += 1
                    started.set()
                    res.finish_reason = choice.get("finish_reason") or res.finish_reason
            return res
    except (aiohttp.ClientError, TimeoutError) as exc:
        return StreamResult(status=-1, error=f"{type(exc).__name__}: {exc}")
