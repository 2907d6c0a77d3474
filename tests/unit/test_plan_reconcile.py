"""The reconcile planner against an in-memory cluster: idempotence (apply, re-plan, empty), scale up and
down, multi-node groups as units, rollouts that never drop ready replicas below the desired count,
InsufficientGPU with a backing-off requeue, crash loops and OOM kills as Degraded, Events on transitions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import LLMDeployment
from tidal.plan import NodeInfo, Observed, Plan, plan_reconcile
from tidal.plan.replicas import GROUP_FORMATION_SECONDS, pod_problems
from tidal.plan.target import matching_nodes, node_matches

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, tzinfo=UTC)

pytestmark = pytest.mark.unit


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCluster:
    """Applies plans the way the API server would (pods appear Pending; deletes mark them terminating)."""

    def __init__(self, example: str, **spec: Any) -> None:
        doc = yaml.safe_load((ROOT / "examples" / example).read_text())
        doc["metadata"].update(namespace="ns", uid="uid-1", generation=1)
        doc["spec"].update(spec)
        self.doc: dict[str, Any] = doc
        self.pods: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.pdbs: dict[str, dict[str, Any]] = {}
        self.now = T0
        self.nodes: list[NodeInfo] | None = None
        self.events: list[Any] = []
        self.uid = 0

    @property
    def deployment(self) -> LLMDeployment:
        return LLMDeployment.model_validate(self.doc)

    def observed(self) -> Observed:
        return Observed(
            pods=[copy.deepcopy(p) for p in self.pods.values()],
            services=list(self.services.values()),
            pdbs=list(self.pdbs.values()),
            nodes=self.nodes,
        )

    def plan(self, **kw: Any) -> Plan:
        return plan_reconcile(self.deployment, self.observed(), self.now, **kw)

    def apply(self, plan: Plan) -> None:
        for obj in plan.apply:
            obj = copy.deepcopy(obj)
            name = obj["metadata"]["name"]
            kind = obj["kind"]
            store = {"Pod": self.pods, "Service": self.services, "PodDisruptionBudget": self.pdbs}[kind]
            if kind == "Pod" and name in store:
                continue
            self.uid += 1
            obj["metadata"]["uid"] = f"u{self.uid}"
            obj["metadata"]["creationTimestamp"] = ts(self.now)
            if kind == "Pod":
                obj["status"] = {"phase": "Pending"}
            store[name] = obj
        for ref in plan.delete:
            store = {"Pod": self.pods, "Service": self.services, "PodDisruptionBudget": self.pdbs}[ref.kind]
            obj = store.get(ref.name)
            if obj is not None and obj["metadata"]["uid"] == ref.uid:
                if ref.kind == "Pod":
                    obj["metadata"]["deletionTimestamp"] = ts(self.now)
                else:
                    del store[ref.name]
        if plan.status is not None:
            self.doc.setdefault("status", {}).update(copy.deepcopy(plan.status))
        self.events.extend(plan.events)

    def step(self, **kw: Any) -> Plan:
        plan = self.plan(**kw)
        self.apply(plan)
        return plan

    def converge(self, rounds: int = 20, **kw: Any) -> None:
        for _ in range(rounds):
            if self.step(**kw).empty:
                return
        raise AssertionError("did not converge")

    # -- kubelet/scheduler stand-ins ---------------------------------------------------------------
    def run_all(self) -> None:
        for p in self.pods.values():
            if not p["metadata"].get("deletionTimestamp"):
                set_ready(p)

    def finish_terminations(self) -> None:
        for name in [n for n, p in self.pods.items() if p["metadata"].get("deletionTimestamp")]:
            del self.pods[name]

    def ready_replicas(self) -> int:
        ready = {}
        for p in self.pods.values():
            if p["metadata"].get("deletionTimestamp"):
                continue
            r = p["metadata"]["labels"]["tidal.dev/replica"]
            ok = any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])
            )
            ready[r] = ready.get(r, True) and ok
        return sum(ready.values())

    def condition(self, ctype: str) -> dict[str, Any]:
        return next(c for c in self.doc["status"]["conditions"] if c["type"] == ctype)

    def live_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods.values() if not p["metadata"].get("deletionTimestamp")]


def set_ready(pod: dict[str, Any]) -> None:
    pod["status"] = {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "worker", "ready": True, "restartCount": 0, "state": {"running": {}}}],
    }


def test_idempotent_create_then_empty_plan() -> None:
    c = FakeCluster("llama-3.1-8b.yaml")
    first = c.plan()
    again = c.plan()
    assert [o["metadata"]["name"] for o in first.apply] == [o["metadata"]["name"] for o in again.apply]
    assert first.status == again.status and first.events == again.events
    c.apply(first)
    assert c.plan().empty, "apply then re-plan must give an empty plan"
    assert sorted(c.pods) == ["llama-3-1-8b-r0"]
    assert set(c.services) == {"llama-3-1-8b"}
    assert not c.pdbs, "one replica: no PodDisruptionBudget (minAvailable would be 0)"
    st = c.doc["status"]
    assert st["replicas"] == 1 and st["readyReplicas"] == 0 and st["desiredReplicas"] == 1
    assert (
        st["selector"]
        == "app.kubernetes.io/name=tidal-worker,tidal.dev/deployment=llama-3-1-8b,tidal.dev/serving=true"
    )
    assert st["gpusPerReplica"] == 1 and st["specHash"]
    assert st["signal"]["summary"] == "ready 0/1" and st["lastScale"]["reason"] == "ScaledUp"
    assert st["recommendation"]["applied"] is True
    assert c.condition("Progressing")["reason"] == "WorkersCreated"
    c.run_all()
    c.step()
    assert c.condition("Ready")["status"] == "True" and c.condition("Ready")["reason"] == "AllReplicasReady"
    assert c.condition("Progressing")["status"] == "False"
    assert c.plan().empty
    reasons = [e.reason for e in c.events]
    assert "ReplicaCreated" in reasons and "AllReplicasReady" in reasons


def test_status_not_rewritten_and_transition_time_kept() -> None:
    c = FakeCluster("llama-3.1-8b.yaml")
    c.converge()
    c.run_all()
    c.converge()
    t_ready = c.condition("Ready")["lastTransitionTime"]
    c.now += timedelta(minutes=5)
    assert c.plan().empty
    assert c.condition("Ready")["lastTransitionTime"] == t_ready


def test_scale_up_and_down_single_node() -> None:
    c = FakeCluster("llama-3.3-70b-fp8-tp2.yaml")
    c.converge()
    c.run_all()
    c.converge()
    c.doc["spec"]["replicas"] = 3
    c.converge()
    assert sorted(c.pods) == ["llama-3-3-70b-fp8-r0", "llama-3-3-70b-fp8-r1", "llama-3-3-70b-fp8-r2"]
    assert c.doc["status"]["lastScale"]["from"] == 1 and c.doc["status"]["lastScale"]["to"] == 3
    assert c.pdbs["llama-3-3-70b-fp8"]["spec"]["minAvailable"] == 2
    c.run_all()
    c.converge()
    # r2 becomes unready: it is the least useful one and goes first.
    c.pods["llama-3-3-70b-fp8-r1"]["status"]["conditions"][1]["status"] = "False"
    c.now += timedelta(seconds=30)
    c.doc["spec"]["replicas"] = 2
    plan = c.step()
    assert [r.name for r in plan.delete] == ["llama-3-3-70b-fp8-r1"]
    assert c.condition("Progressing")["reason"] == "ScalingDown"
    assert c.doc["status"]["replicas"] == 2 and c.doc["status"]["lastScale"]["reason"] == "ScaledDown"
    assert c.plan().empty
    c.finish_terminations()
    c.converge()
    assert c.condition("Progressing")["reason"] == "ReplicasUpToDate"
    # A new replica takes the smallest free index.
    c.doc["spec"]["replicas"] = 3
    c.converge()
    assert "llama-3-3-70b-fp8-r1" in c.pods


def test_scale_down_prefers_newest_when_all_ready() -> None:
    c = FakeCluster("llama-3.3-70b-fp8-tp2.yaml", replicas=3)
    c.converge()
    c.now += timedelta(seconds=10)
    c.doc["spec"]["replicas"] = 3
    c.pods["llama-3-3-70b-fp8-r2"]["metadata"]["creationTimestamp"] = ts(c.now)
    c.run_all()
    c.doc["spec"]["replicas"] = 2
    plan = c.step()
    assert [r.name for r in plan.delete] == ["llama-3-3-70b-fp8-r2"]


def test_multinode_gains_and_loses_whole_groups() -> None:
    c = FakeCluster("llama-3.1-405b-multinode.yaml")
    c.converge()
    assert sorted(c.pods) == ["llama-3-1-405b-r0-0", "llama-3-1-405b-r0-1"]
    assert "llama-3-1-405b-r0-head" in c.services
    c.run_all()
    c.doc["spec"]["replicas"] = 2
    c.converge()
    assert sorted(c.pods) == [f"llama-3-1-405b-r{r}-{m}" for r in (0, 1) for m in (0, 1)]
    assert {"llama-3-1-405b-r0-head", "llama-3-1-405b-r1-head"} <= set(c.services)
    assert c.pdbs["llama-3-1-405b"]["spec"]["minAvailable"] == 2
    c.run_all()
    c.converge()
    assert c.doc["status"]["readyReplicas"] == 2 and c.doc["status"]["gpusPerReplica"] == 16
    c.doc["spec"]["replicas"] = 1
    plan = c.step()
    assert sorted(r.name for r in plan.delete if r.kind == "Pod") == [
        "llama-3-1-405b-r1-0",
        "llama-3-1-405b-r1-1",
    ]
    assert not [r for r in plan.delete if r.kind == "Service"], "the head Service outlives the group's pods"
    c.finish_terminations()
    plan = c.step()
    assert [r.name for r in plan.delete if r.kind == "Service"] == ["llama-3-1-405b-r1-head"]


def test_broken_group_member_restarts_only_its_group() -> None:
    c = FakeCluster("llama-3.1-405b-multinode.yaml", replicas=2)
    c.converge()
    c.run_all()
    c.converge()
    c.now += timedelta(seconds=GROUP_FORMATION_SECONDS + 60)
    del c.pods["llama-3-1-405b-r1-1"]  # a node of group 1 was lost
    plan = c.step()
    assert [r.name for r in plan.delete] == ["llama-3-1-405b-r1-0"]
    assert any(e.reason == "ReplicaRestarted" for e in plan.events)
    assert c.condition("Degraded")["reason"] == "ReplicaRestarted"
    # The replacement group is created at once under a free index; group 0 is untouched.
    assert sorted(o["metadata"]["name"] for o in plan.apply if o["kind"] == "Pod") == [
        "llama-3-1-405b-r2-0",
        "llama-3-1-405b-r2-1",
    ]
    r0 = {n: p["metadata"]["uid"] for n, p in c.pods.items() if "-r0-" in n}
    c.finish_terminations()
    c.converge()
    assert sorted(c.pods) == [f"llama-3-1-405b-r{r}-{m}" for r in (0, 2) for m in (0, 1)]
    assert {n: p["metadata"]["uid"] for n, p in c.pods.items() if "-r0-" in n} == r0


def test_group_still_forming_gets_missing_member_not_a_restart() -> None:
    """The operator died between creating the head and the worker: the next reconcile adds the worker."""
    c = FakeCluster("llama-3.1-405b-multinode.yaml")
    plan = c.plan()
    plan.apply = [o for o in plan.apply if o["metadata"]["name"] != "llama-3-1-405b-r0-1"]
    c.apply(plan)
    c.now += timedelta(seconds=5)
    plan = c.step()
    assert [o["metadata"]["name"] for o in plan.apply if o["kind"] == "Pod"] == ["llama-3-1-405b-r0-1"]
    assert not plan.delete
    c.converge()
    assert sorted(c.pods) == ["llama-3-1-405b-r0-0", "llama-3-1-405b-r0-1"]


@pytest.mark.parametrize(
    ("example", "replicas"), [("llama-3.3-70b-fp8-tp2.yaml", 3), ("llama-3.1-405b-multinode.yaml", 2)]
)
def test_rollout_never_below_desired_ready(example: str, replicas: int) -> None:
    c = FakeCluster(example, replicas=replicas, maxReplicas=4, minReplicas=1)
    c.converge()
    c.run_all()
    c.converge()
    old_hash = c.doc["status"]["specHash"]
    c.doc["spec"]["engine"]["maxModelLen"] = 4096
    c.doc["metadata"]["generation"] = 2
    seen_rolling = False
    for _ in range(60):
        plan = c.step()
        # The invariant, checked after every applied step: ready replicas never below the desired count.
        assert c.ready_replicas() >= replicas
        live = {p["metadata"]["labels"]["tidal.dev/replica"] for p in c.live_pods()}
        assert len(live) <= replicas + 1, "surge one replica at a time"
        seen_rolling |= c.condition("Progressing")["reason"] == "RollingUpdate"
        c.finish_terminations()
        c.run_all()
        c.now += timedelta(seconds=5)
        if plan.empty and all(
            p["metadata"]["labels"]["tidal.dev/spec-hash"] != old_hash for p in c.pods.values()
        ):
            break
    assert seen_rolling
    hashes = {p["metadata"]["labels"]["tidal.dev/spec-hash"] for p in c.pods.values()}
    assert hashes == {c.doc["status"]["specHash"]} and old_hash not in hashes
    assert c.doc["status"]["readyReplicas"] == replicas
    assert c.condition("Progressing")["reason"] == "ReplicasUpToDate"


def test_advise_mode_change_of_recommendation_inputs_does_not_roll() -> None:
    c = FakeCluster("llama-3.3-70b-fp8-tp2.yaml")
    c.converge()
    h = c.doc["status"]["specHash"]
    c.doc["spec"]["recommendation"]["expectedInputTokens"] = 4096  # Advise: only status changes
    c.converge()
    assert c.doc["status"]["specHash"] == h
    c.doc["spec"]["recommendation"]["mode"] = "Apply"  # Apply: auto settings take the recommendation
    c.step()
    assert c.doc["status"]["specHash"] != h


def unschedulable(pod: dict[str, Any], message: str) -> None:
    pod["status"] = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ],
    }


def test_insufficient_gpu_from_pending_pods_with_backoff() -> None:
    c = FakeCluster("llama-3.3-70b-fp8-tp2.yaml")
    c.converge()
    unschedulable(c.pods["llama-3-3-70b-fp8-r0"], "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    plan = c.step()
    assert c.condition("Progressing")["reason"] == "InsufficientGPU"
    assert c.condition("Ready")["reason"] == "InsufficientGPU"
    warn = [e for e in plan.events if e.reason == "InsufficientGPU"]
    assert warn and all(e.type == "Warning" for e in warn)
    delays = []
    for minutes in (0, 1, 3, 10):
        c.now = T0 + timedelta(minutes=minutes)
        p = c.step()
        assert not p.apply and not p.delete and not p.events, "no hot loop: nothing to do while Pending"
        assert p.requeue_after is not None
        delays.append(p.requeue_after)
    assert delays == sorted(delays) and delays[0] >= 10 and delays[-1] == 300


def test_insufficient_gpu_from_node_arithmetic() -> None:
    c = FakeCluster("llama-3.1-405b-multinode.yaml")
    c.nodes = [NodeInfo("n1", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, 8)]
    c.converge()
    assert c.condition("Progressing")["reason"] == "InsufficientGPU"
    assert "1 matching node(s) hold 1" in c.condition("Progressing")["message"]
    c.nodes.append(NodeInfo("n2", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, 8))
    c.nodes.append(NodeInfo("a100", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, 8))
    c.converge()
    assert c.condition("Progressing")["reason"] == "WorkersCreated"


def test_matching_nodes_product_selector_and_schedulable() -> None:
    c = FakeCluster(
        "llama-3.1-8b.yaml",
        resources={"gpuType": "H100-80GB", "gpusPerNode": 8, "nodeSelector": {"pool": "serving"}},
    )
    h100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    nodes = [
        NodeInfo("ok", {**h100, "pool": "serving"}, 8),
        NodeInfo("other-pool", {**h100, "pool": "batch"}, 8),
        NodeInfo("no-pool", h100, 8),
        NodeInfo("a100", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "pool": "serving"}, 8),
        NodeInfo("cordoned", {**h100, "pool": "serving"}, 8, schedulable=False),
        NodeInfo("ok2", {**h100, "pool": "serving"}, 4),
    ]
    deployment = c.deployment
    assert [n.name for n in matching_nodes(nodes, deployment)] == ["ok", "ok2"]
    assert [n.name for n in nodes if node_matches(n, deployment)] == ["ok", "ok2"]


def crash(pod: dict[str, Any], last_reason: str, exit_code: int) -> None:
    pod["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [
            {
                "name": "worker",
                "ready": False,
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"reason": last_reason, "exitCode": exit_code}},
            }
        ],
    }


@pytest.mark.parametrize(
    ("last", "code", "reason"), [("OOMKilled", 137, "OOMKilled"), ("Error", 3, "CrashLoopBackOff")]
)
def test_crash_loop_and_oom_are_degraded(last: str, code: int, reason: str) -> None:
    c = FakeCluster("llama-3.3-70b-fp8-tp2.yaml")
    c.converge()
    crash(c.pods["llama-3-3-70b-fp8-r0"], last, code)
    plan = c.step()
    deg = c.condition("Degraded")
    assert deg["status"] == "True" and deg["reason"] == reason
    assert f"last terminated: {last}, exit code {code}" in deg["message"]
    assert any(e.reason == reason and e.type == "Warning" for e in plan.events)
    assert not plan.delete, "a crash loop restarts in place; the pod is not deleted"
    assert c.plan().empty
    c.run_all()
    plan = c.step()
    assert c.condition("Degraded")["status"] == "False"
    assert any(e.reason == "WorkersHealthy" for e in plan.events)


def test_pod_problems_image_pull() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {
                    "name": "worker",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                }
            ]
        },
    }
    assert [p.reason for p in pod_problems(pod)] == ["ImagePullBackOff"]


def test_failed_single_pod_is_replaced() -> None:
    c = FakeCluster("llama-3.1-8b.yaml")
    c.converge()
    c.pods["llama-3-1-8b-r0"]["status"] = {"phase": "Failed", "reason": "Evicted"}
    plan = c.step()
    assert [r.name for r in plan.delete] == ["llama-3-1-8b-r0"]
    c.finish_terminations()
    c.converge()
    assert len(c.live_pods()) == 1


def test_scale_to_zero_and_replicas_override() -> None:
    c = FakeCluster("llama-3.3-70b-fp8-tp2.yaml", replicas=2, minReplicas=0)
    c.doc["spec"]["autoscaling"]["enabled"] = False  # the API refuses minReplicas 0 with autoscaling
    c.converge()
    assert c.pdbs["llama-3-3-70b-fp8"]["spec"]["minAvailable"] == 1
    c.converge(replicas=1)  # the autoscaler's count wins over spec.replicas
    assert len(c.live_pods()) == 1 and c.doc["status"]["desiredReplicas"] == 1
    assert not c.pdbs, "down to one replica: the budget that would allow every eviction is deleted"
    c.doc["spec"]["replicas"] = 0
    c.converge()
    assert not c.live_pods() and c.condition("Ready")["reason"] == "ScaledToZero"


def test_other_conditions_are_preserved() -> None:
    c = FakeCluster("llama-3.1-8b.yaml")
    c.doc["status"] = {
        "conditions": [
            {
                "type": "MetricsAvailable",
                "status": "False",
                "reason": "MetricsStale",
                "message": "",
                "lastTransitionTime": ts(T0),
            }
        ]
    }
    c.converge()
    types = [x["type"] for x in c.doc["status"]["conditions"]]
    assert types == ["Ready", "Progressing", "Degraded", "ModelResolved", "MetricsAvailable"]


def test_stray_pod_is_deleted() -> None:
    c = FakeCluster("llama-3.1-8b.yaml")
    c.converge()
    stray = copy.deepcopy(c.pods["llama-3-1-8b-r0"])
    stray["metadata"]["name"] = "stray"
    stray["metadata"]["uid"] = "s"
    del stray["metadata"]["labels"]["tidal.dev/replica"]
    c.pods["stray"] = stray
    plan = c.step()
    assert [r.name for r in plan.delete] == ["stray"]


def _bind(c: FakeCluster, node: str = "n1") -> None:
    """The scheduler's part: every live pod bound to a node (it now holds its GPUs)."""
    for p in c.live_pods():
        p.setdefault("spec", {})["nodeName"] = node


