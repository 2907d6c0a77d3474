"""Ray bootstrap for multi-node replicas: the head waits for its group, workers join and stay.

- ray-head: runs ``ray start --head --block`` as a supervised child, then waits until the group is complete:
  at least TIDAL_GROUP_SIZE alive nodes whose TIDAL_RAY_RESOURCE (``GPU`` on real pods; a custom resource in
  the CPU tests) adds up to TIDAL_EXPECTED_GPUS (default TP x PP). Past TIDAL_RAY_JOIN_TIMEOUT_SECONDS it
  fails with a message naming what joined and what was expected. Only then is vLLM launched, with
  ``--distributed-executor-backend ray`` (engine_args) and RAY_ADDRESS pointing at this head.
- ray-worker: waits for the head's port to accept connections (same timeout), then runs
  ``ray start --address=<head>:<port> --block`` and stays until SIGTERM; its exit status is the pod's.

The group check runs in a short-lived helper process (``python -m tidal_worker.ray_bootstrap wait ...``) that
connects to the cluster as a Ray driver, polls ``ray.nodes()`` and exits; the worker process itself never
imports Ray (vLLM connects as its own driver later). `group_status` is the pure part, unit-tested.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .contract import ENV_EXPECTED_GPUS, ENV_GROUP_SIZE, ENV_RAY_JOIN_TIMEOUT_SECONDS, Role, WorkerContract

log = logging.getLogger("tidal_worker")

EXIT_RAY_JOIN_TIMEOUT = 6


class RayJoinTimeoutError(RuntimeError):
    """The Ray group did not assemble in time."""


def ray_start_argv(contract: WorkerContract, *, ray: str = "ray") -> tuple[str, ...]:
    """The ``ray start`` command for this pod's role (pure)."""
    common = ["--block", "--disable-usage-stats", *contract.ray_start_args]
    if contract.role is Role.RAY_HEAD:
        return (ray, "start", "--head", f"--port={contract.ray_port}", "--include-dashboard=false", *common)
    if contract.role is Role.RAY_WORKER:
        return (ray, "start", f"--address={contract.ray_head_address}:{contract.ray_port}", *common)
    raise ValueError("role single does not use Ray")


def ray_address(contract: WorkerContract) -> str:
    """GCS address of the group's head, as vLLM's Ray executor should connect to it."""
    host = contract.ray_head_address or "127.0.0.1"
    return f"{host}:{contract.ray_port}"


@dataclass(frozen=True)
class GroupStatus:
    """How complete a Ray group is."""

    nodes: int
    resource: float
    complete: bool
    reason: str


def group_status(
    nodes: Sequence[Mapping[str, Any]], *, resource: str, want_nodes: int, want_resource: int
) -> GroupStatus:
    """Summarise ``ray.nodes()`` output against what the replica needs (pure)."""
    alive = [n for n in nodes if n.get("Alive") or n.get("alive")]
    total = sum(float((n.get("Resources") or {}).get(resource, 0.0)) for n in alive)
    complete = len(alive) >= want_nodes and total >= want_resource
    reason = (
        f"{len(alive)}/{want_nodes} nodes joined ({ENV_GROUP_SIZE}), "
        f"{resource} {total:g}/{want_resource} ({ENV_EXPECTED_GPUS})"
    )
    return GroupStatus(nodes=len(alive), resource=total, complete=complete, reason=reason)


async def wait_for_group(contract: WorkerContract, *, python: str = sys.executable) -> str:
    """Run the helper that waits for the group; return its final status line or raise on timeout."""
    argv = [
        python, "-m", "tidal_worker.ray_bootstrap", "wait",
        "--address", ray_address(contract),
        "--nodes", str(contract.group_size),
        "--resource", contract.ray_resource,
        "--amount", str(contract.gpus_expected),
        "--timeout", str(contract.ray_join_timeout_seconds),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else "(no output)"
    if proc.returncode != 0:
        raise RayJoinTimeoutError(last)
    return last


async def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until `host:port` accepts TCP connections; raise RayJoinTimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
            writer.close()
            return
        except (OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise RayJoinTimeoutError(
                    f"Ray head {host}:{port} not reachable within "
                    f"{ENV_RAY_JOIN_TIMEOUT_SECONDS}={timeout:g} s ({exc})"
                ) from exc
        await asyncio.sleep(1.0)


def _wait_main(args: argparse.Namespace) -> int:
    """Helper process: connect as a driver, poll ray.nodes() until the group is complete or time runs out."""
    import ray

    deadline = time.monotonic() + args.timeout
    ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        last = ""
        while True:
            status = group_status(
                ray.nodes(),  # type: ignore[no-untyped-call]
                resource=args.resource,
                want_nodes=args.nodes,
                want_resource=args.amount,
            )
            if status.reason != last:
                print(f"ray group: {status.reason}", file=sys.stderr, flush=True)
                last = status.reason
            if status.complete:
                print(f"ray group complete: {status.reason}", flush=True)
                return 0
            if time.monotonic() > deadline:
                print(
                    f"timed out after {args.timeout:g} s ({ENV_RAY_JOIN_TIMEOUT_SECONDS}) "
                    f"waiting for the Ray group: {status.reason}",
                    flush=True,
                )
                return EXIT_RAY_JOIN_TIMEOUT
            time.sleep(0.5)
    finally:
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Helper CLI: ``python -m tidal_worker.ray_bootstrap wait --address A --nodes N --amount K ...``."""
    parser = argparse.ArgumentParser(prog="tidal_worker.ray_bootstrap")
    sub = parser.add_subparsers(dest="cmd", required=True)
    wait = sub.add_parser("wait", help="wait until the Ray group is complete")
    wait.add_argument("--address", required=True)
    wait.add_argument("--nodes", type=int, required=True)
    wait.add_argument("--resource", default="GPU")
    wait.add_argument("--amount", type=int, required=True)
    wait.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    return _wait_main(args)


if __name__ == "__main__":
    sys.exit(main())
