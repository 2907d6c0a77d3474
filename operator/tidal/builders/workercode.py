"""The worker's code as a ConfigMap, so worker pods run on the stock ``vllm/vllm-openai`` image.

Why (docs/adr/0002-worker-code-on-stock-images.md): the pods' container is the upstream vLLM image users
already trust, with no Tidal image of its own. The ``tidal_worker`` package (pure Python, about 75 KB,
importing only what vLLM's image ships) travels in one ConfigMap per namespace and code version,
``tidal-worker-code-<hash>``, shared by every ``LLMDeployment`` of the namespace. The pod mounts it read-only
at :data:`CODE_MOUNT_PATH`, puts that directory first on ``PYTHONPATH`` and runs ``python3 -m tidal_worker``
(the unchanged worker contract). The ConfigMap's content hash is in its name and an annotation of the pod
template, so it is part of the spec hash: a new operator version (new worker code) rolls the pods onto a new
ConfigMap while the old pods keep theirs.

Why shared, not one per deployment: a thousand deployments made a thousand copies of the same 75 KB, each
written to etcd and sent to the operator's watch (measured: the 1,000-deployment benchmark's p99 went from
1.6 s to 8.3 s and its peak memory from 2.0x to 3.0x the no-op). Why without owner references: every owner
added would rewrite the whole object (and send it to every watcher) once per deployment, growing with each;
the operator deletes a namespace's ConfigMap itself when the namespace's last deployment goes
(:mod:`tidal.plan.workercode`, ``tidal.shell.handlers.on_delete``).

ConfigMap keys cannot contain ``/``: a file ``tidal_worker/a/b.py`` is the key ``tidal_worker.a.b.py`` and
the volume's ``items`` map each key back to its path. The package files are read once by the shell
(:mod:`tidal.shell.workercode` reads the installed package data) and handed in as a :class:`WorkerCode`; this
module only checks them and builds objects (pure).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from tidal.builders.names import COMPONENT_LABEL, shared_labels

WORKER_PACKAGE: Final = "tidal_worker"
CODE_VOLUME: Final = "tidal-worker-code"
CODE_MOUNT_PATH: Final = "/opt/tidal-worker"
"""Where the package directory ``tidal_worker/`` appears in the worker container (first on PYTHONPATH)."""
CODE_HASH_ANNOTATION: Final = "tidal.dev/worker-code-hash"
CODE_COMPONENT: Final = "worker-code"
MAX_CONFIGMAP_BYTES: Final = 1024 * 1024
"""The API server's limit on a ConfigMap's data (1 MiB)."""
CODE_BUDGET_BYTES: Final = MAX_CONFIGMAP_BYTES // 2
"""What the worker's files may take: half the limit, leaving room for keys, metadata and growth."""
REQUIRED_FILES: Final = (f"{WORKER_PACKAGE}/__init__.py", f"{WORKER_PACKAGE}/__main__.py")
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_MAX_NAME = 253


class WorkerCodeError(ValueError):
    """The worker's files cannot be shipped as a ConfigMap (missing, oddly named, too large)."""


def config_map_key(path: str) -> str:
    """The ConfigMap key of a package file: its relative path with ``/`` replaced by ``.``."""
    return path.replace("/", ".")


@dataclass(frozen=True)
class WorkerCode:
    """The worker package's files: relative POSIX path (``tidal_worker/__main__.py``) -> UTF-8 text."""

    files: tuple[tuple[str, str], ...]
    """(path, text) pairs, sorted by path."""

    @classmethod
    def from_files(cls, files: Mapping[str, str]) -> WorkerCode:
        """Check ``files`` (paths inside the package, keys valid and distinct, the entry points present, the
        total within :data:`CODE_BUDGET_BYTES`); raise :class:`WorkerCodeError` saying what is wrong."""
        problems: list[str] = []
        keys: dict[str, str] = {}
        for path in sorted(files):
            parts = path.split("/")
            if parts[0] != WORKER_PACKAGE or len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
                problems.append(f"{path!r} is not a relative path inside {WORKER_PACKAGE}/")
                continue
            key = config_map_key(path)
            if not _KEY.match(key) or len(key) > _MAX_NAME:
                problems.append(f"{path!r} gives the ConfigMap key {key!r} (allowed: [-._a-zA-Z0-9], <= 253)")
            elif key in keys:
                problems.append(f"{path!r} and {keys[key]!r} give the same ConfigMap key {key!r}")
            keys[key] = path
        problems.extend(f"{p} is missing" for p in REQUIRED_FILES if p not in files)
        code = cls(tuple(sorted(files.items())))
        if code.size_bytes > CODE_BUDGET_BYTES:
            problems.append(
                f"the worker's files take {code.size_bytes} bytes, more than the {CODE_BUDGET_BYTES} allowed "
                f"(a ConfigMap holds at most {MAX_CONFIGMAP_BYTES})"
            )
        if problems:
            raise WorkerCodeError("worker code cannot ship as a ConfigMap: " + "; ".join(problems))
        return code

    @cached_property
    def size_bytes(self) -> int:
        """Bytes of keys and values, as the API server counts a ConfigMap's data."""
        return sum(len(config_map_key(p).encode()) + len(t.encode()) for p, t in self.files)

    @cached_property
    def hash(self) -> str:
        """Content hash (paths and texts): changes exactly when the shipped code does."""
        digest = hashlib.sha256()
        for path, text in self.files:
            digest.update(path.encode() + b"\0" + text.encode() + b"\0")
        return digest.hexdigest()[:16]

    @property
    def data(self) -> dict[str, str]:
        """The ConfigMap's ``data``."""
        return {config_map_key(p): t for p, t in self.files}


SHARED_PREFIX: Final = "tidal-worker-code-"


def config_map_name(code_hash: str) -> str:
    """``tidal-worker-code-<hash>``: the namespace's ConfigMap of one version of the worker's code."""
    return SHARED_PREFIX + code_hash


def build_worker_code_config_map(namespace: str, code: WorkerCode) -> dict[str, Any]:
    """The namespace's ConfigMap of ``code``: the worker's labels without a deployment (it serves them all),
    no owner (see the module docstring)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(code.hash),
            "namespace": namespace,
            "labels": {**shared_labels(), COMPONENT_LABEL: CODE_COMPONENT},
            "annotations": {CODE_HASH_ANNOTATION: code.hash},
        },
        "data": code.data,
    }


@dataclass(frozen=True)
class CodeMount:
    """What a worker pod adds to run the shipped code."""

    volume: dict[str, Any]
    mount: dict[str, Any]
    annotations: dict[str, str]

    def env(self, user_pythonpath: str | None) -> dict[str, str]:
        """``PYTHONPATH``: the code first, then a path the user set in ``spec.engine.env``."""
        tail = f":{user_pythonpath}" if user_pythonpath else ""
        return {"name": "PYTHONPATH", "value": CODE_MOUNT_PATH + tail}


def code_mount(code: WorkerCode) -> CodeMount:
    """The read-only volume (``items`` map keys back to paths), its mount and the hash annotation."""
    return CodeMount(
        volume={
            "name": CODE_VOLUME,
            "configMap": {
                "name": config_map_name(code.hash),
                "items": [{"key": config_map_key(p), "path": p} for p, _ in code.files],
                "defaultMode": 0o444,
            },
        },
        mount={"name": CODE_VOLUME, "mountPath": CODE_MOUNT_PATH, "readOnly": True},
        annotations={CODE_HASH_ANNOTATION: code.hash},
    )
