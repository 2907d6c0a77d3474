"""The pure glue between an LLMDeployment and the scaling algorithm (tidal.plan.autoscale), and how the
reconcile planner carries an autoscaler pass into its status write: spec -> ScalingConfig, pods and nodes
-> CapacityView (measured cold start, free GPUs), state round-trip through the status, bounded history,
GPU-hours, Events that quote the numbers, MetricsAvailable/ScalingActive, degraded replicas."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tidal.api import MAX_HISTORY, LLMDeployment
from tidal.plan import NodeInfo, Observed, plan_reconcile
from tidal.plan.autoscale.config import replica_capacity, scaling_config
from tidal.plan.autoscale.observe import (
    capacity_view,
    free_gpus,
    load_state,
    measured_cold_start,
    merge_pods,
    replica_ages,
    with_replica_ages,
)
from tidal.plan.autoscale.status import BLOCKED_KEY, autoscaler_patch, disabled_conditions, signal_status
from tidal.plan.conditions import merge_conditions
from tidal.plan.gpuhours import GPU_HOURS_AT, MAX_GPU_HOURS_GAP_S, accumulate_gpu_hours
from tidal.plan.replicas import group_replicas, pod_gpus
from tidal.plan.target import make_target
from tidal.scaling import (
    AutoscalerState,
    CapacityView,
    FleetObservation,
    Reason,
    ReplicaStats,
    ScalingConfig,
    compute_desired_replicas,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
NOW = 1_000_000.0
STAMP = "2025-01-01T00:00:00Z"


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def deployment(**spec: Any) -> LLMDeployment:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"].update(namespace="ns", uid="uid-1", generation=1)
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(doc["spec"].get(k), dict):
            doc["spec"][k] = {**doc["spec"][k], **v}
        else:
            doc["spec"][k] = v
    return LLMDeployment.model_validate(doc)


def pod(
    name: str,
    replica: int,
    *,
    created: datetime = T0,
    ready_after: float | None = None,
    node: str | None = None,
    gpus: Any = 1,
    phase: str = "Running",
    terminating: bool = False,
) -> dict[str, Any]:
    conds = []
    if ready_after is not None:
        conds.append(
            {
                "type": "Ready",
                "status": "True",
                "lastTransitionTime": ts(created + timedelta(seconds=ready_after)),
            }
        )
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": f"u-{name}",
        "creationTimestamp": ts(created),
        "labels": {
            "tidal.dev/replica": str(replica),
            "tidal.dev/member": "0",
            "tidal.dev/group-size": "1",
            "tidal.dev/spec-hash": "h",
        },
    }
    if terminating:
        meta["deletionTimestamp"] = ts(created)
    return {
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"requests": {"nvidia.com/gpu": gpus}}}],
        },
        "status": {"phase": phase, "conditions": conds},
    }


# ------------------------------------------------------------------------------------------ spec -> config


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, {"ttft_p95_s": 2.0, "tpot_p95_s": 0.1, "queue_per_replica": 5.0, "kv_cache_usage": 0.9}),
        ({"minReplicas": 2, "maxReplicas": 7, "replicas": 2}, {"min_replicas": 2, "max_replicas": 7}),
        (
            {"autoscaling": {"enabled": True, "targets": {"ttftP95Seconds": 0.5, "kvCacheUsage": 0.8}}},
            {"ttft_p95_s": 0.5, "kv_cache_usage": 0.8},
        ),
        (
            {
                "autoscaling": {
                    "enabled": True,
                    "tolerance": 0.2,
                    "panicThreshold": 3.0,
                    "panicWindowSeconds": 9,
                    "scaleUpStabilizationSeconds": 4,
                    "scaleDownStabilizationSeconds": 30,
                    "scaleDownConsecutive": 2,
                    "maxScaleUpStep": 2,
                    "maxScaleDownStep": 3,
                    "metricsStaleAfterSeconds": 12,
                    "coldStartSeconds": 45,
                    "headroomPrior": 4,
                }
            },
            {
                "tolerance": 0.2,
                "panic_threshold": 3.0,
                "panic_window_s": 9.0,
                "scale_up_stabilization_s": 4.0,
                "scale_down_stabilization_s": 30.0,
                "scale_down_consecutive": 2,
                "max_scale_up_step": 2,
                "max_scale_down_step": 3,
                "metrics_stale_after_s": 12.0,
                "cold_start_s": 45.0,
                "headroom_prior": 4.0,
            },
        ),
    ],
)
def test_spec_to_config(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    config = scaling_config(deployment(**spec))
    assert {k: getattr(config, k) for k in expected} == expected


@pytest.mark.parametrize(("engine_seqs", "recommended", "expected"), [(64, 256, 64), ("auto", 256, 256)])
def test_max_num_seqs_explicit_wins(engine_seqs: Any, recommended: int, expected: int) -> None:
    d = deployment(engine={"maxNumSeqs": engine_seqs})
    assert scaling_config(d, recommended).max_num_seqs == expected


# ------------------------------------------------------------------------------------- pods -> capacity


@pytest.mark.parametrize(("gpus", "expected"), [(1, 1), ("4", 4), (0, 0), ("bad", 0)])
def test_pod_gpus(gpus: Any, expected: int) -> None:
    assert pod_gpus(pod("p", 0, gpus=gpus)) == expected


@pytest.mark.parametrize(
    ("ready_afters", "expected"),
    [
        ([30.0], 30.0),
        ([10.0, 50.0, 20.0], 20.0),  # median
        ([None, 40.0], 40.0),  # a starting pod has no cold start yet
        ([None], None),
        ([], None),
    ],
)
def test_measured_cold_start(ready_afters: list[float | None], expected: float | None) -> None:
    pods = [pod(f"p{i}", i, ready_after=r) for i, r in enumerate(ready_afters)]
    assert measured_cold_start(pods) == expected


def foreign(name: str, node: str | None, gpus: int, selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod of another workload (no Tidal labels) that requests GPUs."""
    p = pod(name, 0, node=node, gpus=gpus)
    p["metadata"]["labels"] = {"app": "training"}
    p["metadata"]["namespace"] = "other"
    if selector is not None:
        p["spec"]["nodeSelector"] = selector
    return p