def test_gpu_hours_accounted_without_autoscaling_and_without_extra_writes() -> None:
    c = FakeCluster("llama-3.3-70b-fp8-tp2.yaml", replicas=2)
    c.doc["spec"]["autoscaling"]["enabled"] = False
    c.converge()
    st = c.doc["status"]
    assert st["autoscaler"] == {"gpuHoursAt": T0.timestamp()} and st.get("gpuHours", 0) == 0
    c.now += timedelta(hours=1)
    assert c.plan().empty, "pods Pending, not bound: no GPUs held, nothing to write"
    _bind(c)
    c.run_all()
    c.now += timedelta(seconds=60)
    c.converge()  # Ready: a status write that happens anyway carries the accounting (4 GPUs held now)
    st = c.doc["status"]
    assert st["gpuHours"] == pytest.approx(4 * 3660 / 3600, abs=1e-6)
    assert st["autoscaler"]["gpuHoursAt"] == (T0 + timedelta(seconds=3660)).timestamp()
    base = st["gpuHours"]
    # Nothing changes: no write until GPU_HOURS_WRITE_SECONDS passed, then one write, then quiet again.
    c.now += timedelta(seconds=299)
    assert c.plan().empty
    c.now += timedelta(seconds=1)
    plan = c.step()
    assert plan.status is not None and set(plan.status) >= {"gpuHours", "autoscaler"} and not plan.apply
    assert c.doc["status"]["gpuHours"] == pytest.approx(base + 4 * 300 / 3600, abs=1e-6)
    assert c.plan().empty
    # Scale to one replica: the write it makes anyway accounts the 4 GPUs held until then (the draining pod
    # still holds its GPUs).
    c.now += timedelta(seconds=90)
    c.doc["spec"]["replicas"] = 1
    c.step()
    c.finish_terminations()
    c.converge()
    assert c.doc["status"]["gpuHours"] == pytest.approx(base + 4 * 390 / 3600, abs=1e-6)
    c.now += timedelta(seconds=300)
    c.step()
    assert c.doc["status"]["gpuHours"] == pytest.approx(base + (4 * 390 + 2 * 300) / 3600, abs=1e-6)


