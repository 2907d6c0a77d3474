"""The ``tidal`` console script: one argparse front door, one module per subcommand.

Each subcommand lives in ``tidal.cli.<name>`` and exposes ``register(subparsers)``. ``main`` imports only the
module of the subcommand it runs: ``tidal --help`` stays fast, a broken optional dependency of one subcommand
never breaks the others, and ``tidal run`` (the operator, in every operator pod) does not load the simulator
and numpy that ``tidal simulate`` needs (~16 MiB of resident memory).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tidal import __version__

# name -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "version": ("tidal.cli.version", "print the Tidal version"),
    "run": ("tidal.cli.run", "run the operator (kopf, with peering/leader election)"),
    "recommend": ("tidal.cli.recommend", "recommend vLLM engine settings for a model on a GPU"),
    "simulate": ("tidal.cli.simulate", "replay a traffic trace against scaling policies"),
    "manifests": ("tidal.cli.manifests", "print the generated LLMDeployment CRD"),
    "demo": ("tidal.demo.cli", "autoscaling live on the local control plane (what `make demo` runs)"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand listed; with ``argv``, only the subcommand it names (if any) is
    imported and registered, without it all are."""
    wanted = None if argv is None else next((a for a in argv if a in SUBCOMMANDS), "")
    parser = argparse.ArgumentParser(
        prog="tidal",
        description="Tidal: Kubernetes operator for multi-GPU LLM serving with vLLM.",
    )
    parser.add_argument("--version", action="version", version=f"tidal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if wanted is not None and name != wanted:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # subcommand not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.register(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
