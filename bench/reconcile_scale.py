"""Benchmark (issue 6, must-show 8): 1,000 LLMDeployments on the local control plane, Tidal vs a no-op kopf
operator, in one run.

Starts a real control plane (tidal.devcluster: etcd, kube-apiserver, controller-manager, scheduler, KWOK GPU
nodes), installs the CRDs, then for each operator in turn (the no-op first, then Tidal, each in its own
namespace) starts it as a subprocess, creates N LLMDeployments (1 GPU each) from ``--workers`` concurrent
client threads and watches until every one has been reconciled.

What is measured, per operator:

- ``create_seconds``: how long the benchmark's client needed to create the N objects (the producer's pace).
- ``all_reconciled_seconds``: from the first create request until the last deployment was seen reconciled.
- reconcile latency, per deployment: from the moment its create request was acknowledged (the API server's
  response arrived) until a watch showed ``status.observedGeneration`` >= ``metadata.generation`` (the
  operator's first complete status write: for Tidal, after its pods and PodDisruptionBudget were applied);
  p50/p90/p99 over the N deployments.
- ``api_requests_per_s``: the API server's own ``apiserver_request_total`` (watches excluded; all clients:
  the operator, the benchmark's creates, the scheduler, controller-manager and KWOK acting on what the
  operator created) over the phase, and the requests by verb and resource.
- ``peak_rss_mib``: the operator's peak resident memory (VmHWM), and ``rss_mib`` at the end.

The no-op operator mirrors Tidal's kopf registration: the same settings, the same watched resources (the
LLMDeployments; worker pods, Services and PodDisruptionBudgets by the same label selector, through indexes
and a pod event handler; nodes through an index), the same handler kinds (an event handler for the
LLMDeployments that acts when the generation or labels changed, with kopf's diff base switched off as in
``tidal.shell.diffbase``, a timer, a delete handler and so kopf's finalizer), all ``async`` like Tidal's (no
executor threads), with handler bodies that only write ``status.observedGeneration`` through kopf's patch.
What differs: it creates no children, so its pod, Service and PDB watches carry no objects; it imports no
Tidal code; it keeps kopf's default (unbounded) API connection pool. It is kopf's own cost for Tidal's
shape, the floor for this operator. The report says this too.

For Tidal it also prints when every deployment's API Service existed (``all_services_seconds``): the API
server allocates ClusterIPs one at a time, so Tidal writes the status first and the Services trail.

Usage: .venv/bin/python bench/reconcile_scale.py [--count 1000] [--nodes 125] [--workers 16]
  [--profile FILE] [--memory FILE] [--operator-src DIR]
(``--profile``: cProfile of Tidal's event loop thread, written to FILE when it stops; ``--memory``: run Tidal
under ``bench/memprobe.py`` and write its tracemalloc report to FILE (slow: for finding where memory goes, not
for timing); ``--operator-src``: run the operator from another checkout's ``operator/`` directory, to measure
an older commit with this same benchmark.)
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client, watch  # noqa: E402
from tests.support.operator import install_crds  # noqa: E402

from tidal.devcluster import ClusterConfig, DevCluster, GPUNodeSpec  # noqa: E402
from tidal.devcluster.cluster import free_port  # noqa: E402
from tidal.shell.indexes import WORKER_SELECTOR  # noqa: E402
from tidal.shell.kube import make_api_client  # noqa: E402
from tidal.shell.reconciler import TIMER_INTERVAL_SECONDS  # noqa: E402

GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"
NOOP_OPERATOR = f"""
import logging
import kopf

GROUP, VERSION, PLURAL = {GROUP!r}, {VERSION!r}, {PLURAL!r}
WORKERS = {WORKER_SELECTOR!r}

@kopf.on.startup()
def configure(settings, **_):
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="noop.dev")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)

@kopf.index(GROUP, VERSION, PLURAL)
async def llmd_index(namespace, name, **_):
    return {{(namespace, name): None}}

@kopf.index("pods", labels=WORKERS)
async def pod_index(namespace, name, **_):
    return {{namespace: name}}

@kopf.index("services", labels=WORKERS)
async def service_index(namespace, name, **_):
    return {{namespace: name}}

@kopf.index("policy", "v1", "poddisruptionbudgets", labels=WORKERS)
async def pdb_index(namespace, name, **_):
    return {{namespace: name}}

@kopf.index("nodes")
async def node_index(name, **_):
    return {{None: name}}