GPU_NODES = [
    NodeInfo("a", {"pool": "h100"}, 8),
    NodeInfo("b", {"pool": "h100"}, 8),
    NodeInfo("c", {"pool": "h100"}, 8, schedulable=False),
]


@pytest.mark.parametrize(
    ("pods", "free"),
    [
        ([], 16),
        ([pod("x", 0, node="a", gpus=4), pod("y", 1, node="b", gpus=2)], 10),
        ([pod("w", 3, node="a", gpus=4, phase="Failed")], 16),  # terminal: holds nothing
        ([pod("w", 3, node="a", gpus=4, phase="Succeeded")], 16),
        ([pod("v", 4, node="elsewhere", gpus=8)], 16),  # bound to a node that is not eligible
        ([pod("z", 2, node=None, gpus=8)], 8),  # pending, no selector: about to take GPUs here
        ([foreign("train", "a", 3)], 13),  # another workload's pod on an eligible node
        ([foreign("train", "a", 3), pod("x", 0, node="a", gpus=4)], 9),
        ([foreign("train", None, 2, {"pool": "h100"})], 14),  # pending for the eligible nodes
        ([foreign("train", None, 2, {"pool": "a100"})], 16),  # pending for other nodes
        ([foreign("train", "c", 8)], 16),  # on the cordoned node: not counted in the total either
        ([foreign("train", "a", 8), foreign("eval", "b", 8), pod("x", 0, node="b", gpus=1)], 0),
    ],
)
def test_free_gpus_subtracts_every_pod_that_holds_or_awaits_eligible_gpus(
    pods: list[dict[str, Any]], free: int
) -> None:
    assert free_gpus(GPU_NODES, pods) == free


def test_free_gpus_unknown_without_nodes_and_never_negative() -> None:
    pods = [pod("x", 0, node="a", gpus=4)]
    assert free_gpus(None, pods) is None
    assert free_gpus([NodeInfo("a", {}, 2)], [pod("x", 0, node="a", gpus=4)]) == 0


