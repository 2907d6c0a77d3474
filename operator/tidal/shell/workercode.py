"""Read the worker's code the operator ships to its pods, from the installed ``tidal_worker`` package.

Why here: the operator's distribution packages ``tidal_worker`` beside ``tidal`` (the root pyproject finds
both packages), so the code the pods run is exactly the code of the operator's version. Reading it is I/O,
done once at start-up (``tidal run``); the pure :mod:`tidal.builders.workercode` checks the files and builds
the ConfigMap and the pod's volume. Only the package's own files go: sources and ``py.typed``, never
``__pycache__`` or editor leftovers.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from tidal.builders.workercode import WORKER_PACKAGE, WorkerCode

SHIPPED_SUFFIXES = (".py", ".typed")


def _walk(node: Traversable, prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for child in node.iterdir():
        path = f"{prefix}/{child.name}"
        if child.is_dir():
            if child.name != "__pycache__":
                out.update(_walk(child, path))
        elif child.name.endswith(SHIPPED_SUFFIXES):
            out[path] = child.read_text(encoding="utf-8")
    return out


def load_worker_code() -> WorkerCode:
    """The installed ``tidal_worker`` package as :class:`WorkerCode` (raises ``WorkerCodeError`` when it
    cannot ship, ``ModuleNotFoundError`` when the package is not installed)."""
    return WorkerCode.from_files(_walk(resources.files(WORKER_PACKAGE), WORKER_PACKAGE))
