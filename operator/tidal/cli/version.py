"""``tidal version``: print the version of the operator package."""

from __future__ import annotations

import argparse

from tidal import __version__


def _run(_args: argparse.Namespace) -> int:
    print(f"tidal {__version__}")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=_run)