def test_capacity_view_ready_starting_and_cold_start() -> None:
    pods = [
        pod("r0", 0, ready_after=30),
        pod("r1", 1, ready_after=40),
        pod("r2", 2),  # starting
        pod("r3", 3, ready_after=5, terminating=True),  # going away: neither ready nor starting
    ]
    views, _ = group_replicas(pods, T0 + timedelta(minutes=5))
    cap = capacity_view(3, views, pods, 2, 6)
    assert (cap.current, cap.ready, cap.starting, cap.free_gpus, cap.gpus_per_replica) == (3, 2, 1, 6, 2)
    assert cap.cold_start_s == 30.0  # median of 30, 40 and the terminating 5


# ------------------------------------------------------------------------------------ state <-> status


def test_state_round_trips_through_the_status_model() -> None:
    state = AutoscalerState(
        recommendations=((NOW - 20, 3), (NOW - 10, 2)),
        below_target_since=NOW - 20,
        consecutive_below=2,
        last_scale_time=NOW - 100,
        last_scale_up_time=NOW - 100,
        panic_until=None,
        load_history=((NOW - 5, 1.5),),
    )
    d = deployment()
    doc = d.to_dict()
    doc["status"] = {"autoscaler": {**state.to_dict(), GPU_HOURS_AT: NOW}}
    again = LLMDeployment.model_validate(doc)  # what the operator reads back from the API
    assert load_state(again.status.to_dict()) == state


@pytest.mark.parametrize("raw", [None, {}, {"recommendations": "garbage"}, {"consecutiveBelow": "x"}])
def test_unreadable_state_starts_fresh(raw: Any) -> None:
    assert load_state({"autoscaler": raw}) == AutoscalerState()


@pytest.mark.parametrize(
    ("status", "gpus", "now", "total", "delta"),
    [
        ({}, 4, NOW, 0.0, 0.0),  # first accounting: nothing to add yet
        ({"gpuHours": 1.0, "autoscaler": {GPU_HOURS_AT: NOW - 1800}}, 2, NOW, 2.0, 1.0),
        ({"gpuHours": 0.5, "autoscaler": {GPU_HOURS_AT: NOW - 36}}, 10, NOW, 0.6, 0.1),
        ({"gpuHours": 0.0, "autoscaler": {GPU_HOURS_AT: NOW + 5}}, 10, NOW, 0.0, 0.0),  # clock skew
        (
            {"autoscaler": {GPU_HOURS_AT: NOW - 10 * MAX_GPU_HOURS_GAP_S}},
            1,
            NOW,
            MAX_GPU_HOURS_GAP_S / 3600,
            None,
        ),
    ],
)
def test_gpu_hours_accumulate(
    status: dict[str, Any], gpus: int, now: float, total: float, delta: float | None
) -> None:
    got_total, got_delta = accumulate_gpu_hours(status, gpus, now)
    assert got_total == pytest.approx(total)
    assert got_delta == pytest.approx(total - float(status.get("gpuHours") or 0) if delta is None else delta)


# ------------------------------------------------------------------------------------ decision -> status

CONFIG = ScalingConfig(
    ttft_p95_s=1.0,
    tpot_p95_s=0.1,
    queue_per_replica=5.0,
    kv_cache_usage=0.9,
    min_replicas=1,
    max_replicas=4,
    scale_down_stabilization_s=30.0,
    scale_down_consecutive=2,
)


def obs(ttft: float, replicas: tuple[ReplicaStats, ...] = (), waiting: float = 0.0) -> FleetObservation:
    return FleetObservation(
        time=NOW,
        ttft_p95=ttft,
        tpot_p95=0.02,
        waiting=waiting,
        running=2.0,
        kv_cache_usage=0.2,
        replicas=replicas,
    )


