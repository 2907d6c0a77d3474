"""Tidal: a Kubernetes operator for multi-GPU LLM serving with vLLM.

The package is split into a pure core (``api``, ``builders``, ``plan``, ``recommender``,
``scaling``, ``sim``) that reads no clock, environment or network, and a thin I/O shell
(``shell``) holding the kopf handlers and the Kubernetes/Prometheus clients.
"""

__version__ = "0.1.0"
