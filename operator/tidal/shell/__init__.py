"""The I/O shell: kopf handlers, the Kubernetes and Prometheus clients, Events and operator metrics.

Everything that touches the network, the clock or the process lives here; decisions are
delegated to the pure core (``tidal.plan``, ``tidal.builders``, ``tidal.recommender``,
``tidal.scaling``). An import-linter contract keeps the core from importing this package.
"""