class NoDiffBase(kopf.DiffBaseStorage):
    def build(self, *, body, extra_fields=None):
        return {{}}

    def fetch(self, *, body):
        return None

    def store(self, *, body, patch, essence):
        pass

SEEN = {{}}

@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_deployment_event(type, namespace, name, meta, patch, **_):
    if type == "DELETED":
        SEEN.pop((namespace, name), None)
        return
    trigger = (meta.get("generation"), dict(meta.get("labels") or {{}}))
    if SEEN.get((namespace, name)) == trigger:
        return
    SEEN[(namespace, name)] = trigger
    patch.status["observedGeneration"] = meta.get("generation")

@kopf.timer(GROUP, VERSION, PLURAL, interval={TIMER_INTERVAL_SECONDS}, idle={TIMER_INTERVAL_SECONDS / 2})
async def on_timer(**_):
    pass

@kopf.on.event("pods", labels=WORKERS)
async def on_pod_event(**_):
    pass

@kopf.on.delete(GROUP, VERSION, PLURAL)
async def on_delete(**_):
    pass
"""
METRICS = ("all_reconciled_seconds", "p50_latency_s", "p99_latency_s", "api_requests_per_s", "peak_rss_mib")


class ControlPlaneShim:
    """What tests.support.operator.install_crds needs from the pytest fixture object."""

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster
        self.api_client = cluster.api_client()
        self.core = cluster.core_v1()


def apiserver_requests(cluster: DevCluster) -> Counter[str]:
    """Non-watch requests the API server has served so far, by ``VERB resource[/subresource]``."""
    ctx = ssl.create_default_context(cafile=str(cluster.pki.ca.cert))
    ctx.load_cert_chain(str(cluster.pki.clients["admin"].cert), str(cluster.pki.clients["admin"].key))
    with urllib.request.urlopen(f"{cluster.server}/metrics", context=ctx, timeout=30) as r:
        text = r.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{") or 'verb="WATCH"' in line:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        what = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        counts[f"{labels.get('verb', '?')} {what}"] += float(line.rsplit(" ", 1)[1])  # type: ignore[assignment]
    return counts


def operator_requests(port: int) -> Counter[str]:
    """``tidal_kube_requests_total`` of the operator's own metrics endpoint, by ``verb resource``."""
    counts: Counter[str] = Counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
    except OSError:
        return counts
    for line in text.splitlines():
        if line.startswith("tidal_kube_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            counts[f"{labels['verb']} {labels['resource']}"] += float(line.rsplit(" ", 1)[1])  # type: ignore[assignment]
    return counts


def rss_mib(pid: int, key: str = "VmHWM") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"{key}:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else float("nan")


def rss_breakdown(pid: int) -> dict[str, float]:
    """Resident MiB of the process by kind of mapping (from /proc/PID/smaps): the main heap, glibc's
    per-thread malloc arenas (anonymous, 64 MiB-aligned), thread stacks (anonymous, 8 MiB), other anonymous
    mappings (Python's small-object arenas, large allocations), and files (code, libraries)."""
    out: dict[str, float] = Counter()
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            size_kib = (end - start) // 1024
            name = fields[5] if len(fields) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name.startswith("/"):
                kind = "files"
            elif name:
                kind = "other"
            elif start % (64 << 20) == 0:
                kind = "arenas"  # glibc's non-main heaps start 64 MiB-aligned
            elif size_kib == 8192:
                kind = "stacks"
            else:
                kind = "anon"
        elif fields[0] == "Rss:":
            out[kind] += int(fields[1]) / 1024
    return dict(out)


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def _process_name(pid: int, comm: str) -> str | None:
    """Which control plane process ``pid`` is (``None``: another one). kube-apiserver, controller-manager and
    scheduler are one multi-call binary ``kube``, told apart by its first argument."""
    if comm == "kube":
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        sub = argv[1].decode() if len(argv) > 1 else ""
        name = sub if sub.startswith("kube-") else f"kube-{sub}"
        return name if name in CONTROL_PLANE else None
    return comm if comm in CONTROL_PLANE else None


def cpu_seconds(operator_pid: int) -> Counter[str]:
    """CPU seconds (user + system) used so far by the control plane's processes (by name, from /proc) and by
    the operator (``operator``), to see where the 2 cores went during a phase."""
    tick = os.sysconf("SC_CLK_TCK")
    out: Counter[str] = Counter()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(stat.parent.name)
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        name = "operator" if pid == operator_pid else _process_name(pid, comm)
        if name is not None:
            out[name] += used  # type: ignore[assignment]
    return out


def document(ns: str, i: int) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"] = {"name": f"m{i:04d}", "namespace": ns}
    doc["spec"]["autoscaling"]["enabled"] = False
    return doc


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))] if values else math.inf