def test_scale_up_writes_last_scale_history_and_an_event_quoting_the_numbers() -> None:
    o = obs(3.0)
    decision = compute_desired_replicas(CONFIG, o, CapacityView(current=1, ready=1), AutoscalerState(), NOW)
    assert decision.desired > 1
    old = {
        "scalingHistory": [
            {"time": STAMP, "from": i, "to": i + 1, "reason": "X", "message": ""} for i in range(MAX_HISTORY)
        ]
    }
    patch = autoscaler_patch(decision, CONFIG, o, old, NOW, STAMP, gpus_in_use=1)
    (event,) = [e for e in patch.events if e.reason == "ScaledUp"]
    assert "ttft_p95 3.00s" in event.message and "target 1.00s" in event.message
    assert f"applied {decision.desired}" in event.message and f"proposed {decision.proposed}" in event.message
    last = patch.fields["lastScale"]
    assert (last["from"], last["to"], last["reason"]) == (1, decision.desired, "ScaledUp")
    history = patch.fields["scalingHistory"]
    assert len(history) == MAX_HISTORY and history[-1] == last and history[0]["from"] == 1
    assert patch.fields["signal"] == {
        "name": "ttft_p95",
        "value": 3.0,
        "target": 1.0,
        "summary": "ttft_p95 3s/1s",
    }
    assert [(c.type, c.status, c.reason) for c in patch.conditions] == [
        ("MetricsAvailable", True, "MetricsFresh"),
        ("ScalingActive", True, "SignalsEvaluated"),
        ("PerformanceDegraded", False, "ReplicasComparable"),
    ]
    assert patch.desired == decision.desired


@pytest.mark.parametrize(
    ("observation", "error"),
    [
        (None, "Prometheus http://p:9090 query failed: ConnectionError: refused"),
        (FleetObservation(time=NOW), None),
    ],
)
def test_missing_metrics_hold_and_set_metrics_available_false(
    observation: FleetObservation | None, error: str | None
) -> None:
    decision = compute_desired_replicas(
        CONFIG, observation, CapacityView(current=3, ready=3), AutoscalerState(), NOW
    )
    assert decision.desired == 3 and decision.reason is Reason.METRICS_STALE
    patch = autoscaler_patch(
        decision, CONFIG, observation, {}, NOW, STAMP, gpus_in_use=3, metrics_error=error
    )
    ma, sa = patch.conditions
    assert (ma.type, ma.status, ma.reason) == ("MetricsAvailable", False, "MetricsStale")
    assert (sa.type, sa.status) == ("ScalingActive", False)
    if error:
        assert error in ma.message
    assert "holding at 3" in ma.message
    assert (
        "lastScale" not in patch.fields and not patch.events
    )  # the Event comes from the condition transition
    assert patch.fields["signal"]["name"] == "metrics"


def _pass(
    reps: tuple[ReplicaStats, ...], old: dict[str, Any], at: float
) -> tuple[Any, dict[str, Any], list[Any]]:
    """One autoscaler pass over ``reps`` and the status after it, as the planner merges it: (patch, new
    status, all Events: the patch's and the condition transitions')."""
    o = obs(max(r.ttft_p95 or 0 for r in reps), reps)
    decision = compute_desired_replicas(CONFIG, o, CapacityView(current=3, ready=3), AutoscalerState(), at)
    patch = autoscaler_patch(decision, CONFIG, o, old, at, STAMP, gpus_in_use=3)
    conds, transitions = merge_conditions(old.get("conditions") or [], patch.conditions, STAMP, 1)
    return patch, {**old, **patch.fields, "conditions": conds}, [*patch.events, *transitions]


