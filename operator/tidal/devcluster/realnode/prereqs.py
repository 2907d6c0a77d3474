"""What a real node needs from the host and the checkout, and the errors it raises.

Why this exists: the constants, errors and look-ups (the kubelet, the Debian packages, the pause image tar)
are shared by every other module of :mod:`tidal.devcluster.realnode` and by `devcluster up`, which checks
them before it starts anything; keeping them apart from :class:`~tidal.devcluster.realnode.RealNode` lets
those callers import them without the node's machinery.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tidal.devcluster.binaries import repo_root, script_bin_dir

PAUSE_IMAGE = "tidal.local/pause:3.10"
"""The CRI sandbox image: a static busybox running `sleep` (scripts/build-images.sh pause builds it)."""
CNI_BIN_DIR = Path("/usr/lib/cni")
KUBELET_BIN_ENV = "TIDAL_NODE_BIN"
REAL_NODE_LABEL = "tidal.dev/real-node"
"""Label on every real node (value "true"), so a test can pin pods to real nodes with a nodeSelector."""
SYSTEM_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "umount")
CNI_PLUGINS = ("bridge", "host-local", "loopback")


class NodeNotBuiltError(RuntimeError):
    """The kubelet or the node's Debian packages are missing (`make node` installs and builds them)."""


class NodeStartError(RuntimeError):
    """A real node did not become Ready; the message carries the kubelet and containerd log tails."""


def expected_kubelet_dir() -> Path:
    """The kubelet's directory: $TIDAL_NODE_BIN, else what `scripts/build-node.sh --print-bin-dir` names."""
    return script_bin_dir(KUBELET_BIN_ENV, "build-node.sh", "node")


def find_kubelet(bin_dir: Path | None = None) -> Path:
    """Path of the kubelet binary; raises NodeNotBuiltError naming what is missing and how to get it."""
    kubelet = (bin_dir if bin_dir is not None else expected_kubelet_dir()) / "kubelet"
    missing = [name for name in SYSTEM_BINARIES if shutil.which(name) is None]
    missing += [str(CNI_BIN_DIR / p) for p in CNI_PLUGINS if not os.access(CNI_BIN_DIR / p, os.X_OK)]
    if not os.access(kubelet, os.X_OK):
        missing.insert(0, str(kubelet))
    if missing:
        raise NodeNotBuiltError(
            f"real node prerequisites missing: {', '.join(missing)}. Run `make node` (installs containerd, "
            "runc and the CNI plugins from Debian, builds the kubelet from the Go module proxy)."
        )
    return kubelet


def default_node_images() -> list[Path]:
    """The images every real node needs: the pause image tar from `scripts/build-images.sh pause`."""
    root = repo_root()
    script = root / "scripts" / "build-images.sh" if root is not None else None
    if script is None or not script.is_file():
        raise NodeNotBuiltError(
            "no pause image: scripts/build-images.sh is missing; pass the image tars explicitly "
            "(KUBELET_NODE_IMAGES or --node-image)"
        )
    out = subprocess.run(
        ["bash", str(script), "pause"], check=True, capture_output=True, text=True, timeout=1800
    )
    return [Path(out.stdout.strip().splitlines()[-1])]


def run(argv: Sequence[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host command, its output captured as text."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)
