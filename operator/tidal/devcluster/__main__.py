"""`python -m tidal.devcluster up|down|status|serve`: a control plane a person can use with kubectl.

`up` starts `serve` in the background (its own session, detached from the terminal), waits until the
cluster is ready and prints the kubeconfig path. `serve` runs the cluster in the foreground and stops it on
SIGTERM/SIGINT. State (supervisor pid, component pids, kubeconfig, server) is kept in
`<state-dir>/devcluster/state.json`, so `down` and `status` work from any later shell.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tidal.devcluster.binaries import ControlPlaneNotBuiltError, find_bin_dir
from tidal.devcluster.cluster import ClusterConfig, ClusterStartError, DevCluster
from tidal.devcluster.nodes import GPUNodeSpec
from tidal.devcluster.process import group_alive, kill_group, processes_running_from
from tidal.devcluster.realnode import (
    NodeNotBuiltError,
    NodeStartError,
    cleanup_node_dirs,
    default_node_images,
    find_kubelet,
)


def _work_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir).resolve() / "devcluster"


def _state_path(args: argparse.Namespace) -> Path:
    return _work_dir(args) / "state.json"


def _read_state(args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(_state_path(args).read_text())
    except (OSError, ValueError):
        return None
    return data


def _write_state(args: argparse.Namespace, state: dict[str, Any]) -> None:
    path = _state_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _config(args: argparse.Namespace) -> ClusterConfig:
    kubeconfig = Path(args.kubeconfig) if args.kubeconfig else Path(args.state_dir) / "kubeconfig"
    return ClusterConfig(
        work_dir=_work_dir(args),
        kubeconfig_path=kubeconfig,
        gpu_nodes=args.gpu_nodes,
        gpu_node=GPUNodeSpec(gpu_product=args.gpu_product, gpus=args.gpus_per_node),
        ready_timeout_s=args.timeout,
        real_nodes=args.real_nodes,
        real_node_images=tuple(dict.fromkeys(Path(p).resolve() for p in args.node_image)),
        keep_node_images=True,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the cluster in the foreground until SIGTERM or SIGINT."""
    stopping = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    state: dict[str, Any] = {"status": "starting", "supervisor_pid": os.getpid()}
    _write_state(args, state)
    try:
        cluster = DevCluster(_config(args))
        state["components"] = {}
        state["bin_dir"] = str(cluster.bin_dir)
        cluster.start()
    except (ClusterStartError, ControlPlaneNotBuiltError, NodeStartError, NodeNotBuiltError) as exc:
        _write_state(args, {**state, "status": "failed", "error": str(exc)})
        print(exc, file=sys.stderr)
        return 1
    state.update(
        status="ready",
        components=cluster.pids(),
        kubeconfig=str(cluster.kubeconfig),
        server=cluster.server,
        logs=str(cluster.log_dir),
        startup_seconds=round(cluster.startup_seconds, 2),
        real_nodes={node.name: node.timings for node in cluster.real_nodes},
    )
    _write_state(args, state)
    print(f"devcluster: ready in {cluster.startup_seconds:.1f}s at {cluster.server}", flush=True)
    try:
        while not stopping:
            dead = [c.name for c in cluster.components.values() if c.exited() is not None]
            if dead and state["status"] != "degraded":
                state.update(status="degraded", error=f"exited: {', '.join(dead)}")
                _write_state(args, state)
                print(f"devcluster: component(s) exited: {dead}\n{cluster.logs_summary()}", flush=True)
            time.sleep(0.5)
    finally:
        cluster.stop()
        _write_state(args, {**state, "status": "stopped"})
    print("devcluster: stopped", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start `serve` in the background and wait for it to report ready."""
    state = _read_state(args)
    if (
        state
        and state.get("status") in ("ready", "starting", "degraded")
        and _pid_alive(state["supervisor_pid"])
    ):
        print(
            f"devcluster: already running (pid {state['supervisor_pid']}), "
            f"kubeconfig {state.get('kubeconfig')}"
        )
        return 0
    try:
        find_bin_dir()
        if args.real_nodes:
            find_kubelet()
            # The pause image first (built or found by scripts/build-images.sh), then the images asked for.
            given = [Path(p).resolve() for p in args.node_image]
            args.node_image = [str(p) for p in dict.fromkeys([*_default_images(given), *given])]
    except (ControlPlaneNotBuiltError, NodeNotBuiltError, subprocess.CalledProcessError) as exc:
        print(exc, getattr(exc, "stderr", None) or "", file=sys.stderr)
        return 1
    work = _work_dir(args)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    _state_path(args).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "tidal.devcluster", "serve", *_passthrough(args)]
    with (work / "logs" / "supervisor.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + args.timeout + 15 + 600 * args.real_nodes
    while time.monotonic() < deadline:
        state = _read_state(args)
        if state and state.get("status") == "ready":
            print(f"devcluster: ready in {state['startup_seconds']}s at {state['server']}")
            print(f"  kubectl --kubeconfig {state['kubeconfig']} get nodes")
            print(f"  logs: {state['logs']}; stop with `python -m tidal.devcluster down` (make cluster-down)")
            return 0
        if (state and state.get("status") == "failed") or proc.poll() is not None:
            print("devcluster: failed to start\n" + (state or {}).get("error", ""), file=sys.stderr)
            print(f"  see {work / 'logs'}", file=sys.stderr)
            return 1
        time.sleep(0.3)
    print("devcluster: timed out waiting for the cluster; stopping it", file=sys.stderr)
    kill_group(proc.pid, 30)
    return 1


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = [
        f"--state-dir={args.state_dir}",
        f"--gpu-nodes={args.gpu_nodes}",
        f"--gpu-product={args.gpu_product}",
        f"--gpus-per-node={args.gpus_per_node}",
        f"--timeout={args.timeout}",
        f"--real-nodes={args.real_nodes}",
        *(f"--node-image={p}" for p in args.node_image),
    ]
    if args.kubeconfig:
        out.append(f"--kubeconfig={args.kubeconfig}")
    return out


def _default_images(given: list[Path]) -> list[Path]:
    """The pause image tar (scripts/build-images.sh); none if that script is absent but images are given."""
    try:
        return [p.resolve() for p in default_node_images()]
    except NodeNotBuiltError:
        if given:
            return []
        raise


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the supervisor; kill any component process group it left behind."""
    state = _read_state(args)
    if not state:
        print("devcluster: not running (no state)")
        return 0
    pid = int(state.get("supervisor_pid", 0))
    if pid and _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
        if _pid_alive(pid):
            kill_group(pid, 5)
    bin_dir = Path(state["bin_dir"]) if state.get("bin_dir") else None
    ours = {p for p, _ in processes_running_from(bin_dir)} if bin_dir else set()
    for name, pgid in reversed(list(state.get("components", {}).items())):
        if pgid in ours and group_alive(pgid):
            print(f"devcluster: {name} (pgid {pgid}) outlived the supervisor; killing it")
            kill_group(pgid)
    cleanup_node_dirs(_work_dir(args) / "nodes")  # what real nodes left if their supervisor was killed
    _state_path(args).unlink(missing_ok=True)
    print("devcluster: stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the state and whether each process lives; exit 0 only when the cluster is ready."""
    state = _read_state(args)
    if not state:
        print("devcluster: not running")
        return 1
    alive = _pid_alive(int(state.get("supervisor_pid", 0)))
    print(f"devcluster: {state.get('status')} (supervisor pid {state.get('supervisor_pid')}, alive={alive})")
    for key in ("server", "kubeconfig", "logs", "startup_seconds", "error"):
        if key in state:
            print(f"  {key}: {state[key]}")
    for name, pid in state.get("components", {}).items():
        print(f"  {name}: pid {pid} alive={_pid_alive(pid)}")
    return 0 if alive and state.get("status") == "ready" else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m tidal.devcluster`."""
    parser = argparse.ArgumentParser(prog="python -m tidal.devcluster", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status", "serve"))
    parser.add_argument("--state-dir", default=".tidal", help="state, logs and kubeconfig (default .tidal)")
    parser.add_argument(
        "--kubeconfig", default="", help="admin kubeconfig path (default <state-dir>/kubeconfig)"
    )
    parser.add_argument("--gpu-nodes", type=int, default=2, help="fake GPU nodes to create (default 2)")
    parser.add_argument("--gpu-product", default=GPUNodeSpec.gpu_product, help="nvidia.com/gpu.product label")
    parser.add_argument("--gpus-per-node", type=int, default=GPUNodeSpec.gpus, help="nvidia.com/gpu per node")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument(
        "--real-nodes",
        type=int,
        default=int(os.environ.get("KUBELET_NODES") or 0),
        help="real kubelet nodes (containerd + runc) beside the fake ones (default $KUBELET_NODES or 0)",
    )
    parser.add_argument(
        "--node-image",
        action="append",
        default=os.environ.get("KUBELET_NODE_IMAGES", "").split(),
        help="docker-archive tar to import into the real nodes (repeatable; default $KUBELET_NODE_IMAGES); "
        "the pause image from scripts/build-images.sh is added when that script exists",
    )
    args = parser.parse_args(argv)
    handlers = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "serve": cmd_serve}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
