"""``tidal simulate``: replay a trace (Azure CSV or synthetic) against scaling policies, side by side.

The model, GPU, TP and SLO targets come from flags or from an ``LLMDeployment`` YAML (plain YAML
parsing of the known keys, so this works without a cluster). Prints a comparison table (or ``--json``),
a progress bar on stderr, and optionally a PNG of load, replicas and p95 TTFT over time per policy.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from tidal.scaling.policies import POLICY_NAMES
from tidal.sim.fleet import SimConfig
from tidal.sim.runner import Comparison, compare
from tidal.sim.stepmodel import load_step_model
from tidal.sim.traces import SYNTHETIC, Trace, load_azure_csv, synthetic


def _dig(doc: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def deployment_settings(path: str) -> dict[str, Any]:
    """Model, GPU, TP, SLO targets and replica bounds from an LLMDeployment YAML (known keys only)."""
    doc = yaml.safe_load(Path(path).read_text())
    spec = _dig(doc, "spec") or {}
    model = _dig(spec, "model", "architecture", "catalogName") or _dig(spec, "model", "name")
    return {
        k: v
        for k, v in {
            "model": model,
            "gpu": _dig(spec, "resources", "gpuType"),
            "tp": _dig(spec, "engine", "tensorParallelSize"),
            "slo_ttft": _dig(spec, "autoscaling", "targets", "ttftP95Seconds"),
            "slo_tpot": _dig(spec, "autoscaling", "targets", "tpotP95Seconds"),
            "min_replicas": _dig(spec, "autoscaling", "minReplicas"),
            "max_replicas": _dig(spec, "autoscaling", "maxReplicas"),
        }.items()
        if v is not None
    }


def _progress(stream: Any) -> Any:
    def show(name: str, frac: float) -> None:
        width = 30
        filled = int(frac * width)
        stream.write(f"\r{name:>16s} [{'#' * filled}{'.' * (width - filled)}] {frac:4.0%}")
        if frac >= 1.0:
            stream.write("\n")
        stream.flush()

    return show


def render_table(c: Comparison) -> str:
    """The human-readable comparison (ratios against the oracle and static peak where present)."""
    by = c.by_name()
    oracle = by.get("oracle")
    static = by.get("static-peak")
    head = (
        f"{'policy':16s} {'GPU-h':>8s} {'xoracle':>8s} {'xstatic':>8s} {'SLO att.':>9s} {'p95 TTFT':>9s} "
        f"{'p95 TPOT':>9s} {'scales':>7s} {'flaps/h':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in c.results:
        xo = f"{r.gpu_hours / oracle.gpu_hours:8.2f}" if oracle and oracle.gpu_hours else f"{'-':>8s}"
        xs = f"{r.gpu_hours / static.gpu_hours:8.2f}" if static and static.gpu_hours else f"{'-':>8s}"
        lines.append(
            f"{r.policy:16s} {r.gpu_hours:8.3f} {xo} {xs} {r.slo_attainment:9.2%} {r.p95_ttft_seconds:8.2f}s "
            f"{r.p95_tpot_seconds * 1000:7.0f}ms {r.scale_events:7d} {r.flaps_per_hour:8.1f}"
        )
    s = c.setup
    lines.append(
        f"\ntrace {c.trace.name}: {len(c.trace)} requests over {c.trace.duration:.0f}s; per-replica capacity "
        f"modelled {s.modelled.requests_per_s:.1f} req/s, measured {s.measured_rps:.1f} req/s; "
        f"static peak {s.static_peak} replicas"
    )
    return "\n".join(lines)


def plot(c: Comparison, path: str) -> None:
    """PNG with three panels: load, replicas and p95 TTFT over time, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    rates = c.trace.rate_series(15.0)
    axes[0].plot([15.0 * i for i in range(len(rates))], rates, color="black", lw=0.8)
    axes[0].set_ylabel("requests/s")
    for r in c.results:
        t = [s.time for s in r.timeline]
        axes[1].step(t, [s.total for s in r.timeline], where="post", label=r.policy, lw=1)
        axes[2].plot(t, [s.ttft_p95 if s.ttft_p95 is not None else float("nan") for s in r.timeline], lw=0.8)
    axes[1].set_ylabel("replicas")
    axes[1].legend(fontsize=7, ncol=4)
    axes[2].set_ylabel("p95 TTFT (s)")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("time (s)")
    fig.suptitle(c.trace.name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = deployment_settings(args.deployment) if args.deployment else {}
    model = args.model or settings.get("model") or "llama-3.1-8b"
    gpu = args.gpu or settings.get("gpu") or "h100"
    tp = int(args.tp or settings.get("tp") or 1)
    slo_ttft = float(args.slo_ttft or settings.get("slo_ttft") or 2.0)
    slo_tpot = float(args.slo_tpot or settings.get("slo_tpot") or 0.1)
    lo = int(settings.get("min_replicas", 1))
    hi = int(settings.get("max_replicas", args.max_replicas))
    trace: Trace
    if args.trace:
        trace = load_azure_csv(args.trace, args.time_scale, args.duration)
    else:
        kind = args.synthetic or "gamma"
        trace = synthetic(kind, args.rate, args.duration or 1800.0, args.seed, args.cv)
        if args.time_scale != 1.0:
            trace = Trace(trace.name, trace.arrivals / args.time_scale, trace.prompt, trace.output)
    if len(trace) == 0:
        print("the trace is empty", file=sys.stderr)
        return 2
    loaded = load_step_model(model, gpu, tp)
    cfg = SimConfig(
        model=loaded.model,
        limits=loaded.limits,
        slo_ttft_s=slo_ttft,
        slo_tpot_s=slo_tpot,
        cold_start_s=args.cold_start,
        gpus_per_replica=tp,
        cluster_gpus=args.cluster_gpus,
    )
    cfg = replace(cfg, scrape_interval_s=args.scrape_interval)
    policies = args.policy or list(POLICY_NAMES)
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        print(f"unknown policy {unknown}; choose from {', '.join(POLICY_NAMES)}", file=sys.stderr)
        return 2
    print(f"step model: {loaded.source}", file=sys.stderr)
    c = compare(trace, cfg, policies, lo, hi, progress=None if args.no_progress else _progress(sys.stderr))
    if args.json:
        print(json.dumps({r.policy: r.summary() for r in c.results}, indent=2))
    else:
        print(render_table(c))
    if args.plot:
        plot(c, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--trace", help="Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)"
    )
    src.add_argument("--synthetic", choices=SYNTHETIC, help="synthetic trace kind (default gamma)")
    parser.add_argument("--rate", type=float, default=5.0, help="mean requests/s of a synthetic trace")
    parser.add_argument("--cv", type=float, default=None, help="inter-arrival CV (gamma default 3, others 1)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of trace (synthetic default 1800)"
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="replay speed-up (2 = twice the rate)")
    parser.add_argument("--deployment", help="LLMDeployment YAML to read model/GPU/TP/SLO/bounds from")
    parser.add_argument("--model", help="catalog model name (default llama-3.1-8b)")
    parser.add_argument("--gpu", help="GPU type (default h100)")
    parser.add_argument("--tp", type=int, help="tensor-parallel size (GPUs per replica)")
    parser.add_argument("--slo-ttft", type=float, help="p95 TTFT target, seconds (default 2.0)")
    parser.add_argument("--slo-tpot", type=float, help="p95 TPOT target, seconds (default 0.1)")
    parser.add_argument(
        "--policy", action="append", help=f"repeatable; default all of {', '.join(POLICY_NAMES)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold-start", type=float, default=90.0, help="replica cold start, seconds")
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="metrics scrape interval, seconds")
    parser.add_argument("--cluster-gpus", type=int, default=1024, help="GPUs in the simulated cluster")
    parser.add_argument("--max-replicas", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print per-policy metrics as JSON")
    parser.add_argument("--plot", help="write a PNG of load, replicas and p95 TTFT per policy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler=_run)
