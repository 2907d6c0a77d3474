"""Pure translation of the contract into the vLLM OpenAI server's command line.

`build_vllm_argv(contract, model_path, python=...)` returns the exact argv the worker executes; nothing here
reads the environment or touches the file system, so the mapping is unit-tested field by field and the Ray
test checks the argv the head would launch. vLLM is started as ``python -m
vllm.entrypoints.openai.api_server`` (works for both the GPU `vllm` package and the CPU build, whose `vllm`
console script is broken), listening on the public port (TIDAL_PORT) itself with Tidal's ASGI middleware
(``--middleware tidal_worker.middleware.TidalMiddleware``: probes, drain, ``tidal_worker_*`` metrics), so no
proxy hop sits in the request path.
"""

from __future__ import annotations

from .contract import Device, Role, WorkerContract

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
ENGINE_HOST = "0.0.0.0"
MIDDLEWARE = "tidal_worker.middleware.TidalMiddleware"


def build_vllm_argv(contract: WorkerContract, model_path: str, *, python: str = "python") -> tuple[str, ...]:
    """The vLLM server command for `contract`, serving the already-resolved local `model_path`."""
    c = contract
    argv: list[str] = [
        python,
        "-m",
        VLLM_MODULE,
        "--model",
        model_path,
        "--served-model-name",
        c.model_name,
        "--host",
        ENGINE_HOST,
        "--port",
        str(c.port),
        "--middleware",
        MIDDLEWARE,
        "--tensor-parallel-size",
        str(c.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(c.pipeline_parallel_size),
    ]
    if c.role is Role.RAY_HEAD:
        argv += ["--distributed-executor-backend", "ray"]
    if c.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", _num(c.gpu_memory_utilization)]
    if c.kv_cache_memory_bytes is not None:
        argv += ["--kv-cache-memory-bytes", str(c.kv_cache_memory_bytes)]
    for flag, value in (
        ("--max-num-seqs", c.max_num_seqs),
        ("--max-model-len", c.max_model_len),
        ("--max-num-batched-tokens", c.max_num_batched_tokens),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for flag, text in (
        ("--dtype", c.dtype),
        ("--quantization", c.quantization),
        ("--kv-cache-dtype", c.kv_cache_dtype),
    ):
        if text is not None:
            argv += [flag, text]
    if c.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if c.enable_prefix_caching else "--no-enable-prefix-caching")
    if c.enforce_eager or c.device is Device.CPU:
        argv.append("--enforce-eager")
    if c.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += list(c.extra_args)
    return tuple(argv)


def _num(value: float) -> str:
    return repr(float(value))