def test_gpu_hours_left_to_the_autoscaler_pass_and_idle_deployment_never_written() -> None:
    from tidal.plan.autoscale.status import AutoscalerPatch

    c = FakeCluster("llama-3.1-8b.yaml", replicas=0, minReplicas=0)
    c.doc["spec"]["autoscaling"]["enabled"] = False
    c.converge()
    c.now += timedelta(hours=2)
    assert c.plan().empty, "no GPUs held: nothing to account, no write"
    c.doc["spec"]["replicas"] = 1
    c.converge()
    assert c.doc["status"].get("gpuHours", 0) == 0
    # With autoscaling, its passes do the accounting: the reconcile does not touch it, between passes
    # (never a write of its own) or in a pass.
    c.doc["spec"]["autoscaling"]["enabled"] = True
    c.doc["spec"]["minReplicas"] = 1  # the API refuses minReplicas 0 with autoscaling
    _bind(c)
    c.now += timedelta(hours=1)
    assert c.plan().status is None
    patch = AutoscalerPatch(1, {"gpuHours": 7.0, "autoscaler": {"gpuHoursAt": 1.0}})
    plan = c.plan(autoscaler=patch)
    assert plan.status is not None and plan.status["gpuHours"] == 7.0
    assert plan.status["autoscaler"] == {"gpuHoursAt": 1.0}


