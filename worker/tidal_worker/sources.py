"""Model sources: turn TIDAL_MODEL_URI into a local directory vLLM can load.

Supported forms (parsed by the pure `parse_model_uri`):

- ``hf://org/name`` or ``hf://org/name@revision``: downloaded with ``huggingface_hub.snapshot_download`` into
  TIDAL_MODEL_CACHE_DIR with HF_TOKEN (a Secret); a second start on the same cache volume reuses the files.
- ``pvc://claim/sub/path``: a PersistentVolumeClaim the operator mounted at ``<TIDAL_PVC_ROOT>/<claim>``
  (default root /models), so the model is ``/models/claim/sub/path``.
- ``/absolute/path`` or ``file:///absolute/path``: a directory already in the container (tests, baked images).
- ``s3://`` is recognised and refused with a clear "not supported yet" error rather than a confusing failure.

`resolve_model` does the I/O; the downloader is injectable so the hf:// path is unit-tested without a hub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .contract import WorkerContract


class ModelSourceError(ValueError):
    """The model URI is malformed, unsupported, or does not resolve to a usable directory."""


@dataclass(frozen=True)
class HfSource:
    """A Hugging Face Hub repository, optionally pinned to a revision (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None


@dataclass(frozen=True)
class PvcSource:
    """A path inside a mounted PersistentVolumeClaim."""

    claim: str
    path: str = ""


@dataclass(frozen=True)
class LocalSource:
    """A directory already present in the container."""

    path: str


ModelSource = HfSource | PvcSource | LocalSource

Downloader = Callable[..., Any]
"""Signature of huggingface_hub.snapshot_download (repo_id=, revision=, cache_dir=, token=) -> path."""


def parse_model_uri(uri: str) -> ModelSource:
    """Parse a TIDAL_MODEL_URI (pure); raise `ModelSourceError` with the accepted forms on bad input."""
    uri = uri.strip()
    if uri.startswith("hf://"):
        rest = uri[len("hf://") :]
        repo, at, revision = rest.partition("@")
        parts = repo.strip("/").split("/")
        if len(parts) not in (1, 2) or not all(parts) or (at and not revision):
            raise ModelSourceError(f"bad hf:// URI {uri!r}: expected hf://org/name or hf://org/name@revision")
        return HfSource(repo_id="/".join(parts), revision=revision or None)
    if uri.startswith("pvc://"):
        rest = uri[len("pvc://") :].strip("/")
        claim, _, sub = rest.partition("/")
        if not claim:
            raise ModelSourceError(f"bad pvc:// URI {uri!r}: expected pvc://claim/path")
        if ".." in PurePosixPath(sub).parts:
            raise ModelSourceError(f"bad pvc:// URI {uri!r}: '..' is not allowed")
        return PvcSource(claim=claim, path=sub)
    if uri.startswith("s3://"):
        raise ModelSourceError(
            f"s3:// model URIs are not supported yet ({uri!r}); copy the model to a PVC and use pvc://claim/path"
        )
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if uri.startswith("/"):
        return LocalSource(path=uri)
    raise ModelSourceError(
        f"unsupported model URI {uri!r}: use hf://org/name[@rev], pvc://claim/path or an absolute path"
    )


def local_path_for(source: PvcSource | LocalSource, pvc_root: str) -> Path:
    """Where a pvc:// or local source lives in the container (pure)."""
    if isinstance(source, LocalSource):
        return Path(source.path)
    path = Path(pvc_root) / source.claim
    return path / source.path if source.path else path


def resolve_model(contract: WorkerContract, *, downloader: Downloader | None = None) -> Path:
    """Return the local directory of the contract's model, downloading hf:// models into the cache dir."""
    source = parse_model_uri(contract.model_uri)
    if isinstance(source, HfSource):
        if downloader is None:
            from huggingface_hub import snapshot_download

            downloader = snapshot_download
        try:
            result = downloader(
                repo_id=source.repo_id,
                revision=source.revision,
                cache_dir=contract.model_cache_dir,
                token=contract.hf_token,
            )
        except Exception as exc:  # the hub raises many types; all mean "cannot get the model"
            raise ModelSourceError(
                f"downloading hf://{source.repo_id}"
                f"{'@' + source.revision if source.revision else ''} failed: {type(exc).__name__}: {exc}"
            ) from exc
        path = Path(str(result))
    else:
        path = local_path_for(source, contract.pvc_root)
    if not path.is_dir():
        raise ModelSourceError(f"model directory {path} (from {contract.model_uri!r}) does not exist")
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model directory {path} has no config.json; is {contract.model_uri!r} a model?"
        )
    return path
