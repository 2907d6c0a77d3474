"""The pure reconcile planner: ``plan_reconcile(deployment, observed, now) -> Plan``.

``types`` holds the inputs and the plan, ``replicas`` judges the observed pods replica by replica,
``conditions`` merges conditions and turns transitions into Events, ``reconcile`` decides. No Kubernetes
client, no clock, no I/O: the shell (``tidal.shell``) observes, calls the planner and applies the plan.
"""

from tidal.plan.reconcile import make_target, plan_reconcile, rfc3339
from tidal.plan.types import EventSpec, NodeInfo, ObjectRef, Observed, Plan

__all__ = [
    "EventSpec",
    "NodeInfo",
    "ObjectRef",
    "Observed",
    "Plan",
    "make_target",
    "plan_reconcile",
    "rfc3339",
]