class Watcher:
    """Records when each deployment of ``ns`` is first seen reconciled (observedGeneration >= generation)."""

    def __init__(self, custom: Any, ns: str, count: int, label: str) -> None:
        self.custom, self.ns, self.count, self.label = custom, ns, count, label
        self.seen: dict[str, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # A fresh watch per round (it starts with the current state): a watch resumed from an old
        # resourceVersion can fail ("Too large resource version") and must not end the measurement.
        while not self.done.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.ns,
                    PLURAL,
                    timeout_seconds=30,
                ):
                    obj = ev["object"]
                    name = obj["metadata"]["name"]
                    observed = (obj.get("status") or {}).get("observedGeneration") or 0
                    if name not in self.seen and observed >= obj["metadata"].get("generation", 1):
                        self.seen[name] = time.monotonic()
                        if len(self.seen) >= self.count:
                            self.done.set()
                            w.stop()
                            return
            except Exception as exc:  # restart the watch, keep measuring
                print(f"[{self.label}] watch restarted: {exc}".splitlines()[0], file=sys.stderr, flush=True)
                time.sleep(0.5)


def create_all(custom: Any, ns: str, count: int, workers: int, rate: float = 0.0) -> dict[str, float]:
    """Create the N deployments from ``workers`` threads; the acknowledgement time of each. ``rate`` > 0:
    object ``i`` is sent no earlier than ``i / rate`` seconds after the start (a paced producer)."""
    docs = [document(ns, i) for i in range(count)]
    created: dict[str, float] = {}
    start = time.monotonic()

    def create(i: int, doc: dict[str, Any]) -> None:
        if rate > 0:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc, _preload_content=False).read()
        created[doc["metadata"]["name"]] = time.monotonic()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(create, i, d) for i, d in enumerate(docs)]:
            future.result()
    return created


def run_phase(
    label: str,
    argv: list[str],
    cluster: DevCluster,
    ns: str,
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str] | None = None,
    metrics_port: int = 0,
) -> dict[str, Any]:
    api = make_api_client(cluster.kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": ns}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": "x"}})
    log = (work / f"{label}.log").open("wb")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
    )
    time.sleep(8)  # let it start and list (empty)
    idle_rss = rss_mib(proc.pid, "VmRSS")
    watcher = Watcher(custom, ns, args.count, label)
    before = apiserver_requests(cluster)
    cpu_before = cpu_seconds(proc.pid)
    start = time.monotonic()
    created = create_all(custom, ns, args.count, args.workers, args.rate)
    created_all = time.monotonic() - start
    watcher.done.wait(timeout=900)
    end = time.monotonic()
    after = apiserver_requests(cluster)
    cpu = cpu_seconds(proc.pid)
    cpu.subtract(cpu_before)
    result: dict[str, Any] = {"cpu": cpu}
    if metrics_port:
        services_done = math.nan
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if len(core.list_namespaced_service(ns, _request_timeout=60).items) >= args.count:
                services_done = time.monotonic() - start
                break
            time.sleep(2)
        result["all_services_seconds"] = services_done
        result["operator_requests"] = operator_requests(metrics_port)
    peak, last = rss_mib(proc.pid), rss_mib(proc.pid, "VmRSS")
    breakdown = rss_breakdown(proc.pid)
    proc.send_signal(signal.SIGINT)  # kopf stops cleanly (and the profilers write their files)
    try:
        proc.wait(timeout=600 if args.memory else 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    seen = watcher.seen
    lat = sorted(seen[n] - created[n] for n in seen if n in created)
    result.update(
        {
            "reconciled": float(len(seen)),
            "create_seconds": created_all,
            "all_reconciled_seconds": (max(seen.values()) - start) if seen else math.inf,
            "p50_latency_s": statistics.median(lat) if lat else math.inf,
            "p90_latency_s": percentile(lat, 0.90),
            "p99_latency_s": percentile(lat, 0.99),
            "api_requests_per_s": sum((after - before).values()) / (end - start),
            "peak_rss_mib": peak,
            "rss_mib": last,
            "idle_rss_mib": idle_rss,
            "requests": after - before,
            "rss_breakdown": breakdown,
        }
    )
    print(
        f"[{label}] " + ", ".join(f"{k}={v:.3f}" for k, v in result.items() if isinstance(v, float)),
        flush=True,
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=0, help="8-GPU KWOK nodes (default: count/8, rounded up)")
    p.add_argument("--workers", type=int, default=16, help="client threads creating the deployments")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="create at most this many deployments per second (default 0: as fast as --workers allow)",
    )
    p.add_argument("--profile", default="", help="write a cProfile of Tidal's event loop to this file")
    p.add_argument("--memory", default="", help="run Tidal under bench/memprobe.py, report to this file")
    p.add_argument("--operator-src", default="", help="run the operator from this operator/ directory")
    p.add_argument("--skip-noop", action="store_true", help="measure Tidal only (while iterating)")
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
        kubeconfig = str(cluster.kubeconfig)
        py = sys.executable
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's login for the no-op operator
        noop_res: dict[str, Any] = {}
        if not args.skip_noop:
            noop_res = run_phase(
                "noop-kopf",
                [py, "-m", "kopf", "run", "--standalone", "-n", "bench-noop", "--quiet", str(noop_file)],
                cluster,
                "bench-noop",
                args,
                work,
            )
        env: dict[str, str] = {}
        if args.profile:
            env["TIDAL_PROFILE"] = str(Path(args.profile).resolve())
        if args.operator_src:
            env["PYTHONPATH"] = str(Path(args.operator_src).resolve())
        prefix = [py]
        if args.memory:
            prefix += [str(ROOT / "bench" / "memprobe.py"), str(Path(args.memory).resolve())]
        port = free_port()
        tidal_res = run_phase(
            "tidal",
            [
                *prefix,
                "-c",
                "import sys; from tidal.cli import main; sys.argv[0] = 'tidal'; sys.exit(main())",
                "run",
                "--standalone",
                "-n",
                "bench-tidal",
                f"--kubeconfig={kubeconfig}",
                f"--metrics-port={port}",
                "--metrics-address=127.0.0.1",
                "--liveness=",
            ],
            cluster,
            "bench-tidal",
            args,
            work,
            env=env,
            metrics_port=port,
        )
        report(args, nodes, work, tidal_res, noop_res)
    finally:
        cluster.stop()
    return 0


