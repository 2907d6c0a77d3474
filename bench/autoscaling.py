"""Autoscaling benchmark: every policy on the trace suite (tidal.sim.suite), capacity errors, ONE table.

Per trace and capacity error: each policy's SLO attainment and GPU-hours, the right-sized static (the
cheapest ``static:N`` reaching the target on that trace) and its GPU-hours, the clairvoyant reference,
and a "dominated" marker naming every baseline (static fleets included) at least as good as ``tidal`` on
both attainment and GPU-hours. Tune on ``--seeds tune``; report ``--seeds test`` (fixed before tuning).

    .venv/bin/python bench/autoscaling.py --seeds test [--families bursts,diurnal] [--quick]
        [--capacity-errors 0,-0.3,0.3] [--target 0.99] [--jobs 2] [--check]

``--quick`` runs 30-minute traces and one seed (a smoke run, not a result). Output is a Markdown table
(docs/autoscaling.md "Evaluation" shows it) plus a summary; progress and timings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tidal.scaling.policies import POLICY_NAMES
from tidal.sim import SimConfig, load_step_model
from tidal.sim.runner import DEFAULT_TARGET, compare
from tidal.sim.suite import FAMILIES, SuiteTrace, load_suite

REFERENCES = ("clairvoyant",)
"""Policies that know the future: shown, never counted as baselines that dominate."""


@dataclass
class Row:
    """One (trace, capacity error) cell of the table."""

    family: str
    trace: str
    seed: int
    error: float
    results: dict[str, tuple[float, float]]
    """policy -> (SLO attainment, GPU-hours)."""
    statics: dict[int, tuple[float, float]]
    right_sized: int | None
    clairvoyant_met: bool | None
    wall_s: float


def run_one(job: tuple[SuiteTrace, float, tuple[str, ...], float]) -> Row:
    st, error, policies, target = job
    loaded = load_step_model("llama-3.1-8b", "h100")
    cfg = SimConfig(model=loaded.model, limits=loaded.limits, capacity_error=error)
    t0 = time.perf_counter()
    c = compare(st.trace, cfg, policies, target=target)
    return Row(
        st.family,
        st.trace.name,
        st.seed,
        error,
        {r.policy: (r.slo_attainment, r.gpu_hours) for r in c.results},
        {n: (r.slo_attainment, r.gpu_hours) for n, r in c.statics.items()},
        c.right_sized,
        None if c.clairvoyant is None else c.clairvoyant.met,
        time.perf_counter() - t0,
    )


def load_row(line: str) -> Row:
    """A row saved with ``--save`` (JSON turns tuples into lists and int keys into strings)."""
    d = json.loads(line)
    d["results"] = {k: (v[0], v[1]) for k, v in d["results"].items()}
    d["statics"] = {int(k): (v[0], v[1]) for k, v in d["statics"].items()}
    return Row(**d)


def dominators(row: Row, subject: str = "tidal") -> list[str]:
    """Baselines (static fleets included, references excluded) at least as good as ``subject`` on both
    SLO attainment and GPU-hours."""
    if subject not in row.results:
        return []
    att, gpu = row.results[subject]
    out = [
        name
        for name, (a, g) in row.results.items()
        if name != subject and name not in REFERENCES and a >= att and g <= gpu
    ]
    out += [
        f"static:{n}"
        for n, (a, g) in sorted(row.statics.items())
        if a >= att and g <= gpu and f"static:{n}" not in out
    ]
    return out


MUST_ATTAIN = {"bursts": 0.99, "spikes": 0.99, "diurnal": 0.99, "step4x": 0.97}
"""Issue 14's must-show, fixed before any tuning on the suite (2026-12-07, second autoscaler shift): the
attainment tidal must reach at capacity error 0 on the families with recurring bursts and on diurnal
(the target), and on the one-off 4x step from one replica."""
MUST_ATTAIN_ERROR = 0.98
"""Attainment wherever ``MUST_ATTAIN`` asks for the target, under capacity error -0.3 and +0.3."""
MUST_DIURNAL_COST = 0.7
"""On diurnal with flash crowds, tidal's GPU-hours at most this fraction of the right-sized static's."""


def must_show(row: Row) -> list[str]:
    """Issue 14's must-show for one row: every failed claim, in words (empty: all met). At capacity error 0:
    ``MUST_ATTAIN`` attainment, GPU-hours <= the right-sized static (<= ``MUST_DIURNAL_COST`` of it on
    diurnal), not dominated by any baseline; at other errors: ``MUST_ATTAIN_ERROR`` where ``MUST_ATTAIN``
    asks for 0.99 or more."""
    if "tidal" not in row.results:
        return []
    att, gpu = row.results["tidal"]
    out: list[str] = []
    need = MUST_ATTAIN.get(row.family)
    if row.error != 0:
        if need is not None and need >= 0.99 and att < MUST_ATTAIN_ERROR:
            out.append(f"{row.trace} err {row.error:+g}: attainment {att:.2%} < {MUST_ATTAIN_ERROR:.0%}")
        return out
    if need is not None and att < need:
        out.append(f"{row.trace}: attainment {att:.2%} < {need:.0%}")
    if row.right_sized is not None:
        limit = row.statics[row.right_sized][1] * (MUST_DIURNAL_COST if row.family == "diurnal" else 1.0)
        if gpu > limit:
            out.append(f"{row.trace}: {gpu:.2f} GPU-h > {limit:.2f} (right-sized static N={row.right_sized})")
    dom = dominators(row)
    if dom:
        out.append(f"{row.trace}: dominated by {', '.join(dom)}")
    return out


def render(rows: list[Row], policies: tuple[str, ...], target: float) -> str:
    """The one Markdown table, then a summary line per capacity error."""
    cols = [p for p in policies if p not in REFERENCES]
    head = ["trace", "cap. err", *cols, "right-sized static", *REFERENCES, "dominated by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.trace, f"{r.error:+g}"]
        for p in cols:
            a, g = r.results[p]
            mark = "" if a >= target else "*"
            cells.append(f"{a:.2%}{mark} / {g:.2f}")
        if r.right_sized is not None:
            a, g = r.statics[r.right_sized]
            cells.append(f"N={r.right_sized}: {a:.2%} / {g:.2f}")
        else:
            cells.append("none reaches the target")
        for p in REFERENCES:
            if p in r.results:
                a, g = r.results[p]
                cells.append(f"{a:.2%}{'' if r.clairvoyant_met else ' MISSED'} / {g:.2f}")
            else:
                cells.append("-")
        dom = dominators(r)
        cells.append("**DOMINATED**: " + ", ".join(dom) if dom else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Cells: SLO attainment / GPU-hours; * = below the {target:.0%} target.")
    for err in sorted({r.error for r in rows}):
        sub = [r for r in rows if r.error == err and "tidal" in r.results]
        if not sub:
            continue
        met = sum(r.results["tidal"][0] >= target for r in sub)
        n_dom = sum(bool(dominators(r)) for r in sub)
        cheaper = sum(
            r.right_sized is not None and r.results["tidal"][1] <= r.statics[r.right_sized][1] for r in sub
        )
        cv_missed = sum(r.clairvoyant_met is False for r in sub)
        lines.append(
            f"capacity error {err:+g}: tidal meets the target on {met}/{len(sub)} traces, is dominated on "
            f"{n_dom}/{len(sub)}, costs <= the right-sized static on {cheaper}/{len(sub)}; the clairvoyant "
            f"missed the target on {cv_missed}."
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--seeds", choices=("tune", "test"), default="tune")
    ap.add_argument("--quick", action="store_true", help="30-minute traces, one seed (a smoke run)")
    ap.add_argument("--capacity-errors", default="0,-0.3,0.3")
    ap.add_argument("--target", type=float, default=DEFAULT_TARGET)
    ap.add_argument("--policies", default=",".join(POLICY_NAMES))
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one trace each)")
    ap.add_argument("--azure-trace", default=None, help="path of azure_conv_2023.csv (default ../shared)")
    ap.add_argument("--save", help="append each finished row to this JSON-lines file as it completes")
    ap.add_argument("--load", nargs="+", help="render the table from saved rows instead of running")
    ap.add_argument(
        "--check", action="store_true", help="exit 1 unless issue 14's must-show holds (see must_show)"
    )
    args = ap.parse_args()
    policies = tuple(args.policies.split(","))
    if args.load:
        saved = [load_row(line) for path in args.load for line in Path(path).read_text().splitlines() if line]
        print(render(saved, policies, args.target))
        return verdict(saved) if args.check else 0
    errors = [float(e) for e in args.capacity_errors.split(",")]
    suite = load_suite(args.families.split(","), args.seeds, args.quick, args.azure_trace)
    jobs = [(st, e, policies, args.target) for e in errors for st in suite]
    print(
        f"# {len(suite)} traces x {len(errors)} capacity errors, seeds {args.seeds}"
        f"{' (quick)' if args.quick else ''}, target {args.target:.0%}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    rows: list[Row] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(run_one, jobs):
            rows.append(row)
            print(f"  {row.trace} err {row.error:+g}: {row.wall_s:.0f}s", file=sys.stderr, flush=True)
            if args.save:
                with open(args.save, "a") as fh:
                    fh.write(json.dumps(asdict(row)) + "\n")
    print(f"# wall {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    for fam in dict.fromkeys(r.family for r in rows):
        cpu = sum(r.wall_s for r in rows if r.family == fam)
        print(f"# {fam}: {cpu:.0f}s of worker time", file=sys.stderr)
    print(render(rows, policies, args.target))
    return verdict(rows) if args.check else 0


def verdict(rows: list[Row]) -> int:
    """Print every failed must-show claim; 1 if any failed."""
    failed = [f for r in rows for f in must_show(r)]
    print(f"\nmust-show (issue 14): {'MET' if not failed else f'{len(failed)} claim(s) FAILED'}")
    for f in failed:
        print(f"  FAILED {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
