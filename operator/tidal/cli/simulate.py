"""``tidal simulate``: replay a trace (Azure CSV or synthetic) against scaling policies, side by side.

The model, GPU, TP and SLO targets come from flags or from an ``LLMDeployment`` YAML (plain YAML
parsing of the known keys, so this works without a cluster). Prints a comparison table (or ``--json``)
with each policy's SLO attainment against the target, the right-sized static and the clairvoyant; a
progress bar on stderr when it is a terminal; optionally a PNG of load, replicas (and headroom), p95 TTFT
and per-minute attainment against the target. ``--capacity-error`` makes the simulated engine faster or
slower than the capacity model the policies are given. The engine limits (``max_num_seqs`` and the per-step
chunk budget ``max_num_batched_tokens``) are what the deployment's recommendation would apply for its
expected prompt and output lengths and SLO targets; explicit engine values (YAML or flags) win.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tidal.scaling.policies import POLICY_NAMES, is_policy_name
from tidal.sim.fleet import PolicyResult, SimConfig
from tidal.sim.runner import DEFAULT_TARGET, Comparison, compare
from tidal.sim.stepmodel import check_limits, load_step_model
from tidal.sim.traces import LENGTH_MIXES, SYNTHETIC, Trace, load_azure_csv, synthetic


def _dig(doc: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def _explicit_int(value: Any) -> int | None:
    """An explicit engine value (an int, or a digit string); None for ``"auto"`` or absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return int(value)
    return None


def deployment_settings(path: str) -> dict[str, Any]:
    """Model, GPU, TP, SLO targets, replica bounds, headroom prior and bound, expected lengths and explicit
    engine limits from an LLMDeployment YAML (known keys only)."""
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
            "slo_attainment": _dig(spec, "autoscaling", "targets", "sloAttainment"),
            "headroom_prior": _dig(spec, "autoscaling", "headroomPrior"),
            "headroom_max": _dig(spec, "autoscaling", "headroomMax"),
            "input_tokens": _dig(spec, "recommendation", "expectedInputTokens"),
            "output_tokens": _dig(spec, "recommendation", "expectedOutputTokens"),
            "max_num_seqs": _explicit_int(_dig(spec, "engine", "maxNumSeqs")),
            "max_num_batched_tokens": _explicit_int(_dig(spec, "engine", "maxNumBatchedTokens")),
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
    """The human-readable comparison: each policy against the SLO-attainment target, the right-sized
    static (cheapest static fleet reaching the target on this trace) and the clairvoyant where present."""
    by = c.by_name()
    cv = by.get("clairvoyant")
    rs = c.right_sized_result
    head = (
        f"{'policy':24s} {'GPU-h':>8s} {'xright':>7s} {'xclairv':>8s} {'SLO att.':>9s} {'target':>7s} "
        f"{'p95 TTFT':>9s} {'p95 TPOT':>9s} {'scales':>7s} {'flaps/h':>8s}"
    )
    lines = [head, "-" * len(head)]

    def ratio(r: PolicyResult, ref: PolicyResult | None, width: int) -> str:
        return f"{r.gpu_hours / ref.gpu_hours:{width}.2f}" if ref and ref.gpu_hours else f"{'-':>{width}s}"

    rows = list(c.results)
    if rs is not None and all(r.policy != rs.policy for r in rows):
        rows.append(rs)
    for r in rows:
        meets = "met" if r.slo_attainment >= c.target else "MISSED"
        label = f"{r.policy} (right-sized)" if rs is not None and r is rs else r.policy
        lines.append(
            f"{label:24s} {r.gpu_hours:8.3f} {ratio(r, rs, 7)} {ratio(r, cv, 8)} {r.slo_attainment:9.2%} "
            f"{meets:>7s} {r.p95_ttft_seconds:8.2f}s {r.p95_tpot_seconds * 1000:7.0f}ms {r.scale_events:7d} "
            f"{r.flaps_per_hour:8.1f}"
        )
    s = c.setup
    sized = (
        f"right-sized static {c.right_sized} replicas ({rs.gpu_hours:.3f} GPU-h, {rs.slo_attainment:.2%})"
        if rs is not None
        else "right-sized static: not searched, or no static fleet up to the maximum reaches the target"
    )
    lines.append(
        f"\ntrace {c.trace.name}: {len(c.trace)} requests over {c.trace.duration:.0f}s; "
        f"SLO-attainment target {c.target:.2%}; per-replica capacity modelled (given to the policies) "
        f"{s.modelled.requests_per_s:.1f} req/s, measured on the simulated engine {s.measured_rps:.1f} "
        f"req/s; static peak {s.static_peak} replicas; {sized}"
    )
    if c.clairvoyant is not None and not c.clairvoyant.met:
        lines.append(
            f"WARNING: the clairvoyant missed the target after {c.clairvoyant.rounds} replays: "
            "it is no reference on this trace"
        )
    return "\n".join(lines)


