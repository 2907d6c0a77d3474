"""Copy installed Python distributions (a requirement closure) from a virtual environment into an image's
root filesystem, so the image holds exactly the versions the tests ran with, without a download.

Why: the stand-in for the stock vLLM image (and the operator image) needs vLLM's CPU build with torch and
~200 dependencies at the versions of ``.venv`` (``scripts/install-venv.sh``). Installing them again with pip
inside a chroot would download or rebuild gigabytes and could resolve other versions; the venv already holds
them, built for this Python (3.11) and this Debian release's glibc. This copies, for each distribution of
the closure of ``--require`` (markers evaluated, extras followed), the files its ``RECORD`` lists:

* ``site-packages/...`` into ``--site`` (Debian's ``/usr/local/lib/python3.11/dist-packages``);
* the venv's ``bin/`` scripts into ``--bin`` with the shebang pointed at ``--python`` (``/usr/bin/python3``);
* other data files under the venv prefix into ``--prefix`` (``/usr/local``).

Byte code: the copied ``.py`` files get ``__pycache__/*.cpython-311.pyc`` in *unchecked-hash* mode (PEP 552),
which the interpreter loads without comparing source mtimes: the image tar sets every mtime to one value,
which would invalidate timestamp-based ``.pyc`` files and make every container start recompile torch and
vLLM (and fail to cache them on a read-only or non-root filesystem). The venv's own ``.pyc`` files are
reused when they match their source (header rewritten, code unchanged); the others are compiled.

``--wheel FILE`` installs a wheel the same way (a wheel is a zip: extracted into ``--site``, console scripts
written from ``entry_points.txt``) and adds its runtime ``Requires-Dist`` to the roots: the operator image
gets this repository's own wheel and, from the venv, what ``pip install`` of that wheel would install.

``--forbid NAME`` fails when a top-level module ``NAME`` ends up in ``--site`` (the vLLM stand-in must hold
no Tidal code: ``tidal``, ``tidal_worker``). ``--list`` prints the closure (name, version, MB) and copies
nothing.

Run it with the venv's interpreter (it reads the distributions of the interpreter that runs it and uses
``packaging``, which that venv holds as a vLLM dependency, to evaluate requirement markers).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import os
import py_compile
import re
import shutil
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Sequence
from configparser import ConfigParser
from pathlib import Path

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import Requirement

PYC_TAG = sys.implementation.cache_tag  # cpython-311
MAGIC = importlib.util.MAGIC_NUMBER


def canonical(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, md.Distribution]:
    """The distributions of this interpreter's purelib (the venv), by canonical name."""
    site = Path(sysconfig.get_paths()["purelib"])
    out: dict[str, md.Distribution] = {}
    for d in md.distributions(path=[str(site)]):
        name = d.metadata["Name"]
        if name:
            out.setdefault(canonical(name), d)
    return out


def _wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    for extra in extras | {""}:
        try:
            if req.marker.evaluate({"extra": extra}):
                return True
        except UndefinedEnvironmentName:
            continue
    return False


def closure(
    roots: Iterable[str], dists: dict[str, md.Distribution], exclude: set[str]
) -> tuple[dict[str, md.Distribution], list[str]]:
    """Distributions reachable from ``roots`` (requirement strings); the missing ones as notes."""
    todo = [Requirement(r) for r in roots]
    extras_of: dict[str, set[str]] = {}
    found: dict[str, md.Distribution] = {}
    notes: list[str] = []
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in exclude:
            continue
        new_extras = set(req.extras) - extras_of.get(name, set())
        if name in found and not new_extras:
            continue
        dist = dists.get(name)
        if dist is None:
            notes.append(f"not installed, skipped: {req}")
            continue
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            notes.append(f"{name} {dist.version} kept (the venv's) although {req} asks otherwise")
        extras = extras_of.setdefault(name, set())
        extras |= set(req.extras)
        found[name] = dist
        for r in dist.requires or []:
            sub = Requirement(r)
            if _wanted(sub, extras):
                todo.append(sub)
    return dict(sorted(found.items())), notes


