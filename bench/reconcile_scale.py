"""Benchmark (issue 6, must-show 8): 1,000 LLMDeployments on the local control plane, Tidal vs a no-op kopf
operator, in one run.

Starts a real control plane (tidal.devcluster: etcd, kube-apiserver, controller-manager, scheduler, KWOK GPU
nodes), installs the CRDs, then for each operator in turn (the no-op first, then Tidal, each in its own
namespace) starts it as a subprocess, creates N LLMDeployments (1 GPU each) and watches until every one has
been reconciled (``status.observedGeneration`` written). Prints: time until all reconciled, p50/p99
reconcile latency (create acknowledged -> status seen), API requests/s (the API server's own
``apiserver_request_total``, watches excluded, over the phase), peak RSS of the operator (VmHWM), and the
ratios Tidal / no-op. The no-op operator is kopf with one create handler that only writes
``status.observedGeneration`` - kopf's own cost, the floor for any kopf operator.

For Tidal it also prints when every deployment's API Service existed (``all_services_seconds``): the API
server allocates ClusterIPs one at a time (about 2 per second on the 2-core development machine), so Tidal
writes the status first and the Services trail at the API server's pace.

Usage: .venv/bin/python bench/reconcile_scale.py [--count 1000] [--nodes 125] [--profile FILE]
(``--profile``: cProfile of Tidal's event loop thread, written to FILE when it stops; ``TIDAL_PROFILE``.)
Not a test: it prints numbers; the targets are all reconciled within 60 s, p99 within 1 s, RSS <= 2x no-op.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client, watch  # noqa: E402
from tests.support.operator import install_crds  # noqa: E402

from tidal.devcluster import ClusterConfig, DevCluster, GPUNodeSpec  # noqa: E402

GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"
NOOP_OPERATOR = """
import kopf

@kopf.on.startup()
def configure(settings, **_):
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="noop.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="noop.dev")
    settings.posting.level = 30

@kopf.on.create("tidal.dev", "v1alpha1", "llmdeployments")
def create(meta, patch, **_):
    patch.status["observedGeneration"] = meta.get("generation")
