"""Hub model profiles the shell has fetched, for the planner: the bridge between I/O and the pure core.

Why it exists: the planner (:func:`tidal.builders.modelprofile.model_profile`) must size a model whose
``config.json`` lives on the Hugging Face Hub, but the pure core does no I/O. The shell
(:mod:`tidal.shell.hub`) fetches before it plans and records the outcome here with :func:`record`: a
profile, or the one-line reason there is none. The planner reads it with :func:`lookup` and turns a
failure into the ``ModelResolved=False`` condition. It is a bounded table of facts observed from outside,
like the pods the shell hands in; it holds no clients and never fetches.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from tidal.recommender.models import ModelProfile

MAX_ENTRIES = 512


@dataclass(frozen=True)
class HubLookup:
    """The outcome of fetching one repository revision's ``config.json``."""

    profile: ModelProfile | None
    error: str | None = None
    reason: str = "ModelConfigUnavailable"
    """Condition reason when there is no profile: ``ModelConfigUnavailable`` (the fetch failed) or
    ``UnsupportedArchitecture``."""


_table: OrderedDict[tuple[str, str | None], HubLookup] = OrderedDict()


def record(repo_id: str, revision: str | None, outcome: HubLookup) -> None:
    """Remember the outcome for ``repo_id@revision`` (the shell, after fetching)."""
    key = (repo_id, revision)
    _table[key] = outcome
    _table.move_to_end(key)
    while len(_table) > MAX_ENTRIES:
        _table.popitem(last=False)


def lookup(repo_id: str, revision: str | None) -> HubLookup | None:
    """The recorded outcome, or ``None`` when the shell has not fetched it (yet)."""
    return _table.get((repo_id, revision))


def forget_all() -> None:
    """Empty the table (tests)."""
    _table.clear()
