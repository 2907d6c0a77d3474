"""The checkpoint's own description of its weights: ``model.safetensors.index.json`` and tensor headers.

A ``config.json`` says what the architecture *should* hold; the safetensors index says what the checkpoint
*does* hold (``metadata.total_size`` in bytes), and tensor headers (name -> dtype and shape) say where:
whether there is a separate ``lm_head`` (tied embeddings otherwise), whether shared experts exist, extra
towers (vision encoders) the config arithmetic does not count. :func:`with_checkpoint` folds those facts
into a :class:`~tidal.recommender.models.ModelProfile`; the memory model then scales its per-GPU weights to
the checkpoint's size (``memory.checkpoint_scale``). Pure: the caller (the Hugging Face fetch, a test)
reads the files; this module only interprets the parsed JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tidal.recommender.models import ModelProfile

SAFETENSORS_DTYPE_BYTES: dict[str, float] = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1, "F4": 0.5,
}  # fmt: skip
"""Bytes per element of the safetensors dtype names."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> float:
        """Bytes the tensor takes in the checkpoint."""
        if self.dtype not in SAFETENSORS_DTYPE_BYTES:
            raise ValueError(f"unknown safetensors dtype {self.dtype!r}")
        return math.prod(self.shape) * SAFETENSORS_DTYPE_BYTES[self.dtype]


def total_size_from_index(index: Mapping[str, Any]) -> int:
    """``metadata.total_size`` of a ``model.safetensors.index.json`` (``ValueError`` when missing/bad)."""
    meta = index.get("metadata")
    size = meta.get("total_size") if isinstance(meta, Mapping) else None
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError("safetensors index lacks a positive metadata.total_size")
    return size


def parse_tensors(header: Mapping[str, Any]) -> dict[str, TensorInfo]:
    """Tensors of a safetensors header (``{name: {"dtype", "shape"}}``; ``__metadata__`` skipped)."""
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, Mapping) or "dtype" not in entry or "shape" not in entry:
            raise ValueError(f"tensor {name!r}: expected dtype and shape")
        shape: Sequence[Any] = entry["shape"]
        out[name] = TensorInfo(str(entry["dtype"]), tuple(int(x) for x in shape))
    return out


def _has(names: Sequence[str], *parts: str) -> bool:
    return any(all(p in n for p in parts) for n in names)


def with_checkpoint(
    profile: ModelProfile,
    index: Mapping[str, Any] | None = None,
    tensors: Mapping[str, TensorInfo] | None = None,
) -> ModelProfile:
    """``profile`` with the checkpoint's own size, tied embeddings and shared experts where it tells them.

    ``tensors`` (all shards' headers together) give the exact byte count and the structure; ``index``
    alone gives the byte count. Tensors win where both are given.
    """
    changes: dict[str, Any] = {}
    if index is not None:
        changes["checkpoint_bytes"] = total_size_from_index(index)
    if tensors:
        names = list(tensors)
        changes["checkpoint_bytes"] = int(sum(t.nbytes for t in tensors.values()))
        if _has(names, "embed_tokens") or _has(names, "wte"):
            changes["tie_word_embeddings"] = not _has(names, "lm_head")
        if profile.is_moe and profile.num_shared_experts == 0 and _has(names, "shared_expert"):
            changes["num_shared_experts"] = 1
    return dataclasses.replace(profile, **changes) if changes else profile