"""


class ControlPlaneShim:
    """What tests.support.operator.install_crds needs from the pytest fixture object."""

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster
        self.api_client = cluster.api_client()
        self.core = cluster.core_v1()


def apiserver_requests(cluster: DevCluster) -> float:
    """Non-watch requests the API server has served so far."""
    ctx = ssl.create_default_context(cafile=str(cluster.pki.ca.cert))
    ctx.load_cert_chain(str(cluster.pki.clients["admin"].cert), str(cluster.pki.clients["admin"].key))
    with urllib.request.urlopen(f"{cluster.server}/metrics", context=ctx, timeout=30) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="WATCH"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else float("nan")


def document(ns: str, i: int) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"] = {"name": f"m{i:04d}", "namespace": ns}
    doc["spec"]["autoscaling"]["enabled"] = False
    return doc


def run_phase(
    label: str,
    argv: list[str],
    cluster: DevCluster,
    ns: str,
    count: int,
    work: Path,
    env: dict[str, str] | None = None,
    services: bool = False,
) -> dict[str, float]:
    api = cluster.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": ns}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": "x"}})
    log = (work / f"{label}.log").open("wb")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
    )
    time.sleep(5)  # let it start and list (empty)
    created: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watcher() -> None:
        # A fresh watch per round (it starts with the current state): a watch resumed from an old
        # resourceVersion can fail ("Too large resource version") and must not end the measurement.
        while not done.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(
                    custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, timeout_seconds=30
                ):
                    obj = ev["object"]
                    name = obj["metadata"]["name"]
                    if name not in seen and (obj.get("status") or {}).get("observedGeneration"):
                        seen[name] = time.monotonic()
                        if len(seen) >= count:
                            done.set()
                            w.stop()
                            return
            except Exception as exc:  # restart the watch, keep measuring
                print(f"[{label}] watch restarted: {exc}".splitlines()[0], file=sys.stderr, flush=True)
                time.sleep(0.5)

    t = threading.Thread(target=watcher, daemon=True)
    t.start()
    before = apiserver_requests(cluster)
    start = time.monotonic()
    for i in range(count):
        doc = document(ns, i)
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)
        created[doc["metadata"]["name"]] = time.monotonic()
    created_all = time.monotonic() - start
    done.wait(timeout=600)
    end = time.monotonic()
    after = apiserver_requests(cluster)
    services_done = math.nan
    if services:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if len(core.list_namespaced_service(ns).items) >= count:
                services_done = time.monotonic() - start
                break
            time.sleep(2)
    rss = peak_rss_mib(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    lat = sorted(seen[n] - created[n] for n in seen if n in created)
    result = {
        "reconciled": float(len(seen)),
        "create_seconds": created_all,
        "all_reconciled_seconds": (max(seen.values()) - start) if seen else math.inf,
        "p50_latency_s": statistics.median(lat) if lat else math.inf,
        "p99_latency_s": lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] if lat else math.inf,
        "api_requests_per_s": (after - before) / (end - start),
        "peak_rss_mib": rss,
    }
    if services:
        result["all_services_seconds"] = services_done
    print(f"[{label}] " + ", ".join(f"{k}={v:.3f}" for k, v in result.items()), flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=0, help="8-GPU KWOK nodes (default: count/8, rounded up)")
    p.add_argument("--profile", default="", help="write a cProfile of Tidal's event loop to this file")
    args = p.parse_args()
    # Stop the control plane on SIGTERM too (the default handler would leave its processes running).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nodes = args.nodes or math.ceil(args.count / 8)
    work = Path(tempfile.mkdtemp(prefix="tidal-bench-"))
    cluster = DevCluster(ClusterConfig(work_dir=work / "cluster", gpu_nodes=0))
    cluster.start()
    try:
        names = [f"bench-{i}" for i in range(nodes)]
        cluster.create_gpu_nodes(names, GPUNodeSpec(gpus=8))
        cluster.wait_nodes_ready(names, timeout_s=300)
        install_crds(ControlPlaneShim(cluster))  # type: ignore[arg-type]
        noop_file = work / "noop_operator.py"
        noop_file.write_text(NOOP_OPERATOR)
        env_kc = str(cluster.kubeconfig)
        py = sys.executable
        tidal = str(Path(py).parent / "tidal")
        os.environ["KUBECONFIG"] = env_kc  # kopf's login for the no-op operator
        noop_res = run_phase(
            "noop-kopf",
            [py, "-m", "kopf", "run", "--standalone", "-n", "bench-noop", "--quiet", str(noop_file)],
            cluster,
            "bench-noop",
            args.count,
            work,
        )
        tidal_res = run_phase(
            "tidal",
            [
                tidal,
                "run",
                "--standalone",
                "-n",
                "bench-tidal",
                f"--kubeconfig={env_kc}",
                "--metrics-port=0",
                "--liveness=",
            ],
            cluster,
            "bench-tidal",
            args.count,
            work,
            env={"TIDAL_PROFILE": str(Path(args.profile).resolve())} if args.profile else None,
            services=True,
        )
        print(f"\n{args.count} LLMDeployments, {nodes} KWOK nodes x 8 GPUs (logs {work})")
        print(f"{'metric':<26}{'tidal':>12}{'noop kopf':>12}{'ratio':>10}")
        for key in (
            "all_reconciled_seconds",
            "p50_latency_s",
            "p99_latency_s",
            "api_requests_per_s",
            "peak_rss_mib",
        ):
            a, b = tidal_res[key], noop_res[key]
            print(f"{key:<26}{a:>12.3f}{b:>12.3f}{(a / b if b else math.inf):>10.2f}")
        print(f"{'reconciled':<26}{tidal_res['reconciled']:>12.0f}{noop_res['reconciled']:>12.0f}")
        print(f"{'all_services_seconds':<26}{tidal_res['all_services_seconds']:>12.3f}{'-':>12}")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
