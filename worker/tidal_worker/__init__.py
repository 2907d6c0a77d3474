"""Tidal worker: the container entrypoint of every GPU pod (vLLM launcher, Ray bootstrap, drain).

It shares nothing with the operator but the documented pod contract (arguments and
environment), see ``tidal_worker.contract``.
"""

__version__ = "0.1.0"
