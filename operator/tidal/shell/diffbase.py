"""kopf's diff-base storage, switched off: Tidal detects spec changes from ``metadata.generation``.

kopf's change handlers (``on.create``/``on.update``/``on.resume``) need a "diff base": on every watch event
kopf deep-copies the whole object (status, ``managedFields`` and all) to build its essence, compares it with
a copy of the spec kept in an annotation, and after each change PATCHes that annotation. For 1,000 new
deployments that was a quarter of the operator's event-loop time (cProfile of ``bench/reconcile_scale.py``)
and one extra API request per deployment, and it put a copy of every spec into the object's annotations.

Tidal's reconcile is level-based and needs no diff: ``on.event`` triggers it, forced when
``metadata.generation`` (or the labels) changed since the last one, which the API server bumps on every spec
change. Its only change handler left is ``on.delete``, which needs no diff base either. So this storage
keeps nothing: ``build`` returns an empty essence, ``fetch`` finds none, ``store`` writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """A ``kopf.DiffBaseStorage`` that builds, keeps and writes nothing (see the module docstring)."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None
