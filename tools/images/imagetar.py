"""Write a container image as a docker-archive tar (what ``docker save`` writes, ``ctr images import`` reads)
from a root filesystem directory, without Docker or a registry.

Why: the real kubelet node of the test stack (issue 18) runs images that nothing publishes and no registry
serves, so ``scripts/build-images.sh`` builds them here from directories (a Debian rootfs from mmdebstrap, a
static busybox) and containerd imports the tar (``ctr -n k8s.io images import FILE``).

The archive holds one uncompressed layer tar of the whole directory, the image config (entrypoint, command,
environment, user, working directory, ``rootfs.diff_ids``) and ``manifest.json`` with the image's tags::

    <diff-id hex>/layer.tar
    <config sha256 hex>.json
    manifest.json

Deterministic: entries sorted by path, every mtime set to ``--mtime`` (default ``SOURCE_DATE_EPOCH`` or 0),
owners numeric only (no user or group names), hard links kept as links, so equal inputs give equal bytes.

Written with the standard library's ``tarfile`` rather than an image library (umoci, skopeo, a Python OCI
package) because none is installed on these machines and the format needs only three members; the one
non-trivial part is streaming a multi-GB layer while hashing it: the layer's outer header is written with a
placeholder, the layer streamed through a hashing writer, and the header rewritten in place once the size
and digest are known (the layer is read once and never staged on disk).

Usage::

    python3 tools/images/imagetar.py --rootfs DIR --tag tidal.local/pause:3.10 --out FILE.tar \\
        --entrypoint '["/bin/sh", "-c", "..."]' --env PATH=/bin --user 65535:65535 --workdir /
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BLOCK = tarfile.BLOCKSIZE
EXCLUDED_TOP = ("proc", "sys", "dev")
"""Mount points whose contents never belong in a layer (the runtime mounts them); kept as empty dirs."""


@dataclass(frozen=True)
class ImageConfig:
    """What the runtime reads from the image config (``config`` of the OCI/Docker image JSON)."""

    tags: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()


class _HashingWriter(io.RawIOBase):
    """A write-only stream that forwards to ``out`` and keeps the sha256 and byte count of what passed."""

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__()
        self._out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._out.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def _walk(root: Path) -> Iterator[Path]:
    """Every path under ``root`` (not ``root`` itself), sorted by its relative path, without following
    symlinks; the contents of ``/proc``, ``/sys`` and ``/dev`` are skipped."""
    stack: list[Path] = [root]
    out: list[tuple[str, Path]] = []
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                p = Path(e.path)
                rel = p.relative_to(root).as_posix()
                out.append((rel, p))
                if e.is_dir(follow_symlinks=False) and rel not in EXCLUDED_TOP:
                    stack.append(p)
    out.sort(key=lambda t: t[0])
    for _, p in out:
        yield p


def write_layer(root: Path, out: IO[bytes], mtime: int) -> None:
    """Write ``root``'s tree to ``out`` as a deterministic PAX tar (the image's single layer)."""
    seen: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(root):
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            info.mtime = mtime
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in seen:
                info.type = tarfile.LNKTYPE
                info.linkname = seen[(st.st_dev, st.st_ino)]
                tar.addfile(info)
                continue
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    seen[(st.st_dev, st.st_ino)] = rel
                info.type = tarfile.REGTYPE
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            else:
                raise ValueError(f"{path}: sockets and other special files cannot go into an image layer")


def _member(name: str, data: bytes, mtime: int) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, mtime
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def config_json(cfg: ImageConfig, diff_id: str, mtime: int) -> bytes:
    """The image config (Docker image JSON v1.2 / OCI image config), canonical JSON."""
    created = _rfc3339(mtime)
    runtime: dict[str, Any] = {"Env": list(cfg.env)}
    if cfg.entrypoint:
        runtime["Entrypoint"] = list(cfg.entrypoint)
    if cfg.cmd:
        runtime["Cmd"] = list(cfg.cmd)
    if cfg.user:
        runtime["User"] = cfg.user
    if cfg.workdir:
        runtime["WorkingDir"] = cfg.workdir
    if cfg.labels:
        runtime["Labels"] = dict(sorted(cfg.labels.items()))
    if cfg.exposed_ports:
        runtime["ExposedPorts"] = {p: {} for p in sorted(cfg.exposed_ports)}
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "tools/images/imagetar.py"}],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _rfc3339(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_archive(root: Path, cfg: ImageConfig, out_path: Path, mtime: int = 0) -> str:
    """Write the docker-archive of ``root`` with ``cfg`` to ``out_path``; return the layer's diff id."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    with out_path.open("w+b") as out:
        # The layer first: a placeholder header, the layer streamed (hashed, counted), then the header again.
        header_at = out.tell()
        out.write(b"\0" * BLOCK)
        hw = _HashingWriter(out)
        with io.BufferedWriter(hw, buffer_size=1 << 20) as buffered:
            write_layer(root, buffered, mtime)
            buffered.flush()
        size, digest = hw.size, hw.sha.hexdigest()
        pad = (-size) % BLOCK
        out.write(b"\0" * pad)
        end = out.tell()
        layer_name = f"{digest}/layer.tar"
        info = tarfile.TarInfo(layer_name)
        info.size, info.mode, info.mtime = size, 0o644, mtime
        info.uname = info.gname = ""
        header = info.tobuf(format=tarfile.GNU_FORMAT)  # base-256 sizes past 8 GiB; one block: short name
        if len(header) != BLOCK:
            raise AssertionError("layer header must be one block")
        out.seek(header_at)
        out.write(header)
        out.seek(end)
        diff_id = f"sha256:{digest}"
        config = config_json(cfg, diff_id, mtime)
        config_name = f"{hashlib.sha256(config).hexdigest()}.json"
        manifest = json.dumps(
            [{"Config": config_name, "RepoTags": list(cfg.tags), "Layers": [layer_name]}],
            separators=(",", ":"),
        ).encode()
        # The rest through tarfile in append mode at the current offset (it also writes the end blocks).
        with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in ((config_name, config), ("manifest.json", manifest)):
                tar.addfile(*_member(name, data, mtime))
    return diff_id


def _json_list(text: str) -> tuple[str, ...]:
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings, got {text!r}")
    return tuple(value)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rootfs", type=Path, required=True, help="directory that becomes the image's filesystem")
    p.add_argument("--out", type=Path, required=True, help="the docker-archive tar to write")
    p.add_argument("--tag", action="append", required=True, help="image reference (repeatable)")
    p.add_argument("--entrypoint", type=_json_list, default=(), help="JSON list")
    p.add_argument("--cmd", type=_json_list, default=(), help="JSON list")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE (repeatable)")
    p.add_argument("--user", default="", help="uid[:gid]")
    p.add_argument("--workdir", default="")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--expose", action="append", default=[], help="PORT/tcp (repeatable)")
    p.add_argument("--mtime", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    a = p.parse_args(argv)
    labels = dict(kv.split("=", 1) for kv in a.label)
    cfg = ImageConfig(
        tags=tuple(a.tag),
        entrypoint=a.entrypoint,
        cmd=a.cmd,
        env=tuple(a.env),
        user=a.user,
        workdir=a.workdir,
        labels=labels,
        exposed_ports=tuple(a.expose),
    )
    diff_id = write_archive(a.rootfs, cfg, a.out, a.mtime)
    print(f"imagetar: {a.out}: {', '.join(cfg.tags)} layer {diff_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
