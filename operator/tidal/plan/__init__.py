"""The pure reconcile planner: ``plan_reconcile(deployment, observed, now) -> Plan``.

``types`` holds the inputs and the plan, ``target`` resolves what the replicas should look like (once per
pass), ``replicas`` judges the observed pods replica by replica, ``conditions`` merges conditions and turns
transitions into Events, ``gpuhours`` accounts GPU-hours, ``autoscale`` is the autoscaler's glue,
``reconcile`` decides. No Kubernetes client, no clock, no I/O: the shell (``tidal.shell``) observes, calls the
planner and applies the plan.
"""

from tidal.plan.documents import rfc3339
from tidal.plan.reconcile import plan_reconcile
from tidal.plan.target import Resolved, make_target, resolve
from tidal.plan.types import EventSpec, NodeInfo, ObjectRef, Observed, Plan

__all__ = [
    "EventSpec",
    "NodeInfo",
    "ObjectRef",
    "Observed",
    "Plan",
    "Resolved",
    "make_target",
    "plan_reconcile",
    "resolve",
    "rfc3339",
]