def report(
    args: argparse.Namespace, nodes: int, work: Path, tidal: dict[str, Any], noop: dict[str, Any]
) -> None:
    print(
        f"\n{args.count} LLMDeployments, {nodes} KWOK nodes x 8 GPUs, created from {args.workers} threads "
        + (f"at {args.rate:g}/s " if args.rate > 0 else "")
        + f"(logs {work}); load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'metric':<26}{'tidal':>12}{'noop kopf':>12}{'ratio':>10}")
    for key in (
        "create_seconds",
        "all_reconciled_seconds",
        "p50_latency_s",
        "p90_latency_s",
        "p99_latency_s",
        "api_requests_per_s",
        "peak_rss_mib",
        "rss_mib",
        "idle_rss_mib",
        "reconciled",
    ):
        a, b = tidal[key], noop.get(key, math.nan)
        print(f"{key:<26}{a:>12.3f}{b:>12.3f}{(a / b if b else math.inf):>10.2f}")
    print(f"{'all_services_seconds':<26}{tidal['all_services_seconds']:>12.3f}{'-':>12}")
    print("\nAPI server requests during the phase (watches excluded), per deployment:")
    keys = sorted(set(tidal["requests"]) | set(noop.get("requests", {})), key=lambda k: -tidal["requests"][k])
    for key in keys:
        a, b = tidal["requests"][key], noop.get("requests", Counter())[key]
        if a >= 0.05 * args.count or b >= 0.05 * args.count:
            print(f"  {key:<40}{a / args.count:>8.2f}{b / args.count:>8.2f}")
    print("Resident MiB at the end by kind of mapping (tidal, noop kopf):")
    for key in sorted(tidal["rss_breakdown"]):
        b = noop.get("rss_breakdown", {}).get(key, math.nan)
        print(f"  {key:<40}{tidal['rss_breakdown'][key]:>8.1f}{b:>8.1f}")
    print("CPU seconds used until all were reconciled, by process (tidal, noop kopf):")
    for key in ("operator", *CONTROL_PLANE):
        print(f"  {key:<40}{tidal['cpu'][key]:>8.1f}{noop.get('cpu', Counter())[key]:>8.1f}")
    print("Tidal's own requests (tidal_kube_requests_total), per deployment:")
    for key, value in sorted(tidal["operator_requests"].items()):
        print(f"  {key:<40}{value / args.count:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