def _cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_degraded_replica_condition_names_the_pod_once_and_clears_on_recovery() -> None:
    healthy = (
        ReplicaStats("w-r0", ttft_p95=0.2, running=2, waiting=0),
        ReplicaStats("w-r1", ttft_p95=0.25, running=2, waiting=0),
        ReplicaStats("w-r2", ttft_p95=0.22, running=2, waiting=0),
        ReplicaStats("w-r3", ttft_p95=0.21, running=2, waiting=0),
    )
    _, status, events = _pass(healthy, {}, NOW)
    assert _cond(status, "PerformanceDegraded")["status"] == "False"
    assert not [e for e in events if "PerformanceDegraded" in e.message]  # a first False is not news
    sick = (*healthy[:2], ReplicaStats("w-r2", ttft_p95=4.0, running=2, waiting=0), healthy[3])
    patch, status, events = _pass(sick, status, NOW + 15)
    assert patch.desired <= 3  # the fleet p95 is dragged up by the one slow replica: no scale-out
    cond = _cond(status, "PerformanceDegraded")
    assert (cond["status"], cond["reason"]) == ("True", "ReplicaDegraded")
    assert "w-r2" in cond["message"] and "ttft_p95 4s" in cond["message"] and "peers" in cond["message"]
    (event,) = [e for e in events if e.reason == "ReplicaDegraded"]  # one Event: the transition
    assert event.type == "Warning" and "w-r2" in event.message and "ttft_p95 4s" in event.message
    assert any("w-r2" in a for a in patch.fields["advice"])
    # The next pass with the same replica still sick: no second Event.
    _, status, events = _pass(sick, status, NOW + 30)
    assert not [e for e in events if e.reason == "ReplicaDegraded"]
    # A second replica turns sick while the condition is True: an Event for it alone.
    worse = (*sick[:3], ReplicaStats("w-r3", ttft_p95=5.0, running=2, waiting=0))
    _, status, events = _pass(worse, status, NOW + 45)
    (event,) = [e for e in events if e.reason == "ReplicaDegraded"]
    assert "w-r3" in event.message and "w-r2" not in event.message
    assert "w-r2" in _cond(status, "PerformanceDegraded")["message"]
    assert "w-r3" in _cond(status, "PerformanceDegraded")["message"]
    # Recovered: the condition clears with a Normal Event.
    _, status, events = _pass(healthy, status, NOW + 60)
    cond = _cond(status, "PerformanceDegraded")
    assert (cond["status"], cond["reason"]) == ("False", "ReplicasComparable")
    (event,) = [e for e in events if e.reason == "ReplicasComparable"]
    assert event.type == "Normal"


def test_stale_metrics_leave_the_degraded_verdict_alone() -> None:
    decision = compute_desired_replicas(
        CONFIG, None, CapacityView(current=3, ready=3), AutoscalerState(), NOW
    )
    patch = autoscaler_patch(decision, CONFIG, None, {}, NOW, STAMP, gpus_in_use=3)
    assert "PerformanceDegraded" not in [c.type for c in patch.conditions]


def test_disabled_autoscaling_clears_a_degraded_verdict() -> None:
    old = {"conditions": [{"type": "PerformanceDegraded", "status": "True", "reason": "ReplicaDegraded"}]}
    (cond,) = disabled_conditions(old)
    assert (cond.type, cond.status, cond.reason) == ("PerformanceDegraded", False, "AutoscalingDisabled")


def test_insufficient_gpu_blocked_event_once() -> None:
    o = obs(3.0)
    cap = CapacityView(current=2, ready=2, free_gpus=0, gpus_per_replica=1)
    decision = compute_desired_replicas(CONFIG, o, cap, AutoscalerState(), NOW)
    assert decision.reason is Reason.INSUFFICIENT_GPU and decision.desired == 2
    patch = autoscaler_patch(decision, CONFIG, o, {}, NOW, STAMP, gpus_in_use=2)
    (event,) = patch.events
    assert (event.type, event.reason) == ("Warning", "InsufficientGPU")
    assert "0 GPU(s) are free" in event.message and "ttft_p95 3.00s" in event.message
    assert patch.fields["lastScale"]["from"] == patch.fields["lastScale"]["to"] == 2
    assert patch.fields["autoscaler"][BLOCKED_KEY]
    again = autoscaler_patch(
        decision, CONFIG, o, {"autoscaler": patch.fields["autoscaler"]}, NOW + 15, STAMP, 2
    )
    assert not again.events and "lastScale" not in again.fields


def test_max_replicas_blocked_is_scale_blocked() -> None:
    o = obs(3.0)
    decision = compute_desired_replicas(CONFIG, o, CapacityView(current=4, ready=4), AutoscalerState(), NOW)
    assert decision.reason is Reason.MAX_REPLICAS_REACHED
    patch = autoscaler_patch(decision, CONFIG, o, {}, NOW, STAMP, gpus_in_use=4)
    assert [e.reason for e in patch.events] == ["ScaleBlocked"]
    assert "maxReplicas" in patch.events[0].message
    # A worse breach later is the same blocked situation: no second Event.
    worse = compute_desired_replicas(
        CONFIG, obs(6.0), CapacityView(current=4, ready=4), AutoscalerState(), NOW + 15
    )
    assert worse.reason is Reason.MAX_REPLICAS_REACHED and worse.proposed > decision.proposed
    again = autoscaler_patch(
        worse, CONFIG, obs(6.0), {"autoscaler": patch.fields["autoscaler"]}, NOW + 15, STAMP, 4
    )
    assert not again.events


