"""``tidal manifests``: print the generated ``LLMDeployment`` CRD (the same YAML as ``make manifests``)."""

from __future__ import annotations

import argparse
import sys


def _run(_args: argparse.Namespace) -> int:
    from tidal.api.crdgen import render

    sys.stdout.write(render())
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=_run)
