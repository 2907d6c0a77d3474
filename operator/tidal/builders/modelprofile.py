"""The architecture a deployment's model is sized by: ``spec.model.architecture``, the built-in catalogue
(by name or by the URI's model name), or the Hub ``config.json`` the shell fetched; and the checkpoint's
size that follows from it.

It exists apart from :mod:`tidal.builders.engine` because more than the engine settings read it: the pod's
memory request (:mod:`tidal.builders.podparts`), the model condition and the KV-capacity check
(:mod:`tidal.plan`) and the Hub fetcher's name hint (:mod:`tidal.shell.hub`).
"""

from __future__ import annotations

import dataclasses

from tidal.api import ModelSource
from tidal.builders import hubmodels
from tidal.recommender.catalog import catalog_profile, hub_repo, resolve_name
from tidal.recommender.memory import weight_bytes
from tidal.recommender.models import ModelProfile


def model_name_hint(uri: str) -> str:
    """The repository-like name of a model URI (``org/name`` for hf://, the last path segment otherwise)."""
    scheme, _, rest = uri.partition("://")
    if scheme == "hf":
        return rest.split("@", 1)[0]
    parts = [p for p in rest.split("/") if p]
    return parts[-1] if parts else rest


_ARCH_FIELDS = {
    "num_layers": "num_layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
    "intermediate_size": "intermediate_size",
    "num_experts": "num_experts",
    "num_experts_per_token": "num_experts_per_tok",
    "moe_intermediate_size": "moe_intermediate_size",
    "kv_lora_rank": "kv_lora_rank",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "max_position_embeddings": "max_position_embeddings",
    "tie_word_embeddings": "tie_word_embeddings",
    "quantization": "quantization",
}


def model_profile(model: ModelSource) -> tuple[ModelProfile | None, str]:
    """The architecture the recommender sizes for, and where it came from (or why there is none).

    ``spec.model.architecture`` wins (a catalogue name, explicit numbers, or both); otherwise the URI's model
    name is looked up in the built-in catalogue, then (hf:// URIs) in the Hub ``config.json`` profiles the
    shell fetched (:mod:`tidal.builders.hubmodels`).
    """
    arch = model.architecture
    base: ModelProfile | None = None
    source = ""
    if arch is not None and arch.catalog_name:
        cat = resolve_name(arch.catalog_name)
        if cat is None:
            return None, f"spec.model.architecture.catalogName {arch.catalog_name!r} is not in the catalogue"
        base, source = catalog_profile(cat), f"catalogue entry {cat} (spec.model.architecture.catalogName)"
    elif arch is None:
        hint = model_name_hint(model.uri)
        cat = resolve_name(hint)
        if cat is None:
            return _hub_profile(model.uri, hint)
        base, source = catalog_profile(cat), f"catalogue entry {cat} (from the model URI)"
    overrides = {
        target: getattr(arch, name)
        for name, target in _ARCH_FIELDS.items()
        if arch is not None and getattr(arch, name) is not None
    }
    if base is None:
        assert arch is not None and arch.num_layers and arch.hidden_size and arch.num_attention_heads
        heads = arch.num_attention_heads
        base = ModelProfile(
            name=model_name_hint(model.uri),
            architecture="custom",
            num_layers=arch.num_layers,
            hidden_size=arch.hidden_size,
            num_attention_heads=heads,
            num_kv_heads=arch.num_key_value_heads or heads,
            head_dim=arch.head_dim or arch.hidden_size // heads,
            intermediate_size=arch.intermediate_size or 4 * arch.hidden_size,
            vocab_size=arch.vocab_size or 32000,
            max_position_embeddings=arch.max_position_embeddings or 8192,
            quantization=arch.quantization,
        )
        return base, "spec.model.architecture numbers"
    if overrides:
        base = dataclasses.replace(base, **overrides)
        source += " with spec.model.architecture overrides"
    return base, source


MODEL_UNRESOLVED_HINT = (
    "set spec.model.architecture (catalogName or numLayers/hiddenSize/numAttentionHeads) for a recommendation"
)


def _hub_profile(uri: str, hint: str) -> tuple[ModelProfile | None, str]:
    repo = hub_repo(uri) if uri.startswith("hf://") else None
    if repo is None:
        return None, f"model {hint!r} is not in the built-in catalogue; {MODEL_UNRESOLVED_HINT}"
    found = hubmodels.lookup(*repo)
    missing = f"model {hint!r} is not in the built-in catalogue"
    if found is None:
        return None, f"{missing} and its config.json has not been fetched from the Hub yet"
    if found.profile is None:
        return (
            None,
            f"{missing} and its config.json could not be used: {found.error}; {MODEL_UNRESOLVED_HINT}",
        )
    rev = f"@{repo[1]}" if repo[1] else ""
    return found.profile, f"config.json of {repo[0]}{rev} from the Hub"


def checkpoint_bytes(model: ModelSource) -> int | None:
    """Bytes of the model's weights as stored in the checkpoint (its own dtype and quantization, not
    ``--quantization``), ``None`` when the recommender does not know the model."""
    profile, _ = model_profile(model)
    if profile is None:
        return None
    try:
        return weight_bytes(profile, 1, 1, "auto", None).per_gpu
    except ValueError:
        return None