def test_a_held_pass_with_nothing_new_writes_nothing_not_even_gpu_hours() -> None:
    decision = compute_desired_replicas(
        CONFIG, None, CapacityView(current=2, ready=2), AutoscalerState(), NOW
    )
    first = autoscaler_patch(decision, CONFIG, None, {}, NOW, STAMP, gpus_in_use=2)
    d = deployment()
    doc = d.to_dict()
    doc["status"] = {
        **first.fields,
        "conditions": [
            {
                "type": c.type,
                "status": c.status_text,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": STAMP,
            }
            for c in first.conditions
        ],
    }
    stored = LLMDeployment.model_validate(doc).status.to_dict()
    later = compute_desired_replicas(
        CONFIG, None, CapacityView(current=2, ready=2), load_state(stored), NOW + 60
    )
    second = autoscaler_patch(later, CONFIG, None, stored, NOW + 60, STAMP, gpus_in_use=2)
    assert second.gpu_hours_delta == 0.0
    assert second.fields["autoscaler"][GPU_HOURS_AT] == NOW
    # ... and once something changes, the GPU-hours since then are accounted in that write.
    o = obs(3.0)
    moving = compute_desired_replicas(
        CONFIG, o, CapacityView(current=2, ready=2), load_state(stored), NOW + 90
    )
    third = autoscaler_patch(moving, CONFIG, o, stored, NOW + 90, STAMP, gpus_in_use=2)
    assert third.gpu_hours_delta == pytest.approx(2 * 90 / 3600)
    assert third.fields["gpuHours"] == pytest.approx(2 * 90 / 3600)


def test_signal_status_for_queue_and_kv() -> None:
    o = FleetObservation(time=NOW, waiting=40.0, kv_cache_usage=0.5)
    d = compute_desired_replicas(CONFIG, o, CapacityView(current=2, ready=2), AutoscalerState(), NOW)
    assert signal_status(d, CONFIG, o)["summary"] == "queue 20/5"


# ----------------------------------------------------------------------------- the planner carries it


def test_planner_writes_the_autoscaler_fields_in_one_status_and_records_the_scale_once() -> None:
    d = deployment(replicas=1)
    now = T0
    first = plan_reconcile(d, Observed(), now)
    doc = d.to_dict()
    doc["status"] = copy.deepcopy(first.status)
    d = LLMDeployment.model_validate(doc)
    o = obs(3.0)
    decision = compute_desired_replicas(
        scaling_config(d), o, CapacityView(current=1, ready=1), AutoscalerState(), NOW
    )
    patch = autoscaler_patch(decision, scaling_config(d), o, d.status.to_dict(), NOW, STAMP, 1)
    plan = plan_reconcile(d, Observed(), now, autoscaler=patch)
    assert plan.status is not None
    assert plan.status["desiredReplicas"] == decision.desired
    assert plan.status["lastScale"]["message"] == patch.fields["lastScale"]["message"]
    assert "spec.replicas changed" not in str(plan.status["scalingHistory"])
    types = [c["type"] for c in plan.status["conditions"]]
    assert types[:3] == ["Ready", "Progressing", "Degraded"] and {"MetricsAvailable", "ScalingActive"} <= set(
        types
    )
    assert [e.reason for e in plan.events].count("ScaledUp") == 1
    # The spec now says the new count; a reconcile between passes records nothing again.
    doc = d.to_dict()
    doc["spec"]["replicas"] = decision.desired
    doc["status"] = {**doc["status"], **copy.deepcopy(plan.status)}
    d2 = LLMDeployment.model_validate(doc)
    between = plan_reconcile(d2, Observed(), now)
    assert (
        between.status is None
        or "lastScale" not in between.status
        or (between.status["lastScale"] == plan.status["lastScale"])
    )
    assert "ScaledUp" not in [e.reason for e in between.events]
    assert {"MetricsAvailable", "ScalingActive"} <= {
        c["type"] for c in (between.status or plan.status)["conditions"]
    }


