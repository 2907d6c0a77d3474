"""Remove what a real node left on the host, from its directory alone.

Why this exists: a node's supervisor (a test, `devcluster up`) can be killed hard, leaving containerd, the
kubelet, container shims, mounts, network namespaces, CNI cache entries and the bridge behind. This module
finds and removes all of it from the node directory and the state file the node wrote there, so
:meth:`~tidal.devcluster.realnode.RealNode.stop`, the start of a node reusing a directory and
`devcluster down` share one teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tidal.devcluster.realnode.network import PodNetwork
from tidal.devcluster.realnode.prereqs import run

STATE_FILE = "node.json"
"""The node's state (name, containerd socket, network, whether it owns the bridge), under its directory."""
_SHIM_SOCKET_DIR = Path("/run/containerd/s")
_CNI_CACHE_DIR = Path("/var/lib/cni/results")
_DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                yield int(entry.name), [a.decode(errors="replace") for a in argv if a]


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + os.sep
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(code, char)
        if point.startswith(prefix) or point == str(directory):
            found.append(point)
    return found


def _unmount_all(directory: Path) -> None:
    for _ in range(5):
        mounts = _mounts_under(directory)
        if not mounts:
            return
        for point in sorted(set(mounts), key=lambda p: (p.count("/"), len(p)), reverse=True):
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)


def cleanup_node_dir(node_dir: Path, keep_images: bool = False, delete_network: bool = True) -> None:
    """Remove what a real node left under `node_dir` and on the host, from its files alone.

    For a node whose supervisor was killed (and the start of a node reusing a directory): kills the
    kubelet, containerd and shims started for this directory, deletes runc containers, unmounts every
    mount below the directory, removes its container log links and, when the node owned it, the bridge.
    """
    node_dir = node_dir.resolve()
    try:
        state: dict[str, Any] = json.loads((node_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    socket = state.get("socket", str(node_dir / "containerd" / "containerd.sock"))
    marks = (str(node_dir) + os.sep, socket)
    # The kubelet and containerd (by their config paths), then shims (by containerd's address).
    killed = []
    for pid, argv in _processes():
        if not argv or pid == os.getpid() or not any(m in arg for arg in argv for m in marks):
            continue
        program = os.path.basename(argv[0])
        if program in ("kubelet", "containerd") or program.startswith("containerd-shim"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + 5
    while killed and time.monotonic() < deadline:
        killed = [pid for pid in killed if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
        time.sleep(0.05)
    runc_root = node_dir / "containerd" / "state" / "runc" / "k8s.io"
    if runc_root.is_dir():
        for container in run(["runc", "--root", str(runc_root), "list", "-q"], check=False).stdout.split():
            run(["runc", "--root", str(runc_root), "kill", "--all", container, "KILL"], check=False)
            run(["runc", "--root", str(runc_root), "delete", "--force", container], check=False)
    # Shims killed hard leave their sockets in /run/containerd/s, named by a hash of address, namespace, id.
    tasks = node_dir / "containerd" / "state" / "io.containerd.runtime.v2.task"
    with contextlib.suppress(OSError):
        for bundle in tasks.glob("*/*"):
            digest = hashlib.sha256(f"{socket}/{bundle.parent.name}/{bundle.name}".encode()).hexdigest()
            (_SHIM_SOCKET_DIR / digest).unlink(missing_ok=True)
    # Sandboxes torn down without a CNI DEL leave libcni's cache (/var/lib/cni/results/<net>-<id>-<if>).
    sandboxes = {
        path.name
        for top in (node_dir / "containerd" / "state", node_dir / "containerd" / "root")
        for path in top.glob("io.containerd.grpc.v1.cri/sandboxes/*")
    }
    with contextlib.suppress(OSError):
        for cached in _CNI_CACHE_DIR.iterdir():
            if any(f"-{sandbox}-" in cached.name for sandbox in sandboxes):
                cached.unlink(missing_ok=True)
    _unmount_all(node_dir)
    logs = node_dir / "pod-logs"
    with contextlib.suppress(OSError):
        for link in Path("/var/log/containers").iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(logs) + os.sep):
                    link.unlink()
    if delete_network and state.get("owns_network") and state.get("network"):
        PodNetwork.from_json(state["network"]).delete()
    for sub in ("kubelet", "containerd/state", "containerd/opt", "cni/ipam"):
        shutil.rmtree(node_dir / sub, ignore_errors=True)
    if not keep_images:
        shutil.rmtree(node_dir / "containerd" / "root", ignore_errors=True)
    for path in (Path(socket), Path(socket + ".ttrpc")):
        path.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (node_dir / STATE_FILE).unlink()
    _remove_shared_host_paths()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _remove_shared_host_paths() -> None:
    """Remove the host paths every kubelet shares (hard-coded upstream) once no kubelet runs any more:
    the device-plugin socket in /var/lib/kubelet/device-plugins and the empty directories kubelets, libcni
    and containerd create. A directory that is not empty (someone else's) stays."""
    if any(argv and os.path.basename(argv[0]) == "kubelet" for _, argv in _processes()):
        return
    (_DEVICE_PLUGIN_DIR / "kubelet.sock").unlink(missing_ok=True)
    for directory in (
        _DEVICE_PLUGIN_DIR,
        _DEVICE_PLUGIN_DIR.parent,
        _CNI_CACHE_DIR,
        _CNI_CACHE_DIR.parent,
        Path("/var/log/containers"),
        # containerd's CRI parent cgroup of pod containers; rmdir fails while any container cgroup is in it.
        *Path("/sys/fs/cgroup").glob("*/k8s.io"),
    ):
        with contextlib.suppress(OSError):
            directory.rmdir()


def cleanup_node_dirs(nodes_dir: Path) -> None:
    """:func:`cleanup_node_dir` for every node directory under `nodes_dir` (`devcluster down`), then the
    shared bridge recorded in `nodes_dir/network.json`."""
    if not nodes_dir.is_dir():
        return
    for child in sorted(nodes_dir.iterdir()):
        if child.is_dir():
            cleanup_node_dir(child, keep_images=True)
    with contextlib.suppress(OSError, ValueError, KeyError):
        PodNetwork.from_json(json.loads((nodes_dir / "network.json").read_text())).delete()
        (nodes_dir / "network.json").unlink()
