"""Hugging Face Hub model files for models outside the built-in catalogue: ``config.json`` (the
architecture the recommender sizes for) and, when the repository has one, ``model.safetensors.index.json``
(the checkpoint's byte total), fetched with ``huggingface_hub``.

Why here: the recommender is a pure core; fetching is I/O, so it lives in the shell. The CLI
(``tidal recommend --model org/name``) calls :func:`fetch_model_files` directly; the operator keeps a
:class:`HubModels` cache and hands the results to the planner (:mod:`tidal.builders.hubmodels`), so a
model whose config cannot be fetched gets a condition instead of a silent TP = PP = 1.

Settings come from the environment as ``huggingface_hub`` reads them, at call time: ``HF_ENDPOINT`` (a
mirror or a private Hub), ``HF_TOKEN`` (a token) or ``HF_TOKEN_PATH`` (a file holding one: in the chart a
Secret mounted into the operator pod, so the operator needs no read access to Secrets), ``HF_HUB_CACHE``
(the download cache; files are revalidated with a HEAD request and served from the cache when the Hub is
unreachable).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tidal.api import ModelSource
from tidal.builders import hubmodels
from tidal.builders.modelprofile import model_name_hint
from tidal.recommender.catalog import UnsupportedArchitectureError, hub_profile, hub_repo, resolve_name
from tidal.recommender.models import ModelProfile

CONFIG_FILE: Final = "config.json"
INDEX_FILE: Final = "model.safetensors.index.json"
DEFAULT_TIMEOUT_S: Final = 10.0
log = logging.getLogger(__name__)


class HubFetchError(Exception):
    """A model file could not be fetched (message: one line, no response body)."""


@dataclass(frozen=True)
class HubSettings:
    """Where and as whom to fetch."""

    endpoint: str | None = None
    token: str | None = None
    cache_dir: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HubSettings:
        """``HF_ENDPOINT``, ``HF_TOKEN`` or the file at ``HF_TOKEN_PATH``, ``HF_HUB_CACHE``."""
        e = os.environ if env is None else env
        token = e.get("HF_TOKEN") or None
        token_path = e.get("HF_TOKEN_PATH")
        if token is None and token_path:
            try:
                token = Path(token_path).read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise HubFetchError(f"HF_TOKEN_PATH {token_path}: {exc.strerror or exc}") from None
        return cls(
            endpoint=(e.get("HF_ENDPOINT") or "").rstrip("/") or None,
            token=token,
            cache_dir=e.get("HF_HUB_CACHE") or None,
        )


@dataclass(frozen=True)
class HubModelFiles:
    """What was fetched for one repository revision."""

    repo_id: str
    revision: str
    config: dict[str, Any]
    safetensors_index: dict[str, Any] | None
    """``model.safetensors.index.json`` (``None``: the repository has a single file or no index)."""

    @property
    def checkpoint_bytes(self) -> int | None:
        """The index's ``metadata.total_size`` (bytes of all tensors), if given."""
        meta = (self.safetensors_index or {}).get("metadata")
        size = meta.get("total_size") if isinstance(meta, dict) else None
        return int(size) if isinstance(size, int | float) and size > 0 else None

    def profile(self) -> ModelProfile:
        """The recommender's profile (``ValueError`` for an unsupported architecture)."""
        return hub_profile(self.repo_id, self.config)


