"""The pod contract: every environment variable the operator writes and the worker reads.

This module is the single place where the worker learns its configuration. The operator's manifest builders
write exactly these variables into the pod spec (see docs/worker-contract.md); both sides golden-test the same
file, tests/golden/worker-contract-*.json, so neither can drift silently. The worker and the operator share no
imports: the contract is the environment, documented.

`WorkerContract.from_env(env)` parses and validates a mapping (normally ``os.environ``) into a typed, frozen
dataclass. It collects every problem before failing, so a misconfigured pod reports all of its mistakes in one
log line (`ContractError`). `WorkerContract.to_env()` renders the inverse (only the variables that differ from
the defaults are left out when ``minimal=True``), which is what the golden tests compare.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")


class Role(StrEnum):
    """What this pod is in its replica: a whole replica, or the head/a worker of a multi-node Ray group."""

    SINGLE = "single"
    RAY_HEAD = "ray-head"
    RAY_WORKER = "ray-worker"


class Device(StrEnum):
    """Accelerator the engine runs on; ``cpu`` is the vLLM CPU build used by the test tiers."""

    CUDA = "cuda"
    CPU = "cpu"


class ContractError(ValueError):
    """The pod environment violates the contract; ``problems`` lists every violation found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid worker contract: " + "; ".join(problems))


DTYPES = frozenset({"auto", "half", "float16", "bfloat16", "float", "float32"})
KV_CACHE_DTYPES = frozenset({"auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"})

# Environment variable names (the contract). Kept as constants so tests and docs refer to one spelling.
ENV_ROLE = "TIDAL_ROLE"
ENV_MODEL_URI = "TIDAL_MODEL_URI"
ENV_SERVED_MODEL_NAME = "TIDAL_SERVED_MODEL_NAME"
ENV_TP = "TIDAL_TP"
ENV_PP = "TIDAL_PP"
ENV_GPU_MEMORY_UTILIZATION = "TIDAL_GPU_MEMORY_UTILIZATION"
ENV_KV_CACHE_MEMORY_BYTES = "TIDAL_KV_CACHE_MEMORY_BYTES"
ENV_MAX_NUM_SEQS = "TIDAL_MAX_NUM_SEQS"
ENV_MAX_MODEL_LEN = "TIDAL_MAX_MODEL_LEN"
ENV_MAX_NUM_BATCHED_TOKENS = "TIDAL_MAX_NUM_BATCHED_TOKENS"
ENV_DTYPE = "TIDAL_DTYPE"
ENV_QUANTIZATION = "TIDAL_QUANTIZATION"
ENV_KV_CACHE_DTYPE = "TIDAL_KV_CACHE_DTYPE"
ENV_ENABLE_PREFIX_CACHING = "TIDAL_ENABLE_PREFIX_CACHING"
ENV_ENFORCE_EAGER = "TIDAL_ENFORCE_EAGER"
ENV_TRUST_REMOTE_CODE = "TIDAL_TRUST_REMOTE_CODE"
ENV_EXTRA_ARGS = "TIDAL_EXTRA_ARGS"
ENV_PORT = "TIDAL_PORT"
ENV_GROUP_SIZE = "TIDAL_GROUP_SIZE"
ENV_RAY_HEAD_ADDRESS = "TIDAL_RAY_HEAD_ADDRESS"
ENV_RAY_PORT = "TIDAL_RAY_PORT"
ENV_RAY_RESOURCE = "TIDAL_RAY_RESOURCE"
ENV_RAY_START_ARGS = "TIDAL_RAY_START_ARGS"
ENV_EXPECTED_GPUS = "TIDAL_EXPECTED_GPUS"
ENV_RAY_JOIN_TIMEOUT_SECONDS = "TIDAL_RAY_JOIN_TIMEOUT_SECONDS"
ENV_MODEL_CACHE_DIR = "TIDAL_MODEL_CACHE_DIR"
ENV_PVC_ROOT = "TIDAL_PVC_ROOT"
ENV_HF_TOKEN = "HF_TOKEN"
ENV_DRAIN_GRACE_SECONDS = "TIDAL_DRAIN_GRACE_SECONDS"
ENV_ENGINE_STOP_TIMEOUT_SECONDS = "TIDAL_ENGINE_STOP_TIMEOUT_SECONDS"
ENV_STARTUP_TIMEOUT_SECONDS = "TIDAL_STARTUP_TIMEOUT_SECONDS"
ENV_DEVICE = "TIDAL_DEVICE"


