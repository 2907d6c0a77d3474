"""The operator's side of the worker pod contract (docs/worker-contract.md): the ``TIDAL_*`` environment
variables a worker pod gets.

The worker parses these in ``tidal_worker.contract``; the two sides share no imports, only the documented
variables and the golden files ``tests/golden/worker-contract-*.json``, which both sides test against. Like
the worker's ``to_env(minimal=True)``, only ``TIDAL_ROLE`` and the variables that differ from the worker's
defaults are written, so the golden files are an exact comparison. ``HF_TOKEN`` is never a literal here: the
pod builder adds it as a ``secretKeyRef``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tidal.api.enginefields import SETTINGS
from tidal.builders.engine import EffectiveEngine
from tidal.builders.names import ROLE_RAY_HEAD, ROLE_RAY_WORKER, ROLE_SINGLE

DEFAULT_PORT = 8000
"""TIDAL_PORT default: OpenAI API, /ready, /live, /metrics."""
DEFAULT_MODEL_CACHE_DIR = "/cache/models"
DEFAULT_PVC_ROOT = "/models"
DEFAULT_DRAIN_GRACE_SECONDS = 30.0
DEFAULT_ENGINE_STOP_TIMEOUT_SECONDS = 10.0
DEFAULT_STARTUP_TIMEOUT_SECONDS = 1800.0
DEFAULT_RAY_JOIN_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class WorkerEnvInput:
    """Everything that goes into one pod's contract variables."""

    role: str
    """``single``, ``ray-head`` or ``ray-worker``."""
    model_uri: str
    served_model_name: str
    engine: EffectiveEngine
    expected_gpus: int
    """GPUs of the whole replica (TP x PP)."""
    group_size: int = 1
    ray_head_address: str = ""
    model_cache_dir: str = DEFAULT_MODEL_CACHE_DIR
    pvc_root: str = DEFAULT_PVC_ROOT
    drain_grace_seconds: float = DEFAULT_DRAIN_GRACE_SECONDS
    engine_stop_timeout_seconds: float = DEFAULT_ENGINE_STOP_TIMEOUT_SECONDS
    startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS
    ray_join_timeout_seconds: float = DEFAULT_RAY_JOIN_TIMEOUT_SECONDS
    port: int = DEFAULT_PORT
    device: str = "cuda"

    @property
    def min_termination_grace_seconds(self) -> int:
        """The contract's floor for terminationGracePeriodSeconds: drain grace + engine stop + 5 s (a Ray
        worker does not drain: its drain grace is the worker default)."""
        drain = DEFAULT_DRAIN_GRACE_SECONDS if self.role == ROLE_RAY_WORKER else self.drain_grace_seconds
        return int(-(-(drain + self.engine_stop_timeout_seconds + 5) // 1))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _settings_env(engine: EffectiveEngine, *, every_pod: bool) -> dict[str, str]:
    """The variables of the registry's settings (:mod:`tidal.api.enginefields`) that every pod of a group
    gets (``every_pod``) or that only the engine's pod gets; a setting at its default is left out."""
    out: dict[str, str] = {}
    for setting in SETTINGS:
        value = getattr(engine, setting.field)
        if setting.every_pod == every_pod and value is not None and value != setting.default:
            out[setting.env] = setting.render(value)
    return out


def worker_env(inp: WorkerEnvInput) -> dict[str, str]:
    """The ``TIDAL_*`` variables of one pod, sorted by name."""
    if inp.role not in (ROLE_SINGLE, ROLE_RAY_HEAD, ROLE_RAY_WORKER):
        raise ValueError(f"unknown worker role {inp.role!r}")
    e = inp.engine
    out: dict[str, str] = {"TIDAL_ROLE": inp.role, "TIDAL_MODEL_URI": inp.model_uri}
    if inp.served_model_name:
        out["TIDAL_SERVED_MODEL_NAME"] = inp.served_model_name
    out.update(_settings_env(e, every_pod=True))
    out["TIDAL_EXPECTED_GPUS"] = str(inp.expected_gpus)
    if inp.model_cache_dir != DEFAULT_MODEL_CACHE_DIR:
        out["TIDAL_MODEL_CACHE_DIR"] = inp.model_cache_dir
    if inp.pvc_root != DEFAULT_PVC_ROOT:
        out["TIDAL_PVC_ROOT"] = inp.pvc_root
    if inp.device != "cuda":
        out["TIDAL_DEVICE"] = inp.device
    if inp.role != ROLE_SINGLE:
        out["TIDAL_GROUP_SIZE"] = str(inp.group_size)
        out["TIDAL_RAY_HEAD_ADDRESS"] = inp.ray_head_address
        if inp.ray_join_timeout_seconds != DEFAULT_RAY_JOIN_TIMEOUT_SECONDS:
            out["TIDAL_RAY_JOIN_TIMEOUT_SECONDS"] = _num(inp.ray_join_timeout_seconds)
    if inp.role != ROLE_RAY_WORKER:
        # The engine runs on the single pod or the Ray head; Ray workers only lend their GPUs.
        if inp.port != DEFAULT_PORT:
            out["TIDAL_PORT"] = str(inp.port)
        out.update(_settings_env(e, every_pod=False))
        optional: dict[str, str | None] = {
            "TIDAL_DTYPE": e.dtype,
            "TIDAL_QUANTIZATION": e.quantization,
            "TIDAL_KV_CACHE_DTYPE": e.kv_cache_dtype,
            "TIDAL_ENABLE_PREFIX_CACHING": (
                None if e.enable_prefix_caching is None else ("true" if e.enable_prefix_caching else "false")
            ),
            "TIDAL_EXTRA_ARGS": json.dumps(list(e.extra_args)) if e.extra_args else None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if inp.drain_grace_seconds != DEFAULT_DRAIN_GRACE_SECONDS:
            out["TIDAL_DRAIN_GRACE_SECONDS"] = _num(inp.drain_grace_seconds)
        if inp.startup_timeout_seconds != DEFAULT_STARTUP_TIMEOUT_SECONDS:
            out["TIDAL_STARTUP_TIMEOUT_SECONDS"] = _num(inp.startup_timeout_seconds)
    if inp.engine_stop_timeout_seconds != DEFAULT_ENGINE_STOP_TIMEOUT_SECONDS:
        out["TIDAL_ENGINE_STOP_TIMEOUT_SECONDS"] = _num(inp.engine_stop_timeout_seconds)
    return dict(sorted(out.items()))