def test_metrics_stale_transition_is_a_warning_event() -> None:
    d = deployment()
    first = plan_reconcile(d, Observed(), T0)
    doc = d.to_dict()
    doc["status"] = copy.deepcopy(first.status)
    d = LLMDeployment.model_validate(doc)
    decision = compute_desired_replicas(
        CONFIG, None, CapacityView(current=1, ready=0), AutoscalerState(), NOW
    )
    patch = autoscaler_patch(decision, CONFIG, None, d.status.to_dict(), NOW, STAMP, 0, "Prometheus down")
    plan = plan_reconcile(d, Observed(), T0, autoscaler=patch)
    stale = [e for e in plan.events if e.reason == "MetricsStale"]
    assert len(stale) == 1 and stale[0].type == "Warning" and "Prometheus down" in stale[0].message


def test_disabling_autoscaling_sets_scaling_active_false_once() -> None:
    assert disabled_conditions({}) == []
    conds = disabled_conditions({"conditions": [{"type": "ScalingActive", "status": "True"}]})
    assert [(c.type, c.status, c.reason) for c in conds] == [("ScalingActive", False, "AutoscalingDisabled")]


def test_replica_ages_from_the_ready_condition_reach_detection() -> None:
    now = T0 + timedelta(seconds=300)
    pods = [
        pod("w-r0", 0, created=T0, ready_after=10),  # ready at 10 s: 290 s old
        pod("w-r1", 1, created=T0 + timedelta(seconds=250), ready_after=20),  # ready at 270 s: 30 s old
        pod("w-r2", 2, created=T0),  # not ready: no age
    ]
    ages = replica_ages(pods, now)
    assert ages == {"w-r0": 290.0, "w-r1": 30.0}
    reps = (
        ReplicaStats("w-r0", ttft_p95=0.2, running=2),
        ReplicaStats("w-r1", ttft_p95=5.0, running=2),
        ReplicaStats("w-r2", ttft_p95=0.2, running=2),
    )
    o = with_replica_ages(obs(5.0, reps), ages)
    assert o is not None and [r.age_s for r in o.replicas] == [290.0, 30.0, None]
    assert with_replica_ages(None, ages) is None
    config = scaling_config(deployment(autoscaling={"enabled": True, "replicaWarmupSeconds": 45}))
    assert config.replica_warmup_s == 45
    decision = compute_desired_replicas(config, o, CapacityView(current=3, ready=3), AutoscalerState(), NOW)
    assert decision.sick_replicas == ()  # w-r1 is slow but 30 s into its 45 s warm-up
    older = with_replica_ages(obs(5.0, reps), {**ages, "w-r1": 50.0})
    decision = compute_desired_replicas(
        config, older, CapacityView(current=3, ready=3), AutoscalerState(), NOW
    )
    assert [s.replica for s in decision.sick_replicas] == ["w-r1"]


def test_merge_pods_keeps_each_pod_once() -> None:
    a, b = pod("x", 0, node="a"), pod("y", 1, node="a")
    listed = [pod("x", 0, node="b"), pod("z", 2, node="a")]
    merged = merge_pods([a, b], listed)
    assert [p["metadata"]["name"] for p in merged] == ["x", "y", "z"]
    assert merged[0] is a  # the first source's copy wins


# ------------------------------------------------------------------------------------------ load capacity


