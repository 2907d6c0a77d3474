"""``tidal recommend``: vLLM engine settings for a model on a GPU type, with the arithmetic behind them.

Flags that are given are fixed; the others are recommended (see ``tidal.recommender.recommend``).

A model that is neither a catalogue name nor a local ``config.json`` is read from the Hugging Face Hub
(``org/name`` or ``hf://org/name@revision``; ``HF_ENDPOINT``, ``HF_TOKEN`` / ``HF_TOKEN_PATH`` honoured,
see :mod:`tidal.shell.hub`).

Exit codes: 0 feasible; 1 infeasible (vLLM would refuse these settings; the table or JSON still says
why); 2 usage error (unknown model, unsupported architecture, Hub fetch failed, unknown GPU, dtype,
quantization or ``--vllm-release``, unreadable ``--gpu-catalog``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tidal.recommender.catalog import (
    UnknownModelError,
    UnsupportedArchitectureError,
    catalog_names,
    catalog_profile,
    get_model,
    hub_repo,
    resolve_name,
)
from tidal.recommender.gpus import GPUSpec, UnknownGPUError, builtin_catalog, get_gpu, load_gpu_catalog
from tidal.recommender.models import ModelProfile
from tidal.recommender.overheads import OVERHEADS, release_key
from tidal.recommender.recommend import Recommendation, RecommendInput, recommend_config


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags and the handler."""
    p = parser
    p.add_argument(
        "--model",
        help="catalogue name (see --list-models), a config.json path / model directory, or a Hugging Face "
        "repository (org/name, hf://org/name@revision; HF_ENDPOINT and HF_TOKEN / HF_TOKEN_PATH honoured)",
    )
    p.add_argument("--gpu", default="H100-80GB", help="GPU type (see --list-gpus); default H100-80GB")
    p.add_argument("--gpu-catalog", type=Path, help="YAML/JSON file adding or overriding GPU types")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (TP stays inside a node)")
    p.add_argument("--tp", type=int, help="fixed tensor_parallel_size")
    p.add_argument("--pp", type=int, help="fixed pipeline_parallel_size")
    p.add_argument("--max-model-len", type=int, help="fixed max_model_len")
    p.add_argument("--gpu-memory-utilization", type=float, help="fixed GPU memory fraction")
    p.add_argument("--max-num-seqs", type=int, help="fixed max_num_seqs")
    p.add_argument("--max-num-batched-tokens", type=int, help="fixed max_num_batched_tokens")
    p.add_argument("--dtype", default="auto", help="weight/activation dtype (auto: the checkpoint's)")
    p.add_argument("--quantization", help="fp8, awq, gptq, mxfp4, ... (default: the checkpoint's)")
    p.add_argument("--kv-cache-dtype", default="auto", help="auto (model dtype) or fp8")
    p.add_argument("--input-tokens", type=int, default=1024, help="expected prompt tokens (default 1024)")
    p.add_argument("--output-tokens", type=int, default=256, help="expected output tokens (default 256)")
    p.add_argument(
        "--long-input-tokens",
        type=int,
        help="long prompts of the mix, e.g. p90 (chunk sizing; default 2x input)",
    )
    p.add_argument("--vllm-release", help="vLLM release whose overheads to use, e.g. v0.19 (default v0.19)")
    p.add_argument("--slo-ttft", type=float, help="TTFT target in seconds (default 2)")
    p.add_argument("--slo-tpot", type=float, help="TPOT target in seconds (default 0.1)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    p.add_argument("--list-models", action="store_true", help="list the model catalogue and exit")
    p.add_argument("--list-gpus", action="store_true", help="list the GPU catalogue and exit")
    p.set_defaults(handler=_run)


def _fail(message: str) -> int:
    print(f"tidal recommend: error: {message}", file=sys.stderr)
    return 2


def _gpu_catalog(path: Path | None) -> dict[str, GPUSpec]:
    if path is None:
        return builtin_catalog()
    return load_gpu_catalog(path.read_text(encoding="utf-8"))


def _list_models(as_json: bool) -> int:
    rows = []
    for name in catalog_names():
        m = catalog_profile(name)
        rows.append(
            {
                "name": name,
                "architecture": m.architecture,
                "params_b": round(m.total_params / 1e9, 2),
                "active_params_b": round(m.active_params / 1e9, 2),
                "layers": m.num_layers,
                "heads": m.num_attention_heads,
                "kv_heads": m.num_kv_heads,
                "head_dim": m.head_dim,
                "experts": m.num_experts,
                "mla": m.is_mla,
                "quantization": m.quantization,
                "max_position_embeddings": m.max_position_embeddings,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'model':18} {'params':>8} {'active':>8} {'layers':>6} {'heads':>5} {'kv':>4} {'experts':>7}  notes"
    )
    for r in rows:
        notes = ", ".join(x for x in ("MLA" if r["mla"] else "", str(r["quantization"] or "")) if x)
        print(
            f"{r['name']:18} {r['params_b']:>7.2f}B {r['active_params_b']:>7.2f}B {r['layers']:>6} "
            f"{r['heads']:>5} {r['kv_heads']:>4} {r['experts']:>7}  {notes}"
        )
    return 0


def _list_gpus(catalog: dict[str, GPUSpec], as_json: bool) -> int:
    if as_json:
        print(json.dumps([dataclasses.asdict(g) for g in catalog.values()], indent=2))
        return 0
    print(f"{'gpu':12} {'GiB':>7} {'TB/s':>6} {'BF16 TF':>8} {'FP8 TF':>7} {'link GB/s':>9}  node labels")
    for g in catalog.values():
        print(
            f"{g.name:12} {g.memory_gib:>7.2f} {g.bandwidth_tbps:>6.2f} {g.bf16_tflops:>8.0f} "
            f"{g.fp8_tflops:>7.0f} {g.interconnect_gbps:>9.0f}  {', '.join(g.node_labels)}"
        )
    return 0


def _model(name: str) -> ModelProfile:
    """Catalogue, local file, then the Hub (``UnknownModelError`` / ``ValueError`` / ``OSError``)."""
    repo = hub_repo(name)
    if repo is None or resolve_name(name) is not None or Path(name).exists():
        return get_model(name)
    from tidal.shell.hub import HubFetchError, fetch_model_files

    try:
        return fetch_model_files(*repo).profile()
    except HubFetchError as exc:
        raise UnknownModelError(f"cannot fetch {repo[0]} from the Hub: {exc}") from None


def format_table(rec: Recommendation) -> str:
    """The human-readable report: settings, then the arithmetic, then the reasons."""
    status = "FEASIBLE" if rec.feasible else "INFEASIBLE (vLLM would refuse this)"
    fixed = set(rec.fixed)

    def src(name: str) -> str:
        return "given" if name in fixed else "recommended"

    rows = [
        ("tensor_parallel_size", str(rec.tensor_parallel_size), src("tp")),
        ("pipeline_parallel_size", str(rec.pipeline_parallel_size), src("pp")),
        ("gpu_memory_utilization", f"{rec.gpu_memory_utilization:.2f}", src("gpu_memory_utilization")),
        ("max_model_len", f"{rec.max_model_len:,}", src("max_model_len")),
        ("max_num_seqs", str(rec.max_num_seqs), src("max_num_seqs")),
        ("max_num_batched_tokens", f"{rec.max_num_batched_tokens:,}", src("max_num_batched_tokens")),
        ("dtype / kv_cache_dtype", f"{rec.dtype} / {rec.kv_cache_dtype}", ""),
        ("quantization", str(rec.quantization or "none"), ""),
        ("weights per GPU", f"{rec.weights_gib_per_gpu:.2f} GiB", ""),
        ("KV cache per GPU", f"{rec.kv_cache_gib_per_gpu:.2f} GiB", ""),
        ("KV bytes per token per GPU", f"{rec.kv_bytes_per_token:,}", ""),
        ("KV cache capacity", f"{rec.kv_cache_tokens:,} tokens", ""),
        ("predicted TTFT", f"{rec.predicted.ttft_seconds:.3f} s", f"target {rec.slo_ttft_seconds:g} s"),
        (
            "predicted TPOT",
            f"{rec.predicted.tpot_seconds * 1e3:.1f} ms",
            f"target {rec.slo_tpot_seconds * 1e3:g} ms",
        ),
        ("predicted output tokens/s", f"{rec.predicted.output_tokens_per_second:,.0f}", "per replica"),
    ]
    out = [f"{rec.model} on {rec.gpu}: {status}", ""]
    out += [f"  {k:<28} {v:>18}   {s}" for k, v, s in rows]
    if rec.arithmetic:
        out += ["", "Arithmetic:"] + [f"  {line}" for line in rec.arithmetic]
    out += ["", "Reasons:"] + [f"  - {r}" for r in rec.reasons]
    out += ["", "vLLM flags: " + " ".join(rec.engine_args())]
    return "\n".join(out)


def _run(args: argparse.Namespace) -> int:
    try:
        catalog = _gpu_catalog(args.gpu_catalog)
    except (OSError, ValueError) as exc:
        return _fail(f"--gpu-catalog: {exc}")
    if args.list_models:
        return _list_models(args.json)
    if args.list_gpus:
        return _list_gpus(catalog, args.json)
    if args.vllm_release and release_key(args.vllm_release) not in OVERHEADS:
        return _fail(
            f"--vllm-release {args.vllm_release}: unknown; calibrated releases: {', '.join(OVERHEADS)}"
        )
    if not args.model:
        return _fail(
            "--model is required (a catalogue name from --list-models, a config.json path or org/name)"
        )
    try:
        model = _model(args.model)
        gpu = get_gpu(args.gpu, catalog)
    except (UnknownModelError, UnknownGPUError, UnsupportedArchitectureError) as exc:
        return _fail(str(exc.args[0]))
    except (OSError, ValueError) as exc:
        return _fail(f"cannot read model config {args.model!r}: {exc}")
    inp = RecommendInput(
        model=model,
        gpu=gpu,
        gpus_per_node=args.gpus_per_node,
        tp=args.tp,
        pp=args.pp,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        dtype=args.dtype,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        slo_ttft_seconds=args.slo_ttft,
        slo_tpot_seconds=args.slo_tpot,
        long_input_tokens=args.long_input_tokens,
        vllm_release=args.vllm_release,
    )
    try:
        rec = recommend_config(inp)
    except ValueError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(rec.to_json_dict(), indent=2))
    else:
        print(format_table(rec))
    return 0 if rec.feasible else 1
