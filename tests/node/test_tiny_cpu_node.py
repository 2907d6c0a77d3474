"""The node tier: Tidal's worker pods on a REAL kubelet (containerd + runc + a CNI bridge), end to end with
the vLLM CPU engine, from the image with no Tidal code in it (issue 18).

One module, one cluster (its own control plane, no KWOK nodes, one real node ``real-0`` with fake GPUs), the
operator installed with the Helm chart from the locally built operator image (non-root, running on ``real-0``
in the node's network namespace: there is no kube-proxy, so ``KUBERNETES_SERVICE_HOST`` points at the API
server on loopback), and ``examples/tiny-cpu.yaml`` applied as a user would. The tests run in order and share
the deployment:

1. it reaches ``Ready=True`` through the pod's real probes, on ``real-0``, and answers a completion;
2. a real Prometheus scrapes the real pod's engine metrics;
3. a scale-down through the kubelet (preStop, SIGTERM, the worker's drain) with 20 streams in flight on the
   two replicas: 0 failed, 0 truncated, and streams were in flight on the pod removed;
4. the engine process killed: the kubelet restarts the container, the pod is Ready again and the deployment
   says so (``status.restarts``, an ``EngineRestarted`` Event);
5. delete: the finalizer runs, the pods (really stopped by the kubelet), Services, budget and worker-code
   ConfigMap go.

Prerequisites are built by ``make node`` and ``scripts/build-images.sh`` (both cached under TIDAL_CACHE);
when one is missing the fixture FAILS saying what to run: this tier never skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client

from tests.support.cluster import ControlPlane
from tests.support.engine import free_ports
from tests.support.helm import install_chart
from tests.support.operator import wait_for
from tests.support.prometheus import ScrapeTarget, running_prometheus
from tests.support.streams import StreamResult, stream_completion
from tests.support.tinymodel import make_tiny_model
from tidal.devcluster import ClusterConfig, DevCluster, find_bin_dir
from tidal.devcluster.realnode import NodeNotBuiltError, find_kubelet

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-cpu.yaml"
MODELS = Path("/var/lib/tidal-dev/models")
"""The example's hostPath: the tiny model is copied to MODELS/tiny (world-readable: the pod runs non-root)."""
NAME, NS, PORT = "tiny-cpu", "default", 8000
STREAMS = 20
STREAM_TOKENS = 1000  # with the prompt, just under the example's maxModelLen (1024): the tiny model is fast
GROUP, VERSION, PLURAL = "tidal.dev", "v1alpha1", "llmdeployments"
OPERATOR_NS = "tidal-system"