def attainment_series(r: PolicyResult, slo_ttft: float, slo_tpot: float, bin_s: float = 60.0) -> list[float]:
    """SLO attainment of the requests arriving in each ``bin_s`` (needs ``record_requests``)."""
    ok: dict[int, list[int]] = {}
    for arrival, ttft, tpot, _, _ in r.request_log or []:
        cell = ok.setdefault(int(arrival // bin_s), [0, 0])
        cell[0] += ttft <= slo_ttft and tpot <= slo_tpot
        cell[1] += 1
    return [ok[i][0] / ok[i][1] if i in ok else float("nan") for i in range(max(ok, default=-1) + 1)]


def plot(c: Comparison, path: str, cfg: SimConfig | None = None) -> None:
    """PNG with four panels: load, replicas (and headroom where a policy exposes one), p95 TTFT, and the
    per-minute SLO attainment against the target, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    rates = c.trace.rate_series(15.0)
    axes[0].plot([15.0 * i for i in range(len(rates))], rates, color="black", lw=0.8)
    axes[0].set_ylabel("requests/s")
    for r in c.results:
        t = [s.time for s in r.timeline]
        (line,) = axes[1].step(t, [s.total for s in r.timeline], where="post", label=r.policy, lw=1)
        if r.headroom:
            axes[1].plot(
                [h[0] for h in r.headroom],
                [h[1] for h in r.headroom],
                ls=":",
                color=line.get_color(),
                lw=0.8,
                label=f"{r.policy} headroom",
            )
        axes[2].plot(t, [s.ttft_p95 if s.ttft_p95 is not None else float("nan") for s in r.timeline], lw=0.8)
        if cfg is not None and r.request_log:
            att = attainment_series(r, cfg.slo_ttft_s, cfg.slo_tpot_s)
            axes[3].plot([60.0 * i + 30 for i in range(len(att))], att, lw=0.8)
    if cfg is not None:
        axes[2].axhline(cfg.slo_ttft_s, color="red", ls="--", lw=0.8, label="TTFT target")
    axes[1].set_ylabel("replicas")
    axes[1].legend(fontsize=7, ncol=4)
    axes[2].set_ylabel("p95 TTFT (s)")
    axes[2].set_yscale("log")
    axes[3].axhline(c.target, color="red", ls="--", lw=0.8)
    axes[3].text(0, c.target, f" target {c.target:.0%}", color="red", fontsize=7, va="bottom")
    axes[3].set_ylabel("SLO attainment / min")
    axes[3].set_ylim(max(0.0, min(0.8, c.target - 0.1)), 1.005)
    axes[3].set_xlabel("time (s)")
    fig.suptitle(c.trace.name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _invalid(args: argparse.Namespace, target: float, settings: dict[str, Any]) -> str | None:
    """What is wrong with the flags (the first thing found), or None."""
    unknown = [p for p in args.policy or () if not is_policy_name(p)]
    if unknown:
        return f"unknown policy {unknown}; choose from {', '.join(POLICY_NAMES)} or static:N"
    if not 0 < target <= 1 or not -0.9 <= args.capacity_error <= 9:
        return "--target must be in (0, 1] and --capacity-error in [-0.9, 9]"
    for flag in ("max_num_batched_tokens", "expected_input_tokens", "expected_output_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}"
    prior = args.headroom_prior or settings.get("headroom_prior") or 3.0
    cap = args.headroom_max or settings.get("headroom_max") or 10.0
    if not 1 <= prior <= cap <= 10:
        return f"need 1 <= headroom prior ({prior:g}) <= headroom max ({cap:g}) <= 10"
    if args.trace and args.lengths != "conversation":
        return "--lengths applies to synthetic traces; a CSV trace brings its own lengths"
    return None


def _trace(args: argparse.Namespace) -> Trace:
    """The CSV trace, or the synthetic one the flags describe."""
    if args.trace:
        return load_azure_csv(args.trace, args.time_scale, args.duration)
    kind = args.synthetic or "gamma"
    trace = synthetic(kind, args.rate, args.duration or 1800.0, args.seed, args.cv, lengths=args.lengths)
    if args.time_scale != 1.0:
        trace = Trace(trace.name, trace.arrivals / args.time_scale, trace.prompt, trace.output)
    return trace


def tidal_settings(args: argparse.Namespace, target: float, settings: dict[str, Any]) -> dict[str, float]:
    """What Tidal's own policy runs with beyond the shared SLO targets: the attainment target (within the
    API's range, 0.5-0.9999) and the headroom prior and bound (flags, else the deployment's, else the
    API defaults): the policy simulated is the one the operator would run for that deployment."""
    return {
        "slo_attainment": min(0.9999, max(0.5, target)),
        "headroom_prior": float(args.headroom_prior or settings.get("headroom_prior") or 3.0),
        "headroom_max": float(args.headroom_max or settings.get("headroom_max") or 10.0),
    }


def _report(c: Comparison, args: argparse.Namespace, target: float, cfg: SimConfig) -> None:
    """The table (or JSON) on stdout, and the plot if asked for."""
    if args.json:
        out: dict[str, Any] = {r.policy: r.summary() for r in c.results}
        rs = c.right_sized_result
        out["_references"] = {
            "target": target,
            "capacity_error": args.capacity_error,
            "right_sized_static": None if rs is None else {"replicas": c.right_sized, **rs.summary()},
            "clairvoyant_met_target": None if c.clairvoyant is None else c.clairvoyant.met,
        }
        print(json.dumps(out, indent=2))
    else:
        print(render_table(c))
    if args.plot:
        plot(c, args.plot, cfg)
        print(f"wrote {args.plot}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = deployment_settings(args.deployment) if args.deployment else {}
    model = args.model or settings.get("model") or "llama-3.1-8b"
    gpu = args.gpu or settings.get("gpu") or "h100"
    tp = int(args.tp or settings.get("tp") or 1)
    slo_ttft = float(args.slo_ttft or settings.get("slo_ttft") or 2.0)
    slo_tpot = float(args.slo_tpot or settings.get("slo_tpot") or 0.1)
    target = float(args.target or settings.get("slo_attainment") or DEFAULT_TARGET)
    problem = _invalid(args, target, settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    trace = _trace(args)
    if len(trace) == 0:
        print("the trace is empty", file=sys.stderr)
        return 2
    mbt = args.max_num_batched_tokens or settings.get("max_num_batched_tokens")
    loaded = load_step_model(
        model,
        gpu,
        tp,
        input_tokens=args.expected_input_tokens or settings.get("input_tokens"),
        output_tokens=args.expected_output_tokens or settings.get("output_tokens"),
        slo_ttft_seconds=slo_ttft,
        slo_tpot_seconds=slo_tpot,
        max_num_seqs=settings.get("max_num_seqs"),
        max_num_batched_tokens=mbt,
    )
    try:
        check_limits(loaded.limits)
    except ValueError as exc:
        print(f"engine limits: {exc}", file=sys.stderr)
        return 2
    cfg = SimConfig(
        model=loaded.model,
        limits=loaded.limits,
        slo_ttft_s=slo_ttft,
        slo_tpot_s=slo_tpot,
        cold_start_s=args.cold_start,
        gpus_per_replica=tp,
        cluster_gpus=args.cluster_gpus,
        scrape_interval_s=args.scrape_interval,
        capacity_error=args.capacity_error,
        record_requests=bool(args.plot),
    )
    lim = loaded.limits
    print(
        f"step model: {loaded.source}; capacity error {args.capacity_error:+g}; engine limits: "
        f"max_num_seqs {lim.max_num_seqs:,}, max_num_batched_tokens {lim.max_num_batched_tokens:,} "
        f"({'given' if mbt else 'recommended'}), KV {lim.kv_cache_tokens:,} tokens",
        file=sys.stderr,
    )
    bar = None if args.no_progress or not sys.stderr.isatty() else _progress(sys.stderr)
    lo = int(settings.get("min_replicas", 1))
    hi = int(settings.get("max_replicas", args.max_replicas))
    policies = args.policy or list(POLICY_NAMES)
    c = compare(
        trace,
        cfg,
        policies,
        lo,
        hi,
        progress=bar,
        target=target,
        right_sized=not args.no_right_size,
        tidal_settings=tidal_settings(args, target, settings),
    )
    _report(c, args, target, cfg)
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--trace", help="Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)"
    )
    src.add_argument("--synthetic", choices=SYNTHETIC, help="synthetic trace kind (default gamma)")
    parser.add_argument("--rate", type=float, default=5.0, help="mean requests/s of a synthetic trace")
    parser.add_argument(
        "--lengths",
        choices=LENGTH_MIXES,
        default="conversation",
        help="token-length mix of a synthetic trace (long-prompt: most prompts 4k-16k, outputs 16-128)",
    )
    parser.add_argument("--cv", type=float, default=None, help="inter-arrival CV (gamma default 3, others 1)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of trace (synthetic default 1800)"
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="replay speed-up (2 = twice the rate)")
    parser.add_argument("--deployment", help="LLMDeployment YAML to read model/GPU/TP/SLO/bounds from")
    parser.add_argument("--model", help="catalog model name (default llama-3.1-8b)")
    parser.add_argument("--gpu", help="GPU type (default h100)")
    parser.add_argument("--tp", type=int, help="tensor-parallel size (GPUs per replica)")
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="per-step token budget (chunked prefill) of every replica; default: the deployment's explicit "
        "spec.engine value, else what its recommendation would apply",
    )
    parser.add_argument(
        "--expected-input-tokens",
        type=int,
        help="prompt length the recommendation is sized for (default spec.recommendation, else 1,024)",
    )
    parser.add_argument(
        "--expected-output-tokens",
        type=int,
        help="output length the recommendation is sized for (default spec.recommendation, else 256)",
    )
    parser.add_argument("--slo-ttft", type=float, help="p95 TTFT target, seconds (default 2.0)")
    parser.add_argument("--slo-tpot", type=float, help="p95 TPOT target, seconds (default 0.1)")
    parser.add_argument(
        "--policy",
        action="append",
        help=f"repeatable; default all of {', '.join(POLICY_NAMES)}; static:N for a fixed N replicas",
    )
    parser.add_argument(
        "--target", type=float, help="SLO-attainment target (default spec sloAttainment, else 0.99)"
    )
    parser.add_argument(
        "--headroom-prior",
        type=float,
        help="Tidal's headroom prior, 1-10 (default spec.autoscaling.headroomPrior, else 3.0)",
    )
    parser.add_argument(
        "--headroom-max",
        type=float,
        help="Tidal's headroom bound, 1-10 (default spec.autoscaling.headroomMax, else 10)",
    )
    parser.add_argument(
        "--capacity-error",
        type=float,
        default=0.0,
        help="the simulated engine is (1 + this) times as fast as the model the policies get (e.g. -0.3)",
    )
    parser.add_argument(
        "--no-right-size", action="store_true", help="skip the right-sized static search (faster)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold-start", type=float, default=90.0, help="replica cold start, seconds")
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="metrics scrape interval, seconds")
    parser.add_argument("--cluster-gpus", type=int, default=1024, help="GPUs in the simulated cluster")
    parser.add_argument("--max-replicas", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print per-policy metrics as JSON")
    parser.add_argument("--plot", help="write a PNG of load, replicas and p95 TTFT per policy")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it only draws on a terminal anyway)"
    )
    parser.set_defaults(handler=_run)
