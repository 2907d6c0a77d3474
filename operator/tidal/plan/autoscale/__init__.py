"""Glue between an ``LLMDeployment`` and the pure scaling algorithm (:mod:`tidal.scaling`), pure as well.

The shell observes (pods, nodes, Prometheus) and calls these modules, one concern each:

* :mod:`~tidal.plan.autoscale.config`: the spec -> :class:`~tidal.scaling.ScalingConfig`, and one replica's
  modelled capacity for the ``load`` signal;
* :mod:`~tidal.plan.autoscale.observe`: the observed pods and nodes -> :class:`~tidal.scaling.CapacityView`
  (ready and starting replicas, cold start, free GPUs, replica ages), and the status ->
  :class:`~tidal.scaling.AutoscalerState` (so an operator restart does not reset the windows);
* :mod:`~tidal.plan.autoscale.tuning`: engine advice -> tuning (``Apply`` mode records an override in
  ``status.engineTuning.overrides``, which the pod builders read, so the change rolls out like any spec
  change), with rollbacks;
* :mod:`~tidal.plan.autoscale.status`: a :class:`~tidal.scaling.ScalingDecision` -> the status fields,
  conditions and Events the autoscaler owns (:class:`~tidal.plan.autoscale.status.AutoscalerPatch`), which
  the reconcile planner writes in the same status patch as its own.

GPU-hours are :mod:`tidal.plan.gpuhours` (the planner accounts them too). Every pass works from one
:class:`~tidal.plan.target.Resolved` (target and replica views), built once by the shell. No clock, no I/O:
``now`` (Unix seconds) and the RFC 3339 ``stamp`` are passed in. Callers import from the submodules.
"""