@dataclass
class Node:
    """What the tests share."""

    cp: ControlPlane
    cluster: DevCluster
    custom: client.CustomObjectsApi

    def kubectl(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(
            ["kubectl", f"--kubeconfig={self.cp.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
        return out.stdout

    def llmd(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)
        return obj

    def condition(self, kind: str) -> dict[str, Any]:
        return next((c for c in self.llmd().get("status", {}).get("conditions", []) if c["type"] == kind), {})

    def pods(self) -> list[Any]:
        items = self.cp.core.list_namespaced_pod(NS, label_selector=f"tidal.dev/deployment={NAME}").items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def ready_pods(self) -> list[Any]:
        return [
            p
            for p in self.pods()
            if p.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def events(self, reason: str) -> list[Any]:
        return [
            e
            for e in self.cp.core.list_namespaced_event(NS).items
            if e.reason == reason and e.involved_object.name == NAME
        ]

    def operator_logs(self, lines: int = 40) -> str:
        out = subprocess.run(
            [
                "kubectl",
                f"--kubeconfig={self.cp.kubeconfig}",
                "logs",
                "-n",
                OPERATOR_NS,
                "--all-containers",
                f"--tail={lines}",
                "-l",
                "app.kubernetes.io/name=tidal",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout + out.stderr

    def debug_pods(self) -> str:
        return f"pods: {self.kubectl('get', 'pods', '-o', 'wide', '-A')}\noperator: {self.operator_logs()}"

    def debug(self) -> str:
        return (
            f"llmd status: {json.dumps(self.llmd().get('status', {}), indent=1)[:3000]}\n"
            f"pods: {self.kubectl('get', 'pods', '-o', 'wide', '-A')}\n"
            f"operator: {self.operator_logs()}\n{self.cluster.real_nodes[0].logs_summary(20)}"
        )


def _fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


def _images(*names: str) -> list[Path]:
    """Image tars from scripts/build-images.sh (built when missing: all three cold about 2.5 min, cached)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh"), *names],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        _fail(f"scripts/build-images.sh {' '.join(names)} failed:\n{out.stderr[-3000:]}")
    return [Path(line) for line in out.stdout.split() if line.endswith(".tar")]


def _install_model() -> None:
    """The tiny model where the example's PersistentVolume points, readable by the pod's non-root user."""
    src = make_tiny_model()
    dst = MODELS / "tiny"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for path in [MODELS.parent, MODELS, dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _model_volume(cp: ControlPlane) -> None:
    """The hostPath PersistentVolume and its claim the example's header describes (pvc://tidal-dev-models)."""
    docs = [d for d in yaml.safe_load_all(_header_yaml()) if d]
    assert [d["kind"] for d in docs] == ["PersistentVolume", "PersistentVolumeClaim"], docs
    cp.core.create_persistent_volume(docs[0])
    cp.core.create_namespaced_persistent_volume_claim(NS, docs[1])


def _header_yaml() -> str:
    """The PV/PVC YAML block commented in the example's header (so the test applies what the file tells a
    user to apply)."""
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "#      apiVersion: v1")
    block = []
    for line in lines[start:]:
        if not line.startswith("#      ") and line.strip() != "#      ---":
            break
        block.append(line[len("#      ") :])
    return "\n".join(block)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    try:
        find_bin_dir()
        find_kubelet()
    except (NodeNotBuiltError, RuntimeError) as exc:
        _fail(f"{exc} (the node tier needs `make controlplane node`)")
    images = _images("pause", "vllm")  # the node's seeded image store
    operator_image = _images("operator")  # changes with every commit: imported apart
    work = tmp_path_factory.mktemp("nodetier")
    cluster = DevCluster(
        ClusterConfig(work_dir=work, gpu_nodes=0, real_nodes=1, real_node_images=tuple(images))
    )
    cluster.start()
    try:
        cp = ControlPlane(
            cluster=cluster,
            kubeconfig=cluster.kubeconfig,
            api_client=cluster.api_client(),
            core=cluster.core_v1(),
        )
        real = cluster.real_nodes[0]
        real.import_images(operator_image)
        print(
            f"\nnode tier: cluster with {real.name} ready in {cluster.startup_seconds:.1f}s ({real.timings})"
        )
        _install_model()
        node = Node(cp, cluster, client.CustomObjectsApi(cp.api_client))
        _install_operator(node)
        _model_volume(cp)
        yield node
    finally:
        cluster.stop()


def _install_operator(node: Node) -> None:
    """``helm install`` with the local operator image, one replica on the real node."""
    health, metrics = free_ports(2)
    port = node.cp.server.rsplit(":", 1)[1]
    values = {
        "image": {"repository": "tidal.local/tidal-operator", "tag": "dev", "pullPolicy": "IfNotPresent"},
        "replicaCount": 1,
        "hostNetwork": True,
        "nodeSelector": {"tidal.dev/real-node": "true"},
        "operator": {
            "healthPort": health,
            "metricsPort": metrics,
            "env": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": port},
            ],
        },
    }
    install_chart(node.cp.kubeconfig, "tidal", OPERATOR_NS, values)

    def running() -> list[Any]:
        pods = node.cp.core.list_namespaced_pod(OPERATOR_NS).items
        return [
            p
            for p in pods
            if p.spec.node_name == "real-0"
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    try:
        pods = wait_for(running, 180, 1.0, "the chart's operator pod Ready on real-0")
    except AssertionError:
        raise AssertionError(node.debug_pods()) from None
    pod = pods[0]
    container = pod.spec.containers[0]
    assert container.image == "tidal.local/tidal-operator:dev"
    uid = node.kubectl("exec", "-n", OPERATOR_NS, pod.metadata.name, "--", "id", "-u").strip()
    assert uid != "0" and pod.spec.security_context.run_as_non_root, (uid, pod.spec.security_context)
    print(f"operator: chart installed, pod {pod.metadata.name} Ready on real-0 as uid {uid}")


@pytest.mark.timeout(900)
def test_tiny_cpu_is_ready_on_the_real_node_and_answers(node: Node) -> None:
    node.kubectl("apply", "-f", str(EXAMPLE))
    t0 = time.monotonic()
    try:
        wait_for(lambda: node.condition("Ready").get("status") == "True", 600, 2.0, "Ready=True")
    except AssertionError:
        raise AssertionError(node.debug()) from None
    pods = node.ready_pods()
    assert len(pods) == 1, node.debug()
    pod = pods[0]
    assert pod.spec.node_name == "real-0"
    assert pod.spec.containers[0].image == "tidal.local/vllm-cpu:dev"
    print(
        f"tiny-cpu Ready {time.monotonic() - t0:.0f}s after apply, pod {pod.metadata.name} "
        f"{pod.status.pod_ip}"
    )
    # The image has no Tidal code: the operator package is not importable in the container.
    probe = subprocess.run(
        [
            "kubectl",
            f"--kubeconfig={node.cp.kubeconfig}",
            "exec",
            pod.metadata.name,
            "--",
            "python3",
            "-c",
            "import tidal",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "No module named 'tidal'" in probe.stderr, probe
    body = json.dumps({"model": "tiny", "prompt": "The tide", "max_tokens": 8}).encode()
    out = asyncio.run(_post(f"http://{pod.status.pod_ip}:{PORT}/v1/completions", body))
    assert out["choices"][0]["text"] and out["usage"]["completion_tokens"] == 8, out


async def _post(url: str, body: bytes) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


@pytest.mark.timeout(300)
def test_prometheus_scrapes_the_real_pod(node: Node, tmp_path: Path) -> None:
    ip = node.ready_pods()[0].status.pod_ip
    with running_prometheus([ScrapeTarget("tidal-workers", [f"{ip}:{PORT}"])], workdir=tmp_path) as prom:
        series = wait_for(
            lambda: prom.vector('vllm:num_requests_running{job="tidal-workers"}'),
            120,
            1.0,
            "the engine's vllm:num_requests_running scraped from the pod",
        )
    assert float(series[0]["value"][1]) >= 0


@pytest.mark.timeout(900)
def test_scale_down_drains_streams_through_the_kubelet(node: Node) -> None:
    node.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME, {"spec": {"replicas": 2}})
    try:
        wait_for(lambda: len(node.ready_pods()) == 2, 600, 2.0, "two ready replicas")
    except AssertionError:
        raise AssertionError(node.debug()) from None
    pods = {p.metadata.name: p.status.pod_ip for p in node.ready_pods()}
    out = asyncio.run(_scale_down_under_load(node, pods))
    results: list[StreamResult] = out["results"]
    removed = out["removed"]
    failed = [r for r in results if r.status != 200 or r.error]
    truncated = [r for r in results if not r.complete(STREAM_TOKENS)]
    print(
        f"scale 2 -> 1 through the kubelet: {len(results)} streams, "
        f"{out['in_flight_on_removed']} in flight on "
        f"{removed} when scaled, {len(failed)} failed, {len(truncated)} truncated, pod gone after "
        f"{out['gone_after']:.0f}s"
    )
    assert out["in_flight_on_removed"] > 0, "the removed replica must have had streams in flight"
    assert not failed, failed
    assert not truncated, truncated
    assert [p.metadata.name for p in node.pods()] != [removed]
    assert node.llmd()["status"]["replicas"] == 1


async def _scale_down_under_load(node: Node, pods: dict[str, str]) -> dict[str, Any]:
    names = sorted(pods)
    url = {n: f"http://{pods[n]}:{PORT}" for n in names}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        streams: list[tuple[str, asyncio.Future[StreamResult], asyncio.Event]] = []

        def launch(n: str, count: int) -> None:
            for _ in range(count):
                started = asyncio.Event()
                task = stream_completion(session, url[n], len(streams), started, STREAM_TOKENS)
                streams.append((n, asyncio.ensure_future(task), started))

        def streaming(n: str) -> int:
            return sum(1 for m, t, started in streams if m == n and started.is_set() and not t.done())

        for n in names:
            launch(n, STREAMS // len(names))
        # Scale while both replicas stream. The tiny model is fast: one replica's streams can finish while
        # the other's first token is still coming (it happened in CI), so a replica whose streams all
        # finished gets a new batch; every stream launched counts in the result.
        deadline = time.monotonic() + 180
        while not all(streaming(n) for n in names):
            assert time.monotonic() < deadline, "streams never ran on both replicas at once"
            for n in names:
                if all(t.done() for m, t, _ in streams if m == n):
                    launch(n, STREAMS // len(names))
            await asyncio.sleep(0.05)
        in_flight = {n: sum(1 for m, t, _ in streams if m == n and not t.done()) for n in names}
        t0 = time.monotonic()
        await asyncio.to_thread(node.kubectl, "scale", f"llmd/{NAME}", "--replicas=1", "-n", NS)
        remaining = await asyncio.to_thread(
            wait_for, lambda: len(node.pods()) == 1 and node.pods(), 300, 1.0, "one replica left"
        )
        removed = next(n for n in names if n != remaining[0].metadata.name)
        results = list(await asyncio.gather(*(t for _, t, _ in streams)))

        def gone() -> bool:
            try:
                node.cp.core.read_namespaced_pod(removed, NS)
            except client.ApiException as exc:
                return exc.status == 404
            return False

        await asyncio.to_thread(wait_for, gone, 300, 1.0, f"pod {removed} deleted by the kubelet")
        gone_after = time.monotonic() - t0
    return {
        "results": results,
        "removed": removed,
        "in_flight_on_removed": in_flight[removed],
        "gone_after": gone_after,
    }


_KILL_ENGINE = (
    "import os, signal\n"
    "pids = [p for p in os.listdir('/proc') if p.isdigit() and p != str(os.getpid()) and "
    "b'vllm.entrypoints' in open(f'/proc/{p}/cmdline', 'rb').read()]\n"
    "[os.kill(int(p), signal.SIGKILL) for p in pids]\n"
    "print(len(pids))\n"
)


@pytest.mark.timeout(900)
def test_killed_engine_is_restarted_by_the_kubelet_and_reported(node: Node) -> None:
    pod = node.ready_pods()[0]
    name = pod.metadata.name
    before = sum(c.restart_count for c in pod.status.container_statuses or [])
    killed = node.kubectl("exec", name, "-n", NS, "--", "python3", "-c", _KILL_ENGINE)
    assert int(killed.strip()) >= 1, "no vLLM engine process found in the container"

    def restarted_and_ready() -> bool:
        p = node.cp.core.read_namespaced_pod(name, NS)
        restarts = sum(c.restart_count for c in p.status.container_statuses or [])
        ready = any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        return restarts > before and ready

    try:
        wait_for(restarted_and_ready, 600, 2.0, "the container restarted by the kubelet and Ready again")
        wait_for(lambda: node.llmd()["status"].get("restarts", 0) > before, 120, 1.0, "status.restarts")
        wait_for(lambda: node.events("EngineRestarted"), 60, 1.0, "an EngineRestarted Event")
    except AssertionError:
        raise AssertionError(node.debug()) from None
    message = node.events("EngineRestarted")[-1].message
    assert name in message and "exit code" in message, message
    wait_for(lambda: node.condition("Ready").get("status") == "True", 120, 1.0, "Ready=True again")


@pytest.mark.timeout(600)
def test_delete_runs_the_finalizer_and_cleans_up(node: Node) -> None:
    node.kubectl("delete", "llmd", NAME, "-n", NS, "--wait=false")

    def gone() -> bool:
        try:
            node.llmd()
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, 300, 1.0, "the LLMDeployment gone (finalizer removed)")
    wait_for(
        lambda: not node.cp.core.list_namespaced_pod(NS, label_selector=f"tidal.dev/deployment={NAME}").items,
        300,
        1.0,
        "the worker pods stopped and deleted",
    )
    services = node.cp.core.list_namespaced_service(NS, label_selector=f"tidal.dev/deployment={NAME}").items
    budgets = client.PolicyV1Api(node.cp.api_client).list_namespaced_pod_disruption_budget(NS).items
    config_maps = [
        c.metadata.name
        for c in node.cp.core.list_namespaced_config_map(NS).items
        if c.metadata.name.startswith("tidal-worker-code")
    ]
    assert not services and not budgets and not config_maps, (services, budgets, config_maps)
    assert os.path.isdir(MODELS / "tiny"), "the model on the node is the user's: untouched"
