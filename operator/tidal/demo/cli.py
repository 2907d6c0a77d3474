"""Flags of the demo, shared by ``tidal demo`` (registered in ``tidal.cli``) and ``python -m tidal.demo``.

Kept free of heavy imports: ``tidal --help`` imports every subcommand module.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tidal.demo.scenario import EXAMPLE, NAMESPACE, DemoOptions


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags and the handler."""
    p = parser
    p.add_argument(
        "--duration",
        type=float,
        default=240.0,
        help="seconds of load profile after the example is applied (default 240)",
    )
    p.add_argument(
        "--state-dir",
        default=".tidal/demo",
        help="kubeconfig, logs and scratch data (default .tidal/demo; scratch data is removed at the end)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the control plane running at the end "
        "(stop it with python -m tidal.devcluster down --state-dir DIR)",
    )
    p.add_argument(
        "--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set or not a tty)"
    )
    p.add_argument(
        "--example",
        default=str(EXAMPLE),
        help="the LLMDeployment to apply (default examples/llama-3.1-8b.yaml)",
    )
    p.add_argument(
        "--namespace", default=NAMESPACE, help=f"namespace of the deployment (default {NAMESPACE})"
    )
    p.add_argument("--gpu-nodes", type=int, default=2, help="fake 8-GPU nodes (default 2)")
    p.add_argument(
        "--low", type=float, default=0.4, help="low load, in replicas' worth of capacity (default 0.4)"
    )
    p.add_argument(
        "--high", type=float, default=2.4, help="high load, in replicas' worth of capacity (default 2.4)"
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from tidal.demo.runner import Demo  # heavy imports only when the demo runs

    color = not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
    options = DemoOptions(
        duration_s=args.duration,
        state_dir=Path(args.state_dir),
        keep=args.keep,
        color=color,
        example=Path(args.example),
        namespace=args.namespace,
        gpu_nodes=args.gpu_nodes,
        low=args.low,
        high=args.high,
    )
    return Demo(options).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tidal.demo",
        description="Tidal autoscaling live on the local control plane "
        "(fake GPU nodes, Prometheus, simulated vLLM fleet).",
    )
    register(parser)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result