@dataclass(frozen=True)
class WorkerContract:
    """The worker's whole configuration, parsed from the pod environment. Field docs name the variable."""

    role: Role = Role.SINGLE
    """TIDAL_ROLE: single | ray-head | ray-worker."""
    model_uri: str = ""
    """TIDAL_MODEL_URI: hf://org/name[@rev], pvc://claim/path, or an absolute local path. Required except for
    ray-worker (workers get the model through the head's Ray tasks)."""
    served_model_name: str = ""
    """TIDAL_SERVED_MODEL_NAME: name clients use in requests; default: the last path segment of the URI."""
    tensor_parallel_size: int = 1
    """TIDAL_TP: GPUs one layer is split over (inside a node)."""
    pipeline_parallel_size: int = 1
    """TIDAL_PP: pipeline stages (normally one per node of a Ray group)."""
    gpu_memory_utilization: float | None = None
    """TIDAL_GPU_MEMORY_UTILIZATION: fraction (0, 1] of accelerator memory vLLM may use; on CPU, of RAM."""
    kv_cache_memory_bytes: int | None = None
    """TIDAL_KV_CACHE_MEMORY_BYTES: exact KV-cache size per worker in bytes (overrides the utilization)."""
    max_num_seqs: int | None = None
    """TIDAL_MAX_NUM_SEQS: maximum concurrent sequences per engine step."""
    max_model_len: int | None = None
    """TIDAL_MAX_MODEL_LEN: context length limit (prompt + output)."""
    max_num_batched_tokens: int | None = None
    """TIDAL_MAX_NUM_BATCHED_TOKENS: token budget per engine step."""
    dtype: str | None = None
    """TIDAL_DTYPE: auto | half | float16 | bfloat16 | float | float32."""
    quantization: str | None = None
    """TIDAL_QUANTIZATION: a vLLM quantization method (checked against vLLM's list at preflight)."""
    kv_cache_dtype: str | None = None
    """TIDAL_KV_CACHE_DTYPE: auto | bfloat16 | fp8 | fp8_e4m3 | fp8_e5m2 | ..."""
    enable_prefix_caching: bool | None = None
    """TIDAL_ENABLE_PREFIX_CACHING: true/false; unset keeps vLLM's default."""
    enforce_eager: bool = False
    """TIDAL_ENFORCE_EAGER: disable CUDA graphs / compilation (always on for the CPU test device)."""
    trust_remote_code: bool = False
    """TIDAL_TRUST_REMOTE_CODE: allow model repositories to run their own code."""
    extra_args: tuple[str, ...] = ()
    """TIDAL_EXTRA_ARGS: JSON list of strings appended verbatim to vLLM's argument list (escape hatch)."""
    port: int = 8000
    """TIDAL_PORT: public port (OpenAI API, probes, /metrics): vLLM's own server with Tidal's middleware."""
    group_size: int = 1
    """TIDAL_GROUP_SIZE: pods (nodes) in this replica's Ray group, head included; 1 for single."""
    ray_head_address: str = ""
    """TIDAL_RAY_HEAD_ADDRESS: host name/IP of the Ray head (required for ray-worker)."""
    ray_port: int = 6379
    """TIDAL_RAY_PORT: Ray GCS port on the head."""
    ray_resource: str = "GPU"
    """TIDAL_RAY_RESOURCE: the Ray resource the head counts while waiting for its group (GPU on real pods)."""
    ray_start_args: tuple[str, ...] = ()
    """TIDAL_RAY_START_ARGS: JSON list of extra `ray start` arguments (e.g. --num-cpus, --resources)."""
    expected_gpus: int | None = None
    """TIDAL_EXPECTED_GPUS: accelerators the whole replica has; must equal TP x PP. Default: TP x PP."""
    ray_join_timeout_seconds: float = 600.0
    """TIDAL_RAY_JOIN_TIMEOUT_SECONDS: how long the head waits for its group before failing."""
    model_cache_dir: str = "/cache/models"
    """TIDAL_MODEL_CACHE_DIR: download cache for hf:// models (an emptyDir or a PVC)."""
    pvc_root: str = "/models"
    """TIDAL_PVC_ROOT: where model PVCs are mounted; pvc://claim/path resolves to <root>/<claim>/<path>."""
    hf_token: str | None = field(default=None, repr=False)
    """HF_TOKEN: Hugging Face token, from a Secret (never logged)."""
    drain_grace_seconds: float = 30.0
    """TIDAL_DRAIN_GRACE_SECONDS: after SIGTERM, how long in-flight requests may run before vLLM stops."""
    engine_stop_timeout_seconds: float = 10.0
    """TIDAL_ENGINE_STOP_TIMEOUT_SECONDS: wait after SIGTERM to vLLM before SIGKILL."""
    startup_timeout_seconds: float | None = 1800.0
    """TIDAL_STARTUP_TIMEOUT_SECONDS: fail (exit non-zero) if vLLM is not ready by then; 0 disables."""
    device: Device = Device.CUDA
    """TIDAL_DEVICE: cuda | cpu."""

    @property
    def world_size(self) -> int:
        """Accelerators one replica uses: TP x PP."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def gpus_expected(self) -> int:
        """TIDAL_EXPECTED_GPUS, or TP x PP when unset."""
        return self.expected_gpus if self.expected_gpus is not None else self.world_size

    @property
    def min_termination_grace_seconds(self) -> int:
        """The smallest pod terminationGracePeriodSeconds that lets a drain finish: grace + stop + 5 s."""
        return math.ceil(self.drain_grace_seconds + self.engine_stop_timeout_seconds + 5)

    @property
    def uses_ray(self) -> bool:
        """Whether this pod belongs to a multi-node Ray group."""
        return self.role is not Role.SINGLE

    @property
    def model_name(self) -> str:
        """The served model name (explicit, or derived from the URI)."""
        if self.served_model_name:
            return self.served_model_name
        base = self.model_uri.split("@", 1)[0].rstrip("/")
        return base.rsplit("/", 1)[-1] or "model"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerContract:
        """Parse and validate `env`; raise `ContractError` listing every problem."""
        p = _Parser(env)
        c = cls(
            role=p.enum(ENV_ROLE, Role, Role.SINGLE),
            model_uri=p.string(ENV_MODEL_URI, ""),
            served_model_name=p.string(ENV_SERVED_MODEL_NAME, ""),
            tensor_parallel_size=p.integer(ENV_TP, 1, minimum=1),
            pipeline_parallel_size=p.integer(ENV_PP, 1, minimum=1),
            gpu_memory_utilization=p.opt_float(ENV_GPU_MEMORY_UTILIZATION, lo=0.0, hi=1.0),
            kv_cache_memory_bytes=p.opt_int(ENV_KV_CACHE_MEMORY_BYTES, minimum=1),
            max_num_seqs=p.opt_int(ENV_MAX_NUM_SEQS, minimum=1),
            max_model_len=p.opt_int(ENV_MAX_MODEL_LEN, minimum=1),
            max_num_batched_tokens=p.opt_int(ENV_MAX_NUM_BATCHED_TOKENS, minimum=1),
            dtype=p.choice(ENV_DTYPE, DTYPES),
            quantization=p.opt_string(ENV_QUANTIZATION),
            kv_cache_dtype=p.choice(ENV_KV_CACHE_DTYPE, KV_CACHE_DTYPES),
            enable_prefix_caching=p.opt_bool(ENV_ENABLE_PREFIX_CACHING),
            enforce_eager=p.boolean(ENV_ENFORCE_EAGER, False),
            trust_remote_code=p.boolean(ENV_TRUST_REMOTE_CODE, False),
            extra_args=p.string_list(ENV_EXTRA_ARGS),
            port=p.port(ENV_PORT, 8000),
            group_size=p.integer(ENV_GROUP_SIZE, 1, minimum=1),
            ray_head_address=p.string(ENV_RAY_HEAD_ADDRESS, ""),
            ray_port=p.port(ENV_RAY_PORT, 6379),
            ray_resource=p.string(ENV_RAY_RESOURCE, "GPU"),
            ray_start_args=p.string_list(ENV_RAY_START_ARGS),
            expected_gpus=p.opt_int(ENV_EXPECTED_GPUS, minimum=1),
            ray_join_timeout_seconds=p.seconds(ENV_RAY_JOIN_TIMEOUT_SECONDS, 600.0),
            model_cache_dir=p.string(ENV_MODEL_CACHE_DIR, "/cache/models"),
            pvc_root=p.string(ENV_PVC_ROOT, "/models"),
            hf_token=p.opt_string(ENV_HF_TOKEN),
            drain_grace_seconds=p.seconds(ENV_DRAIN_GRACE_SECONDS, 30.0),
            engine_stop_timeout_seconds=p.seconds(ENV_ENGINE_STOP_TIMEOUT_SECONDS, 10.0),
            startup_timeout_seconds=p.seconds(ENV_STARTUP_TIMEOUT_SECONDS, 1800.0) or None,
            device=p.enum(ENV_DEVICE, Device, Device.CUDA),
        )
        p.problems.extend(c.consistency_problems())
        if p.problems:
            raise ContractError(p.problems)
        return c

    def consistency_problems(self) -> list[str]:
        """Cross-field rules (each field alone is already valid)."""
        problems: list[str] = []
        if self.role is not Role.RAY_WORKER and not self.model_uri:
            problems.append(f"{ENV_MODEL_URI} is required for role {self.role.value}")
        if self.role is Role.RAY_WORKER and not self.ray_head_address:
            problems.append(f"{ENV_RAY_HEAD_ADDRESS} is required for role ray-worker")
        if self.role is Role.SINGLE and self.group_size != 1:
            problems.append(f"{ENV_GROUP_SIZE}={self.group_size} needs role ray-head/ray-worker, not single")
        if self.role is not Role.SINGLE and self.group_size < 2:
            problems.append(f"role {self.role.value} needs {ENV_GROUP_SIZE} >= 2 (got {self.group_size})")
        return problems

    def to_env(self, *, minimal: bool = True) -> dict[str, str]:
        """Render the contract as environment variables (the inverse of `from_env`).

        With ``minimal`` only TIDAL_ROLE and the variables whose value differs from the default are written,
        which is what the operator's builders emit. HF_TOKEN is never rendered (it comes from a Secret
        reference).
        """
        out: dict[str, str] = {}
        defaults = WorkerContract()
        for f in fields(self):
            if f.name == "hf_token":
                continue
            value = getattr(self, f.name)
            if minimal and value == getattr(defaults, f.name) and f.name != "role":
                continue
            if value is None:
                continue
            out[_FIELD_ENV[f.name]] = _render(value)
        return dict(sorted(out.items()))


_FIELD_ENV: dict[str, str] = {
    "role": ENV_ROLE,
    "model_uri": ENV_MODEL_URI,
    "served_model_name": ENV_SERVED_MODEL_NAME,
    "tensor_parallel_size": ENV_TP,
    "pipeline_parallel_size": ENV_PP,
    "gpu_memory_utilization": ENV_GPU_MEMORY_UTILIZATION,
    "kv_cache_memory_bytes": ENV_KV_CACHE_MEMORY_BYTES,
    "max_num_seqs": ENV_MAX_NUM_SEQS,
    "max_model_len": ENV_MAX_MODEL_LEN,
    "max_num_batched_tokens": ENV_MAX_NUM_BATCHED_TOKENS,
    "dtype": ENV_DTYPE,
    "quantization": ENV_QUANTIZATION,
    "kv_cache_dtype": ENV_KV_CACHE_DTYPE,
    "enable_prefix_caching": ENV_ENABLE_PREFIX_CACHING,
    "enforce_eager": ENV_ENFORCE_EAGER,
    "trust_remote_code": ENV_TRUST_REMOTE_CODE,
    "extra_args": ENV_EXTRA_ARGS,
    "port": ENV_PORT,
    "group_size": ENV_GROUP_SIZE,
    "ray_head_address": ENV_RAY_HEAD_ADDRESS,
    "ray_port": ENV_RAY_PORT,
    "ray_resource": ENV_RAY_RESOURCE,
    "ray_start_args": ENV_RAY_START_ARGS,
    "expected_gpus": ENV_EXPECTED_GPUS,
    "ray_join_timeout_seconds": ENV_RAY_JOIN_TIMEOUT_SECONDS,
    "model_cache_dir": ENV_MODEL_CACHE_DIR,
    "pvc_root": ENV_PVC_ROOT,
    "hf_token": ENV_HF_TOKEN,
    "drain_grace_seconds": ENV_DRAIN_GRACE_SECONDS,
    "engine_stop_timeout_seconds": ENV_ENGINE_STOP_TIMEOUT_SECONDS,
    "startup_timeout_seconds": ENV_STARTUP_TIMEOUT_SECONDS,
    "device": ENV_DEVICE,
}

CONTRACT_ENV_VARS: tuple[str, ...] = tuple(sorted(_FIELD_ENV.values()))
"""Every variable of the contract, sorted."""


REMOVED_ENV_VARS: dict[str, str] = {
    "TIDAL_ENGINE_PORT": "vLLM now listens on TIDAL_PORT itself (no loopback engine port)",
    "TIDAL_METRICS_PORT": "/metrics is served on TIDAL_PORT only",
}
"""Variables earlier workers read; ignored now (the worker logs a warning when one is set)."""


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _Parser:
    """Reads typed values from an env mapping, collecting problems instead of raising at the first one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _convert(self, name: str, raw: str, conv: Callable[[str], T], what: str) -> T | None:
        try:
            return conv(raw)
        except (ValueError, TypeError):
            self.problems.append(f"{name}={raw!r} is not {what}")
            return None

    def string(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def opt_string(self, name: str) -> str | None:
        return self._raw(name)

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.opt_int(name, minimum=minimum)
        return default if value is None else value

    def opt_int(self, name: str, *, minimum: int) -> int | None:
        raw = self._raw(name)
        if raw is None:
            return None
        value = self._convert(name, raw, int, "an integer")
        if value is not None and value < minimum:
            self.problems.append(f"{name}={value} must be >= {minimum}")
            return None
        return value

    def port(self, name: str, default: int) -> int:
        value = self.opt_port(name)
        return default if value is None else value

    def opt_port(self, name: str) -> int | None:
        value = self.opt_int(name, minimum=1)
        if value is not None and value > 65535:
            self.problems.append(f"{name}={value} is not a TCP port (1-65535)")
            return None
        return value

    def opt_float(self, name: str, *, lo: float, hi: float) -> float | None:
        raw = self._raw(name)
        if raw is None:
            return None
        value = self._convert(name, raw, float, "a number")
        if value is not None and not (lo < value <= hi and math.isfinite(value)):
            self.problems.append(f"{name}={value} must be in ({lo}, {hi}]")
            return None
        return value

    def seconds(self, name: str, default: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        value = self._convert(name, raw, float, "a number of seconds")
        if value is None:
            return default
        if value < 0 or not math.isfinite(value):
            self.problems.append(f"{name}={raw!r} must be a finite number of seconds >= 0")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.opt_bool(name)
        return default if value is None else value

    def opt_bool(self, name: str) -> bool | None:
        raw = self._raw(name)
        if raw is None:
            return None
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={raw!r} is not a boolean (true/false)")
        return None

    def choice(self, name: str, allowed: frozenset[str]) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        if raw not in allowed:
            self.problems.append(f"{name}={raw!r} is not one of {', '.join(sorted(allowed))}")
            return None
        return raw

    def enum(self, name: str, kind: type[Role] | type[Device], default: Any) -> Any:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            self.problems.append(f"{name}={raw!r} is not one of {allowed}")
            return default

    def string_list(self, name: str) -> tuple[str, ...]:
        raw = self._raw(name)
        if raw is None:
            return ()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            self.problems.append(f"{name} is not valid JSON ({exc.msg}); expected a list of strings")
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problems.append(f"{name} must be a JSON list of strings, got {raw!r}")
            return ()
        return tuple(value)
