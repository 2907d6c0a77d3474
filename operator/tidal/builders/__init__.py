"""Pure manifest builders: every Kubernetes object one ``LLMDeployment`` needs, as plain dicts.

``engine`` resolves the effective engine settings (explicit spec values, the recommendation in Apply mode),
``contract`` writes the worker's environment contract, ``pods`` the worker pods of one replica (a single pod
or a Ray group), ``services`` the API/metrics Service, the Ray group's headless Service and the
PodDisruptionBudget, ``names`` the deterministic names and labels. No Kubernetes client, no I/O, no clock:
the same inputs always build the same objects, which is what makes the reconcile idempotent.
"""
