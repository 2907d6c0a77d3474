"""Entrypoint of every GPU pod: ``python -m tidal_worker`` (console script ``tidal-worker``).

Reads the pod contract from the environment (tidal_worker.contract) and runs the role:

- single / ray-head: resolve the model (sources.py), preflight it (preflight.py), bootstrap Ray for the head
  (ray_bootstrap.py), launch vLLM on the public port with Tidal's ASGI middleware (engine_args.py,
  middleware.py) and supervise it until SIGTERM, then drain it (server.py).
- ray-worker: join the head and stay until SIGTERM.

``--print-argv`` does everything up to the launch (for ray-head: after the group joined), prints the vLLM argv
as one JSON line on stdout and exits 0 instead of starting vLLM. Exit statuses: 0 stopped cleanly, 2 contract
error, 3 preflight failure, 4 model source error, 5 engine failed, 6 Ray group/head timeout, 7 engine startup
timeout; vLLM's own non-zero status is passed through when it dies by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from .contract import REMOVED_ENV_VARS, ContractError, Device, Role, WorkerContract
from .engine_args import build_vllm_argv
from .preflight import PreflightError, run_preflight
from .process import ChildProcess
from .ray_bootstrap import (
    EXIT_RAY_JOIN_TIMEOUT,
    RayJoinTimeoutError,
    ray_address,
    ray_start_argv,
    wait_for_group,
    wait_for_port,
)
from .server import ServeConfig, serve
from .sources import ModelSourceError, resolve_model

log = logging.getLogger("tidal_worker")

EXIT_CONTRACT = 2
EXIT_PREFLIGHT = 3
EXIT_MODEL_SOURCE = 4


def engine_env(contract: WorkerContract, base: Mapping[str, str]) -> dict[str, str]:
    """Environment of the vLLM child: the pod's, plus what the role needs."""
    env = dict(base)
    if contract.role is Role.RAY_HEAD:
        env["RAY_ADDRESS"] = ray_address(contract)
    if contract.device is Device.CPU:
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    if contract.hf_token:
        env["HF_TOKEN"] = contract.hf_token
    return env


def _ray_bin() -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), "ray")
    return candidate if os.path.exists(candidate) else "ray"


async def _prepare_argv(contract: WorkerContract, ray_head: ChildProcess | None) -> tuple[str, ...]:
    model_dir = await asyncio.to_thread(resolve_model, contract)
    run_preflight(contract, model_dir)
    log.info("preflight ok: model %s, TP=%d PP=%d", model_dir, contract.tensor_parallel_size,
             contract.pipeline_parallel_size)  # fmt: skip
    if ray_head is not None:
        await ray_head.start()
        log.info("waiting up to %.0f s for the Ray group", contract.ray_join_timeout_seconds)
        log.info("%s", await wait_for_group(contract))
    return build_vllm_argv(contract, str(model_dir), python=sys.executable)


async def _run_server(contract: WorkerContract, print_argv: bool) -> int:
    ray_head = (
        ChildProcess("ray head", ray_start_argv(contract, ray=_ray_bin())) if contract.uses_ray else None
    )

    if print_argv:
        try:
            argv = await _prepare_argv(contract, ray_head)
            print(json.dumps(list(argv)), flush=True)
            return 0
        finally:
            if ray_head is not None:
                await ray_head.stop(contract.engine_stop_timeout_seconds)

    async def prepare() -> ChildProcess:
        argv = await _prepare_argv(contract, ray_head)
        engine = ChildProcess("vllm", argv, engine_env(contract, os.environ))
        await engine.start()
        return engine

    async def on_stop() -> None:
        if ray_head is not None:
            await ray_head.stop(contract.engine_stop_timeout_seconds)

    cfg = ServeConfig(
        port=contract.port,
        model_name=contract.model_name,
        drain_grace_seconds=contract.drain_grace_seconds,
        engine_stop_timeout_seconds=contract.engine_stop_timeout_seconds,
        startup_timeout_seconds=contract.startup_timeout_seconds,
    )
    try:
        return await serve(cfg, prepare, on_stop=on_stop)
    finally:
        await on_stop()


async def _run_ray_worker(contract: WorkerContract) -> int:
    await wait_for_port(contract.ray_head_address, contract.ray_port, contract.ray_join_timeout_seconds)
    child = ChildProcess("ray worker", ray_start_argv(contract, ray=_ray_bin()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await child.start()
    exit_task = asyncio.ensure_future(child.wait())
    stop_task = asyncio.ensure_future(stop.wait())
    await asyncio.wait({exit_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if exit_task.done() and not stop_task.done():
        rc = exit_task.result()
        log.error("ray worker exited with status %d", rc)
        return rc or 1
    stop_task.cancel()
    log.info("SIGTERM: leaving the Ray group")
    await child.stop(contract.engine_stop_timeout_seconds)
    return 0


def _asyncio_run(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop when installed (vLLM's images ship it), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))


def run(contract: WorkerContract, *, print_argv: bool = False) -> int:
    """Run the role of `contract`; return the process exit status."""
    try:
        if contract.role is Role.RAY_WORKER:
            return _asyncio_run(_run_ray_worker(contract))
        return _asyncio_run(_run_server(contract, print_argv))
    except ModelSourceError as exc:
        log.error("model source failed: %s", exc)
        return EXIT_MODEL_SOURCE
    except PreflightError as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT
    except RayJoinTimeoutError as exc:
        log.error("ray bootstrap failed: %s", exc)
        return EXIT_RAY_JOIN_TIMEOUT


def main(argv: Sequence[str] | None = None) -> int:
    """Console entrypoint."""
    parser = argparse.ArgumentParser(
        prog="tidal-worker", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument(
        "--print-argv", action="store_true", help="print the vLLM argv as JSON and exit instead of launching"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s tidal-worker %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        contract = WorkerContract.from_env(os.environ)
    except ContractError as exc:
        log.error("%s", exc)
        return EXIT_CONTRACT
    for name, why in REMOVED_ENV_VARS.items():
        if os.environ.get(name):
            log.warning("%s is set but no longer used: %s", name, why)
    log.info("role %s, model %r served as %r (tidal_worker from %s)", contract.role.value, contract.model_uri,
             contract.model_name, os.path.dirname(__file__))  # fmt: skip
    code = run(contract, print_argv=args.print_argv)
    log.info("worker exits with status %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
