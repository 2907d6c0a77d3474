"""`make demo` / `tidal demo`: Tidal autoscaling a deployment live on the local control plane.

The demo starts the local control plane with fake GPU nodes (``tidal.devcluster``), a real Prometheus,
the operator, and a simulated fleet that serves vLLM-format metrics for the fake worker pods under a load
that goes low -> high -> low; it applies ``examples/llama-3.1-8b.yaml`` (adjusted for the demo), shows the
replicas and the scaling Events as they happen, ends with a summary and cleans everything up. It exists so
a newcomer sees what Tidal does in a few minutes, without a GPU or a cluster.

* :mod:`tidal.demo.model` — the load profile and the queueing model of one replica (no I/O).
* :mod:`tidal.demo.exporter` — the per-pod ``/metrics`` endpoints and Prometheus file_sd targets.
* :mod:`tidal.demo.prometheus` — the Prometheus process.
* :mod:`tidal.demo.identity` — the operator's ServiceAccount, RBAC and token kubeconfig.
* :mod:`tidal.demo.display` — the table, the Events and the summary.
* :mod:`tidal.demo.scenario` — the options and the example adjusted for the demo.
* :mod:`tidal.demo.kube` — the CRDs, the namespace and the tolerant reads of the API.
* :mod:`tidal.demo.runner` — the whole run; :mod:`tidal.demo.cli` — its flags.

See docs/demo.md.
"""
