"""Start-up time and clean teardown of the development cluster, through the library and the CLI.

A warm start (binaries built) must reach ready (apiserver /readyz, default ServiceAccount, fake GPU nodes
Ready) in 30 s or less, and stopping must leave no control plane process behind: a leaked etcd or
apiserver would hold ports and memory on CI machines and hide bugs in later runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tidal.devcluster import ClusterConfig, ControlPlaneNotBuiltError, DevCluster, find_bin_dir
from tidal.devcluster.process import group_alive, processes_running_from

WARM_START_LIMIT_S = 30.0


@pytest.fixture
def bin_dir() -> Path:
    problem = ""
    try:
        return find_bin_dir()
    except ControlPlaneNotBuiltError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_warm_start_is_fast_and_teardown_leaves_no_process(
    tmp_path: Path, bin_dir: Path, record_property: Callable[[str, object], None]
) -> None:
    before = {pid for pid, _ in processes_running_from(bin_dir)}
    cluster = DevCluster(ClusterConfig(work_dir=tmp_path / "cluster", gpu_nodes=2))
    try:
        cluster.start()
        pids = cluster.pids()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        assert all(_alive(pid) for pid in pids.values())
        nodes = cluster.core_v1().list_node().items
        assert sorted(n.metadata.name for n in nodes) == ["gpu-node-0", "gpu-node-1"]
        started = {pid for pid, _ in processes_running_from(bin_dir)} - before
        assert set(pids.values()) <= started
    finally:
        cluster.stop()
    seconds = cluster.startup_seconds
    print(f"warm start to ready (2 GPU nodes Ready): {seconds:.1f}s")
    record_property("warm_start_seconds", round(seconds, 2))
    leftovers = {pid for pid, _ in processes_running_from(bin_dir)} - before
    assert not leftovers, f"processes survived teardown: {leftovers}"
    assert not any(group_alive(pgid) and _alive(pgid) for pgid in pids.values())
    assert seconds <= WARM_START_LIMIT_S, f"warm start took {seconds:.1f}s (limit {WARM_START_LIMIT_S}s)"


def test_cli_up_status_down(tmp_path: Path, bin_dir: Path) -> None:
    """`python -m tidal.devcluster up` leaves a usable cluster running in the background; `down` stops it."""
    state_dir = tmp_path / "state"
    kubeconfig = tmp_path / "kubeconfig"
    base = [sys.executable, "-m", "tidal.devcluster"]
    opts = [f"--state-dir={state_dir}", f"--kubeconfig={kubeconfig}", "--gpu-nodes=1", "--timeout=60"]
    try:
        up = subprocess.run([*base, "up", *opts], capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((state_dir / "devcluster" / "state.json").read_text())
        assert state["status"] == "ready"
        assert kubeconfig.is_file()

        status = subprocess.run([*base, "status", *opts], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr

        kubectl = Path(sys.executable).parent / "kubectl"
        if kubectl.exists():
            out = subprocess.run(
                [str(kubectl), "--kubeconfig", str(kubeconfig), "get", "nodes", "-o", "name"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            assert "node/gpu-node-0" in out.stdout
    finally:
        down = subprocess.run([*base, "down", *opts], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    supervisor = int(state["supervisor_pid"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(supervisor):
        time.sleep(0.1)
    assert not _alive(supervisor)
    survivors = [pid for pid in state["components"].values() if _alive(pid)]
    assert not survivors, f"components survived `down`: {survivors}"
    after = subprocess.run([*base, "status", *opts], capture_output=True, text=True, timeout=30)
    assert after.returncode == 1


_HOLDER = """
import json, sys, time
from pathlib import Path
from tidal.devcluster import ClusterConfig, DevCluster
cluster = DevCluster(ClusterConfig(work_dir=Path(sys.argv[1])))
cluster.start()
print(json.dumps(cluster.pids()), flush=True)
time.sleep(600)
"""


def test_components_die_with_a_killed_parent(tmp_path: Path, bin_dir: Path) -> None:
    """A test run killed with SIGKILL (no teardown at all) still leaves no control plane process."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "cluster")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, "the holder process did not start a cluster"
        pids: dict[str, int] = json.loads(line)
        assert all(_alive(pid) for pid in pids.values())
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    survivors = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not survivors, f"survived the death of their parent: {survivors}"
