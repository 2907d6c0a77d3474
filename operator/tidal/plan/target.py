"""What the replicas should look like, resolved once per reconcile pass: the effective engine, the pod
template's spec hash and the replica count (:class:`Target`), with the observed pods grouped into replicas
(:class:`Resolved`); and where such replicas fit (the matching GPU nodes).

Its own module because every planner of a pass reads the same target: the autoscaler's pass (tuning hashes
the template it would produce) and the reconcile planner. Resolving the engine and hashing the pod template,
and grouping the pods, are the expensive parts of a pass; the shell resolves them once
(:func:`resolve`) and hands the result to both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tidal.api import LLMDeployment
from tidal.builders.engine import RecommendationResult, recommend_for_spec, resolve_engine, tuned_overrides
from tidal.builders.gpus import GPU_PRODUCT_LABEL, product_labels
from tidal.builders.pods import BuilderConfig, ReplicaInputs, compute_spec_hash
from tidal.plan.replicas import ReplicaView, group_replicas
from tidal.plan.types import NodeInfo

DEFAULT_CONFIG = BuilderConfig()
"""Pod defaults when the operator configures none."""


@dataclass(frozen=True)
class Target:
    """What the replicas should look like."""

    inputs: ReplicaInputs
    spec_hash: str
    replicas: int
    recommendation: RecommendationResult | None

    @property
    def group_size(self) -> int:
        return self.inputs.shape.group_size


def make_target(deployment: LLMDeployment, replicas: int, config: BuilderConfig = DEFAULT_CONFIG) -> Target:
    """Resolve the effective engine (recommendation and tuned overrides in Apply mode), the pod template
    hash and the count."""
    rec = recommend_for_spec(deployment.spec, deployment.metadata.generation)
    engine = resolve_engine(deployment.spec, rec, tuned_overrides(deployment.status))
    inputs = ReplicaInputs(deployment, engine, config)
    return Target(inputs, compute_spec_hash(inputs), replicas, rec)


@dataclass(frozen=True)
class Resolved:
    """One pass's target and the deployment's pods grouped into replicas (by index), with the pods that
    belong to no replica (``strays``)."""

    target: Target
    views: Mapping[int, ReplicaView]
    strays: Sequence[Mapping[str, Any]]


def resolve(
    deployment: LLMDeployment,
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
    config: BuilderConfig = DEFAULT_CONFIG,
    replicas: int | None = None,
) -> Resolved:
    """The pass's target (``replicas``: default ``spec.replicas``) and replica views of ``pods``."""
    target = make_target(deployment, deployment.spec.replicas if replicas is None else replicas, config)
    views, strays = group_replicas(pods, now)
    return Resolved(target, views, strays)


def node_matches(node: NodeInfo, deployment: LLMDeployment) -> bool:
    """The node can run the deployment's workers (schedulable, GPU product and node selector match)."""
    return matching_nodes([node], deployment) != []


def matching_nodes(nodes: Sequence[NodeInfo], deployment: LLMDeployment) -> list[NodeInfo]:
    """The nodes that can run the deployment's workers (see :func:`node_matches`)."""
    res = deployment.spec.resources
    products = product_labels(res.gpu_type)
    selector = list(res.node_selector.items())
    return [
        n
        for n in nodes
        if n.schedulable
        and n.labels.get(GPU_PRODUCT_LABEL) in products
        and all(n.labels.get(k) == v for k, v in selector)
    ]


def gpu_shortage(target: Target, nodes: list[NodeInfo] | None) -> str | None:
    """Why the matching nodes cannot hold the desired replicas at all (capacity, not current use)."""
    if nodes is None or target.replicas == 0:
        return None
    deployment = target.inputs.deployment
    shape = target.inputs.shape
    matching = matching_nodes(nodes, deployment)
    slots = sum(n.allocatable_gpus // shape.gpus_per_pod for n in matching)
    needed = target.replicas * shape.group_size
    if slots >= needed and (
        shape.group_size == 1
        or sum(1 for n in matching if n.allocatable_gpus >= shape.gpus_per_pod) >= shape.group_size
    ):
        return None
    return (
        f"{target.replicas} replica(s) need {needed} pod(s) of {shape.gpus_per_pod} nvidia.com/gpu on "
        f"{deployment.spec.resources.gpu_type} nodes; {len(matching)} matching node(s) hold {slots}"
    )


__all__ = [
    "DEFAULT_CONFIG",
    "Resolved",
    "Target",
    "gpu_shortage",
    "make_target",
    "matching_nodes",
    "node_matches",
    "resolve",
]
