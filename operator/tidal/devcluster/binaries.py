"""Where the control plane binaries built by `make controlplane` live.

`scripts/build-controlplane.sh` builds kube-apiserver, kube-controller-manager and kube-scheduler (one
multi-call binary `kube`), `etcd` and `kwok` into a cache directory keyed by the pinned versions and a
hash of `tools/controlplane/`. This module asks that script for the directory of this checkout, so a
stale build is never picked up silently, and fails with an instruction when the binaries are missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REQUIRED_BINARIES = ("kube", "etcd", "kwok")
BIN_DIR_ENV = "TIDAL_CONTROLPLANE_BIN"


class ControlPlaneNotBuiltError(RuntimeError):
    """The control plane binaries are not where this checkout expects them."""


def repo_root() -> Path | None:
    """The checkout this package runs from, if it runs from one (editable install)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "scripts" / "build-controlplane.sh").is_file():
            return parent
    return None


def cache_dir() -> Path:
    """Tidal's build and image cache: $TIDAL_CACHE, else ~/.cache/tidal."""
    return Path(os.environ.get("TIDAL_CACHE", Path.home() / ".cache" / "tidal"))


def script_bin_dir(env_var: str, script: str, cache_sub: str) -> Path:
    """A build's bin directory: $`env_var`, else what `scripts/<script> --print-bin-dir` names for this
    checkout, else `<cache>/<cache_sub>/current/bin` (an install without the checkout's scripts).

    Shared by the control plane (:func:`expected_bin_dir`) and the real node's kubelet
    (:func:`tidal.devcluster.realnode.expected_kubelet_dir`), whose build scripts answer alike.
    """
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    root = repo_root()
    if root is not None and (root / "scripts" / script).is_file():
        out = subprocess.run(
            ["bash", str(root / "scripts" / script), "--print-bin-dir"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Path(out.stdout.strip())
    return cache_dir() / cache_sub / "current" / "bin"


def expected_bin_dir() -> Path:
    """The bin directory for this checkout: $TIDAL_CONTROLPLANE_BIN, else what the build script names."""
    return script_bin_dir(BIN_DIR_ENV, "build-controlplane.sh", "controlplane")


def find_bin_dir(explicit: Path | None = None) -> Path:
    """Return the directory holding kube, etcd and kwok, or raise ControlPlaneNotBuiltError."""
    bin_dir = explicit if explicit is not None else expected_bin_dir()
    missing = [name for name in REQUIRED_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        raise ControlPlaneNotBuiltError(
            f"control plane binaries missing from {bin_dir}: {', '.join(missing)}. "
            "Run `make controlplane` (builds kube-apiserver, controller-manager, scheduler, etcd and KWOK "
            "from the Go module proxy; the first build takes tens of minutes, later ones seconds)."
        )
    return bin_dir