class Copier:
    """Places files into the rootfs and keeps the list of copied ``.py`` files for byte-compiling."""

    def __init__(self, dest: Path, site: str, bindir: str, prefix: str, python: str) -> None:
        self.dest = dest
        self.site = dest / site.lstrip("/")
        self.bindir = dest / bindir.lstrip("/")
        self.prefix = dest / prefix.lstrip("/")
        self.site_in_image = "/" + site.strip("/")
        self.python = python
        self.sources: list[tuple[Path, Path | None]] = []
        """(copied .py, the venv's source it came from or None)."""
        self.bytes = 0

    def _place(self, src: Path, dst: Path, script: bool) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(os.readlink(src))
            return
        if script:
            data = src.read_bytes()
            first, sep, rest = data.partition(b"\n")
            if first.startswith(b"#!") and b"python" in first:
                data = b"#!" + self.python.encode() + sep + rest
            dst.write_bytes(data)
            shutil.copymode(src, dst)
        else:
            shutil.copy2(src, dst)
        self.bytes += dst.stat().st_size

    def copy_dist(self, dist: md.Distribution, venv: Path, site: Path) -> int:
        """Copy the files of ``dist``'s RECORD; return how many were missing from the venv."""
        files = dist.files or []
        missing = 0
        venv_bin = venv / "bin"
        for f in files:
            rel = Path(os.path.normpath(site / str(f)))
            if "__pycache__" in rel.parts:
                continue
            if not rel.exists() and not rel.is_symlink():
                missing += 1
                continue
            if rel.is_dir():
                continue
            if rel.is_relative_to(site):
                dst = self.site / rel.relative_to(site)
                self._place(rel, dst, script=False)
                if dst.suffix == ".py":
                    self.sources.append((dst, rel))
            elif rel.is_relative_to(venv_bin):
                self._place(rel, self.bindir / rel.relative_to(venv_bin), script=True)
            elif rel.is_relative_to(venv):
                self._place(rel, self.prefix / rel.relative_to(venv), script=False)
            else:
                raise ValueError(f"{dist.metadata['Name']}: {f} lies outside the venv")
        return missing

    def install_wheel(self, wheel: Path) -> None:
        """Extract a pure wheel into the site directory and write its console scripts."""
        with zipfile.ZipFile(wheel) as z:
            for name in sorted(z.namelist()):
                if name.split("/", 1)[0].endswith(".data"):
                    raise ValueError(f"{wheel.name}: .data entries are not supported ({name})")
                if name.endswith("/"):
                    continue
                dst = self.site / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(z.read(name))
                dst.chmod(0o644)
                self.bytes += dst.stat().st_size
                if dst.suffix == ".py":
                    self.sources.append((dst, None))
            ep_name = next((n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
            if ep_name is None:
                return
            cp = ConfigParser()
            cp.optionxform = str  # type: ignore[assignment,method-assign]
            cp.read_string(z.read(ep_name).decode())
        if cp.has_section("console_scripts"):
            for script, target in cp.items("console_scripts"):
                module, _, attr = target.partition(":")
                path = self.bindir / script
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(
                    f"#!{self.python}\nimport sys\nfrom {module.strip()} import {attr.strip()}\n"
                    f"if __name__ == '__main__':\n    sys.exit({attr.strip()}())\n"
                )
                path.chmod(0o755)

    def compile_all(self) -> tuple[int, int]:
        """Write an unchecked-hash ``.pyc`` beside every copied ``.py``: (reused, compiled)."""
        reused = compiled = 0
        for dst, src in self.sources:
            cfile = dst.parent / "__pycache__" / f"{dst.stem}.{PYC_TAG}.pyc"
            source = dst.read_bytes()
            body = _valid_timestamp_pyc_body(src) if src is not None else None
            cfile.parent.mkdir(parents=True, exist_ok=True)
            if body is not None:
                flags = (0b01).to_bytes(4, "little")  # hash-based, check_source = 0
                cfile.write_bytes(MAGIC + flags + importlib.util.source_hash(source) + body)
                reused += 1
                continue
            dfile = self.site_in_image + "/" + dst.relative_to(self.site).as_posix()
            try:
                py_compile.compile(
                    str(dst),
                    cfile=str(cfile),
                    dfile=dfile,
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )
                compiled += 1
            except py_compile.PyCompileError:
                pass  # a template or Python-2 file shipped as .py: the venv had no .pyc either
        return reused, compiled


def _valid_timestamp_pyc_body(src: Path) -> bytes | None:
    """The code part of the venv's timestamp ``.pyc`` of ``src`` when it matches the source, else None."""
    pyc = src.parent / "__pycache__" / f"{src.stem}.{PYC_TAG}.pyc"
    try:
        data = pyc.read_bytes()
        st = src.stat()
    except OSError:
        return None
    if len(data) < 16 or data[:4] != MAGIC or int.from_bytes(data[4:8], "little") != 0:
        return None
    mtime = int.from_bytes(data[8:12], "little")
    size = int.from_bytes(data[12:16], "little")
    if mtime != (int(st.st_mtime) & 0xFFFFFFFF) or size != (st.st_size & 0xFFFFFFFF):
        return None
    return data[16:]


def wheel_requirements(wheel: Path) -> tuple[str, list[str]]:
    """A wheel's distribution name and its ``Requires-Dist`` lines that apply without extras (the runtime
    dependencies ``pip install WHEEL`` would install)."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta_name).decode()
    name = ""
    requires: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line; the long description follows
        key, _, value = line.partition(": ")
        if key == "Name":
            name = value.strip()
        elif key == "Requires-Dist" and _wanted(Requirement(value), set()):
            requires.append(value.strip())
    return name, requires


def _dist_bytes(dist: md.Distribution, site: Path) -> int:
    total = 0
    for f in dist.files or []:
        p = site / str(f)
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--dest", type=Path, help="the rootfs directory")
    p.add_argument("--require", action="append", default=[], help="a root requirement (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="a distribution never copied")
    p.add_argument("--wheel", action="append", default=[], type=Path, help="a wheel to install too")
    p.add_argument("--forbid", action="append", default=[], help="a top-level module that must be absent")
    p.add_argument("--site", default="/usr/local/lib/python3.11/dist-packages")
    p.add_argument("--bin", default="/usr/local/bin")
    p.add_argument("--prefix", default="/usr/local")
    p.add_argument("--python", default="/usr/bin/python3", help="the shebang of copied scripts")
    p.add_argument("--list", action="store_true", help="print the closure and copy nothing")
    a = p.parse_args(argv)

    venv = Path(sys.prefix)
    site = Path(sysconfig.get_paths()["purelib"])
    roots, own = list(a.require), set()
    for w in a.wheel:
        name, requires = wheel_requirements(w)
        own.add(canonical(name))
        roots.extend(requires)
    dists, notes = closure(roots, installed(), {canonical(e) for e in a.exclude} | own)
    for n in notes:
        print(f"venvcopy: {n}", file=sys.stderr)
    if a.list:
        for name, d in dists.items():
            print(f"{name} {d.version} {_dist_bytes(d, site) / 1e6:.1f}")
        return 0
    if a.dest is None:
        p.error("--dest is required unless --list")
    copier = Copier(a.dest, a.site, a.bin, a.prefix, a.python)
    missing = 0
    for d in dists.values():
        missing += copier.copy_dist(d, venv, site)
    for w in a.wheel:
        copier.install_wheel(w)
    reused, compiled = copier.compile_all()
    bad = [m for m in a.forbid if (copier.site / m).exists() or (copier.site / f"{m}.py").exists()]
    if bad:
        print(f"venvcopy: forbidden modules in the image: {', '.join(bad)}", file=sys.stderr)
        return 1
    print(
        f"venvcopy: {len(dists)} distributions, {copier.bytes / 1e9:.2f} GB, {missing} RECORD entries "
        f"missing in the venv; .pyc: {reused} reused, {compiled} compiled",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