def test_load_signal_capacity_from_the_performance_model() -> None:
    d = deployment()  # Llama-3.1-8B on H100, TP 1, Apply mode
    target = make_target(d, 1)
    cap, text, _ = replica_capacity(d, target.inputs.engine, target.recommendation)
    assert cap is not None, text
    # A roofline replica of an 8B model on an H100 serves thousands of tokens/s, prefill faster than decode.
    assert (
        5_000 < cap.prefill_tokens_per_s < 200_000
        and 1_000 < cap.decode_tokens_per_s < cap.prefill_tokens_per_s
    )
    assert "Llama-3.1-8B on H100-80GB" in text and "1024+256 tokens" in text
    config = scaling_config(d, capacity=cap)
    assert config.prefill_tokens_per_replica_s == cap.prefill_tokens_per_s
    assert config.decode_tokens_per_replica_s == cap.decode_tokens_per_s
    # The load signal now takes part: half the modelled capacity on one replica, with no demand history yet
    # (the headroom is its prior), is a ratio near 0.5 x prior / 0.85.
    o = FleetObservation(
        NOW - 1,
        ttft_p95=0.1,
        tpot_p95=0.01,
        waiting=0,
        running=4,
        prompt_token_rate=cap.prefill_tokens_per_s / 4,
        generation_token_rate=cap.decode_tokens_per_s / 4,
    )
    decision = compute_desired_replicas(config, o, CapacityView(current=1, ready=1), AutoscalerState(), NOW)
    assert decision.ratios["load"] == pytest.approx(
        0.5 * config.headroom_prior / config.target_utilization, rel=0.05
    )
    assert (
        "load"
        not in compute_desired_replicas(
            scaling_config(d), o, CapacityView(current=1, ready=1), AutoscalerState(), NOW
        ).ratios
    )
    # A tight TPOT target caps the batch: less capacity.
    tight = deployment(autoscaling={"enabled": True, "targets": {"tpotP95Seconds": 0.015}})
    cap2, _, _ = replica_capacity(
        tight, make_target(tight, 1).inputs.engine, make_target(tight, 1).recommendation
    )
    assert cap2 is not None and cap2.decode_tokens_per_s < cap.decode_tokens_per_s


def test_load_signal_off_when_the_model_is_unknown_or_the_parallelism_differs() -> None:
    unknown = deployment(model={"uri": "hf://someone/unknown-model"})
    t = make_target(unknown, 1)
    cap, text, _ = replica_capacity(unknown, t.inputs.engine, t.recommendation)
    assert cap is None and "not in the built-in catalogue" in text
    # Advise mode with TP left auto runs TP=1 while a 70B model is recommended TP>1: no capacity model.
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.3-70b-fp8-tp2.yaml").read_text())
    doc["spec"]["engine"]["tensorParallelSize"] = "auto"
    doc["spec"]["recommendation"] = {"mode": "Advise"}
    big = LLMDeployment.model_validate(doc)
    t = make_target(big, 1)
    cap, text, _ = replica_capacity(big, t.inputs.engine, t.recommendation)
    assert t.inputs.engine.tensor_parallel_size == 1
    assert cap is None and "the engine runs TP=1" in text, text


class _FlakyCore:
    """Fault injection for the cluster-wide GPU pod list: answers, then fails."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.calls = 0
        self.fail = False

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        self.calls += 1
        assert kwargs["resource_version"] == "0" and "Succeeded" in kwargs["field_selector"]
        if self.fail:
            raise RuntimeError("API server unavailable")
        return SimpleNamespace(data=json.dumps({"items": self.items}).encode())


def test_gpu_pod_list_is_cached_slimmed_and_survives_a_failed_list() -> None:
    from tidal.shell.autoscale import GpuPods

    core = _FlakyCore([foreign("train", "a", 3), {**foreign("cpu-only", "a", 0)}, pod("x", 0, node="b")])
    kube: Any = SimpleNamespace(core=core)
    cache = GpuPods(ttl=0.0)
    listed = cache.get(kube)
    assert listed is not None and [p["metadata"]["name"] for p in listed] == ["train", "x"]  # GPU pods only
    assert free_gpus(GPU_NODES, listed) == 16 - 3 - 1
    core.fail = True
    assert cache.get(kube) == listed  # a failed list keeps the previous one
    assert core.calls == 2
    never = GpuPods(ttl=0.0)
    assert never.get(kube) is None  # never listed: the caller counts Tidal's own pods
    cached = GpuPods(ttl=60.0)
    core.fail = False
    cached.get(kube)
    cached.get(kube)
    assert core.calls == 4  # one list per TTL, whatever asks
