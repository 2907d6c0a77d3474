# ruff: noqa: RUF002, E741  (math notation: greek coefficients, and I for the MLP width)
"""Measure real transformer decode and prefill step times on a GPU, for the recommender's latency model.

There is no GPU in CI, so the recommender's decode model (step ≈ α + β·batch, never faster than
(weight bytes + KV bytes) / memory bandwidth) and prefill model (compute bound) are checked against
numbers this script measured on real hardware. It builds a Llama-shaped stack with random bf16
weights in plain PyTorch (no vLLM: it is not installable on the GPU machine offline), runs decode
steps for a grid of batch sizes and context lengths and prefill passes for a grid of prompt
lengths, and prints JSON: one record per point with the measured seconds and the bytes/FLOPs the
step must move, so the ratio to the physical floor is visible. Usage (on a GPU machine):

    python bench/gpu_step_calibration.py --model llama-3.1-8b > steps.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

SHAPES: dict[str, dict[str, int]] = {
    "llama-3.1-8b": dict(
        layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, inter=14336, vocab=128256
    ),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,8,32,64,128,256")
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--prompts", default="512,2048,8192")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    s = SHAPES[args.model]
    dev = torch.device("cuda")
    dt = torch.bfloat16
    torch.manual_seed(0)
    L, H, NH, KVH, D, I, V = (
        s[k] for k in ("layers", "hidden", "heads", "kv_heads", "head_dim", "inter", "vocab")
    )
    qkv_out = (NH + 2 * KVH) * D

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=dev, dtype=dt) * 0.02

    layers = [
        dict(
            qkv=w(qkv_out, H),
            o=w(H, NH * D),
            gu=w(2 * I, H),
            down=w(H, I),
            n1=torch.ones(H, device=dev, dtype=dt),
            n2=torch.ones(H, device=dev, dtype=dt),
        )
        for _ in range(L)
    ]
    lm_head = w(V, H)
    weight_bytes = (
        sum(t.numel() * t.element_size() for lay in layers for t in lay.values()) + lm_head.numel() * 2
    )
    params = weight_bytes // 2

    def rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    def forward(
        x: torch.Tensor, kcache: list[torch.Tensor], vcache: list[torch.Tensor], causal: bool
    ) -> torch.Tensor:
        # x: (B, T, H); caches: (B, KVH, ctx, D) per layer, already holding the context.
        B, T, _ = x.shape
        for i, lay in enumerate(layers):
            h = rms(x, lay["n1"])
            qkv = F.linear(h, lay["qkv"])
            q, k, v = qkv.split([NH * D, KVH * D, KVH * D], dim=-1)
            q = q.view(B, T, NH, D).transpose(1, 2)
            if causal:
                k = k.view(B, T, KVH, D).transpose(1, 2)
                v = v.view(B, T, KVH, D).transpose(1, 2)
            else:
                k, v = kcache[i], vcache[i]
            a = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            x = x + F.linear(a.transpose(1, 2).reshape(B, T, NH * D), lay["o"])
            h = rms(x, lay["n2"])
            g, u = F.linear(h, lay["gu"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, lay["down"])
        return F.linear(x[:, -1:], lm_head)

    def timed(fn: Any) -> float:
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        samples = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            samples.append(time.perf_counter() - t0)
        del graph
        samples.sort()
        return samples[len(samples) // 2]

    props = torch.cuda.get_device_properties(0)
    out: dict[str, Any] = {
        "device": props.name,
        "model": args.model,
        "weight_bytes": weight_bytes,
        "params": params,
        "decode": [],
        "prefill": [],
    }
    kv_bytes_per_token = 2 * L * KVH * D * 2
    with torch.inference_mode():
        for ctx in [int(c) for c in args.contexts.split(",")]:
            for b in [int(c) for c in args.batches.split(",")]:
                if b * ctx * kv_bytes_per_token > 40 * 2**30:
                    continue
                kc = [torch.randn(b, KVH, ctx, D, device=dev, dtype=dt) for _ in range(L)]
                vc = [torch.randn(b, KVH, ctx, D, device=dev, dtype=dt) for _ in range(L)]
                x = torch.randn(b, 1, H, device=dev, dtype=dt)
                sec = timed(lambda x=x, kc=kc, vc=vc: forward(x, kc, vc, causal=False))
                out["decode"].append(
                    {
                        "batch": b,
                        "context": ctx,
                        "seconds": sec,
                        "bytes": weight_bytes + b * ctx * kv_bytes_per_token,
                    }
                )
                print(f"decode b={b} ctx={ctx}: {sec * 1e3:.2f} ms", file=sys.stderr)
                del kc, vc
                torch.cuda.empty_cache()
        for t in [int(c) for c in args.prompts.split(",")]:
            x = torch.randn(1, t, H, device=dev, dtype=dt)
            sec = timed(lambda x=x: forward(x, [], [], causal=True))
            out["prefill"].append({"tokens": t, "seconds": sec, "flops": 2 * params * t})
            print(f"prefill t={t}: {sec * 1e3:.2f} ms", file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
