"""The image-store seed cache of real nodes: a kept containerd store per image set, cloned by hard links.

Why this exists: importing the 7 GB vLLM image into a fresh containerd store takes minutes (content plus
unpacked snapshot); a hard-linked clone of a store kept from an earlier node takes seconds. A seed is kept
per image set under `$TIDAL_CACHE/node/stores/<key>/root` (the key hashes the image tars, the sandbox
image, containerd's version and :func:`~tidal.devcluster.realnode.config.containerd_config_version`). Only
content blobs and committed snapshots are linked (containerd never writes them in place); bolt databases and
everything else are copied.

A seed is about 14 GB and the disk is limited, so saving a new key deletes the other seeds of the same
*family* (the image names without their content keys, e.g. `pause+vllm`): only the newest of each family is
kept, so `make cluster-up` (pause alone) and the node tier (pause and vLLM) do not delete each other's. Each
seed has a lock file `.<key>.lock` beside it. Cloning holds it shared, saving holds it exclusive, and
deleting takes it exclusive without waiting: a seed some node is cloning from (or saving) is skipped and
goes at the next save. A deleted seed is first renamed away, so a node that waited on its lock finds no
`.complete` and imports instead. Running nodes cloned from a deleted seed keep their hard links (the space
comes back when those nodes are cleaned up). Leftovers of a killed save or delete (`.tmp-*`, `.del-*`) are
removed the same way."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from tidal.devcluster.binaries import cache_dir
from tidal.devcluster.realnode.config import containerd_config_version
from tidal.devcluster.realnode.prereqs import run

_LINKED_STORE_PARTS = (
    "io.containerd.content.v1.content/blobs",
    "io.containerd.snapshotter.v1.overlayfs/snapshots",
)
_COMPLETE = ".complete"


def default_store_cache() -> Path:
    """`$TIDAL_CACHE/node/stores`: where seeds are kept unless a node is given another directory."""
    return cache_dir() / "node" / "stores"


def seed_dir(cache: Path, images: Sequence[Path], sandbox_image: str) -> Path | None:
    """The seed directory of this image set (None without images: nothing worth keeping)."""
    if not images:
        return None
    version = run(["containerd", "--version"], check=False).stdout.strip()
    ident = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(set(images))]
    blob = json.dumps([ident, sandbox_image, version, containerd_config_version()])
    return cache / hashlib.sha256(blob.encode()).hexdigest()[:16]


_FAMILY = "family"


def image_family(images: Sequence[Path]) -> str:
    """The image set's names without content keys: `pause-07cd....tar` and `vllm-0c55....tar` give
    `pause+vllm`."""
    return "+".join(sorted({p.name.removesuffix(".tar").rsplit("-", 1)[0] for p in images}))


def _lock_file(seed: Path) -> Path:
    return seed.parent / f".{seed.name}.lock"


@contextlib.contextmanager
def _locked(seed: Path, mode: int) -> Iterator[IO[str]]:
    seed.parent.mkdir(parents=True, exist_ok=True)
    with _lock_file(seed).open("a") as lock:
        fcntl.flock(lock, mode)
        yield lock


def clone_seed(seed: Path, root: Path) -> bool:
    """Fill the empty containerd root `root` from `seed`; False (import instead) if there is no complete
    seed, `root` is not empty or linking fails. Holds the seed's lock shared: no save deletes it meanwhile."""
    if not (seed / _COMPLETE).exists() or any(root.iterdir()):
        return False
    with _locked(seed, fcntl.LOCK_SH):
        if not (seed / _COMPLETE).exists():  # deleted while this node waited for the lock
            return False
        try:
            _clone_store(seed / "root", root)
        except (OSError, subprocess.CalledProcessError):
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            return False
        os.utime(seed)
    return True


def save_seed(
    seed: Path, root: Path, stop: Callable[[], None], restart: Callable[[], None], family: str = ""
) -> None:
    """Keep the freshly imported containerd root `root` as `seed`, then delete the other seeds of `family`.

    `stop` and `restart` stop containerd before the copy (bolt databases are copied at rest) and start it
    again after. Nothing happens if another node is saving the same seed or it is there already.
    """
    seed.parent.mkdir(parents=True, exist_ok=True)
    with _lock_file(seed).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another node is saving the same seed
        if (seed / _COMPLETE).exists():
            return
        stop()
        tmp = seed.parent / f".tmp-{seed.name}-{uuid.uuid4().hex[:6]}"
        try:
            _clone_store(root, tmp / "root")
            (tmp / _FAMILY).write_text(family)
            (tmp / _COMPLETE).touch()
            tmp.rename(seed)
        except (OSError, subprocess.CalledProcessError):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        finally:
            restart()
    prune_seeds(seed.parent, keep=seed.name, family=family)


def _family_of(seed: Path) -> str | None:
    try:
        return (seed / _FAMILY).read_text()
    except OSError:
        return None  # a seed from before families: any family's save replaces it


def prune_seeds(cache: Path, keep: str, family: str = "") -> None:
    """Delete every seed of `family` in `cache` but the one named `keep` (and seeds without a family), and
    leftovers of killed saves and deletes; a seed (or a save's temporary copy) whose lock another node holds
    stays."""
    try:
        entries = sorted(cache.iterdir())
    except OSError:
        return
    for path in entries:
        if not path.is_dir():
            continue
        if path.name.startswith(".del-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".tmp-"):
            key = path.name[len(".tmp-") : -len("-123456")]
            _delete_unlocked(cache / key, path)
        elif path.name != keep and not path.name.startswith(".") and _family_of(path) in (None, family):
            _delete_unlocked(path, path)


def _delete_unlocked(seed: Path, victim: Path) -> None:
    """Delete `victim` (the seed itself, or a temporary copy of it) unless the seed's lock is held."""
    with _lock_file(seed).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a node is cloning from it or saving it
        doomed = victim.parent / f".del-{victim.name.lstrip('.')}-{uuid.uuid4().hex[:6]}"
        try:
            victim.rename(doomed)
        except OSError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
        if not seed.exists():  # the seed is gone: so is the use of its lock
            _lock_file(seed).unlink(missing_ok=True)


def _clone_store(src: Path, dst: Path) -> None:
    """Copy a stopped containerd root: content blobs and snapshots as hard links, the rest as copies."""
    dst.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if str(rel) in _LINKED_STORE_PARTS:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            run(["cp", "-al", str(Path(dirpath)), str(dst / rel)], timeout=600)
            dirnames[:] = []
            continue
        (dst / rel).mkdir(parents=True, exist_ok=True)
        shutil.copystat(dirpath, dst / rel)
        for name in filenames:
            source = Path(dirpath) / name
            if source.is_file() and not source.is_symlink():
                shutil.copy2(source, dst / rel / name)