def test_worker_gpus_counts_bound_unfinished_pods() -> None:
    from tidal.plan.gpuhours import worker_gpus

    def pod(node: str | None, phase: str, gpus: Any) -> dict[str, Any]:
        res = {"requests": {"nvidia.com/gpu": gpus}} if gpus is not None else {}
        return {"spec": {"nodeName": node, "containers": [{"resources": res}]}, "status": {"phase": phase}}

    pods = [
        pod("n1", "Running", "2"),
        pod("n1", "Pending", 8),
        pod(None, "Pending", 4),
        pod("n2", "Failed", 4),
        pod("n2", "Running", None),
    ]
    assert worker_gpus(pods) == 10


def test_refused_write_is_degraded_once_per_distinct_error_and_clears() -> None:
    from tidal.plan.failures import apply_failure_status, failure_message, is_permanent

    assert [is_permanent(s) for s in (400, 403, 404, 422, 409, 429, 500, 503, None)] == [
        True, True, True, True, False, False, False, False, False,
    ]  # fmt: skip
    c = FakeCluster("llama-3.1-8b.yaml")
    c.converge()
    c.run_all()
    c.converge()
    before = {t: c.condition(t) for t in ("Ready", "Progressing")}
    msg = failure_message("Pod", "ns", "llama-3-1-8b-r0", 422, "denied " + "x" * 2000)
    assert msg.startswith("Pod ns/llama-3-1-8b-r0 refused (422): denied") and len(msg) == 512
    c.now += timedelta(seconds=10)
    status, events = apply_failure_status(c.doc["status"], msg, ts(c.now), 1)
    assert status is not None and [(e.type, e.reason) for e in events] == [("Warning", "ApplyFailed")]
    c.doc["status"].update(status)
    deg = c.condition("Degraded")
    assert (deg["status"], deg["reason"], deg["message"]) == ("True", "ApplyFailed", msg)
    assert {t: c.condition(t) for t in ("Ready", "Progressing")} == before, "other conditions kept"
    # The same refusal again: nothing to write or post. Another one: a new Event.
    assert apply_failure_status(c.doc["status"], msg, ts(c.now), 1) == (None, [])
    other = failure_message("Service", "ns", "llama-3-1-8b", 403, "forbidden")
    status, events = apply_failure_status(c.doc["status"], other, ts(c.now), 1)
    assert status is not None and len(events) == 1 and "forbidden" in events[0].message
    c.doc["status"].update(status)
    # A reconcile whose writes succeed plans Degraded from the workers again: cleared, with an Event.
    c.now += timedelta(seconds=10)
    plan = c.step()
    assert plan.status is not None
    assert (
        c.condition("Degraded")["status"] == "False" and c.condition("Degraded")["reason"] == "WorkersHealthy"
    )
    assert "WorkersHealthy" in [e.reason for e in plan.events]
    assert c.plan().empty


def test_new_deployment_posts_only_its_actions_then_transitions() -> None:
    c = FakeCluster("llama-3.3-70b-fp8-tp2.yaml", replicas=2)
    first = c.step()
    assert [e.reason for e in first.events] == ["ReplicaCreated", "ReplicaCreated"]
    assert c.doc["status"]["lastScale"]["reason"] == "ScaledUp", "the initial count is still recorded"
    c.run_all()
    ready = c.step()
    # Creation finishing is one Event (Ready's, carrying Progressing's message), not two.
    assert [e.reason for e in ready.events] == ["AllReplicasReady"]
    assert "Progressing=False" in ready.events[0].message and "spec hash" in ready.events[0].message
    c.doc["spec"]["replicas"] = 3
    assert "ScaledUp" in [e.reason for e in c.step().events]