def _describe(exc: BaseException, repo_id: str, filename: str, settings: HubSettings) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{settings.endpoint or 'https://huggingface.co'}/{repo_id}"
    auth = "with a token" if settings.token else "without a token (set HF_TOKEN or HF_TOKEN_PATH)"
    if isinstance(exc, GatedRepoError):
        return f"{where} is gated: access refused {auth}"
    if isinstance(exc, RepositoryNotFoundError):
        status = getattr(exc.response, "status_code", None)
        return f"{where}: repository not found or not accessible {auth} (HTTP {status})"
    if isinstance(exc, RevisionNotFoundError):
        return f"{where}: revision not found"
    if isinstance(exc, RemoteEntryNotFoundError):
        return f"{where}: no {filename} in the repository"
    if isinstance(exc, LocalEntryNotFoundError):
        return f"{where}: the Hub is unreachable and {filename} is not in the local cache"
    if isinstance(exc, HfHubHTTPError):
        return f"{where}/{filename}: HTTP {getattr(exc.response, 'status_code', '?')}"
    return f"{where}/{filename}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _download_json(repo_id: str, filename: str, revision: str, settings: HubSettings) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            endpoint=settings.endpoint,
            token=settings.token or False,
            cache_dir=settings.cache_dir,
            etag_timeout=settings.timeout_s,
        )
    except Exception as exc:  # every failure becomes one line for the user or a condition
        raise HubFetchError(_describe(exc, repo_id, filename, settings)) from exc
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HubFetchError(f"{repo_id}/{filename}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HubFetchError(f"{repo_id}/{filename}: not a JSON object")
    return data


def fetch_model_files(
    repo_id: str, revision: str | None = None, settings: HubSettings | None = None
) -> HubModelFiles:
    """``config.json`` and, when present, ``model.safetensors.index.json`` of ``repo_id`` at ``revision``
    (default ``main``); :class:`HubFetchError` with a one-line reason otherwise."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    s = HubSettings.from_env() if settings is None else settings
    rev = revision or "main"
    config = _download_json(repo_id, CONFIG_FILE, rev, s)
    try:
        index: dict[str, Any] | None = _download_json(repo_id, INDEX_FILE, rev, s)
    except HubFetchError as exc:
        if not isinstance(exc.__cause__, RemoteEntryNotFoundError):
            raise
        index = None
    return HubModelFiles(repo_id, rev, config, index)


@dataclass(frozen=True)
class HubResult:
    """One cached outcome: the profile, or why there is none."""

    profile: ModelProfile | None
    error: str | None
    at: float
    files: HubModelFiles | None = None
    reason: str = "ModelConfigUnavailable"


class HubModels:
    """The operator's cache of Hub model profiles by ``(repo, revision)``: a success is kept (a revision's
    config does not change under the operator in practice; a restart refetches), a failure is retried
    after ``retry_after_s``. Bounded to ``max_entries`` (least recently used go first)."""

    def __init__(
        self, settings: HubSettings | None = None, retry_after_s: float = 60.0, max_entries: int = 256
    ) -> None:
        self._settings = settings
        self._retry_after_s = retry_after_s
        self._max = max_entries
        self._cache: OrderedDict[tuple[str, str | None], HubResult] = OrderedDict()

    def cached(self, repo_id: str, revision: str | None, now: float | None = None) -> HubResult | None:
        """The cached outcome, or ``None`` when there is none or a failure is due for a retry."""
        key = (repo_id, revision)
        hit = self._cache.get(key)
        if hit is None:
            return None
        t = time.monotonic() if now is None else now
        if hit.error is not None and t - hit.at >= self._retry_after_s:
            return None
        self._cache.move_to_end(key)
        return hit

    def fetch(self, repo_id: str, revision: str | None, now: float | None = None) -> HubResult:
        """Fetch (blocking: run it in a thread from async code), cache and return the outcome."""
        t = time.monotonic() if now is None else now
        try:
            files = fetch_model_files(repo_id, revision, self._settings)
            result = HubResult(files.profile(), None, t, files)
        except UnsupportedArchitectureError as exc:
            result = HubResult(None, str(exc), t, reason="UnsupportedArchitecture")
        except (HubFetchError, ValueError) as exc:
            result = HubResult(None, str(exc), t)
        self._cache[(repo_id, revision)] = result
        self._cache.move_to_end((repo_id, revision))
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        hubmodels.record(repo_id, revision, hubmodels.HubLookup(result.profile, result.error, result.reason))
        return result

    def ensure(self, uri: str, now: float | None = None) -> HubResult | None:
        """For an ``hf://`` URI outside the catalogue: the cached outcome (recorded for the planner again),
        or a fresh fetch when there is none or a failure is due for a retry; ``None`` for other URIs.
        Blocking when it fetches: see :func:`fetch_hub_model` for async code."""
        repo = hub_target(uri)
        if repo is None:
            return None
        return self.recall(*repo, now=now) or self.fetch(*repo, now=now)

    def recall(self, repo_id: str, revision: str | None, now: float | None = None) -> HubResult | None:
        """:meth:`cached`, recorded for the planner again (its table may have dropped it)."""
        hit = self.cached(repo_id, revision, now=now)
        if hit is not None:
            hubmodels.record(repo_id, revision, hubmodels.HubLookup(hit.profile, hit.error, hit.reason))
        return hit


def hub_target(uri: str) -> tuple[str, str | None] | None:
    """``(repo, revision)`` of an ``hf://`` URI whose model is not in the catalogue, else ``None``."""
    if not uri.startswith("hf://") or resolve_name(model_name_hint(uri)) is not None:
        return None
    return hub_repo(uri)


HUB_WAIT_S: Final = 40.0
"""How long a reconcile waits for a fetch (``huggingface_hub`` retries an unreachable Hub for ~25 s); a
slower fetch finishes in its thread and the next reconcile finds it."""


OPERATOR_HUB = HubModels()
"""The operator process's cache (settings from its environment at each fetch)."""


async def fetch_hub_model(model: ModelSource, hub: HubModels = OPERATOR_HUB) -> None:
    """Before planning: make sure the planner's table has an outcome for the model (no-op when
    ``spec.model.architecture`` describes it or the URI is not an hf:// model outside the catalogue),
    without blocking the event loop."""
    repo = hub_target(model.uri) if model.architecture is None else None
    if repo is None or hub.recall(*repo) is not None:
        return  # nothing to fetch, or answered from the cache without a thread
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.to_thread(hub.ensure, model.uri)), HUB_WAIT_S)
    except TimeoutError:
        log.warning("Hub config.json of %s: still fetching after %.0f s", model.uri, HUB_WAIT_S)
