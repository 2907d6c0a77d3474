"""Generate tiny Llama-architecture models locally for the engine and metrics tiers (no downloads).

`make_tiny_model(out_dir)` writes a Hugging Face model directory that the real vLLM engine (CPU build)
loads: ``config.json`` (LlamaForCausalLM), random ``model.safetensors`` weights (bfloat16), and a tiny
byte-level BPE tokenizer trained with `tokenizers` on a few sentences, saved through transformers'
PreTrainedTokenizerFast with a chat template so ``/v1/chat/completions`` works. The tokenizer is padded
with plain added tokens to exactly ``vocab_size`` entries, so every id the random model can emit
decodes to text.

Generated models are cached under ``${TIDAL_CACHE:-~/.cache/tidal}/tinymodels/<hash of the parameters>`` and
reused by later runs; `out_dir` then becomes a copy (or is the cache path itself when ``out_dir`` is None).
Building happens in a temporary sibling directory and is renamed into place, so concurrent test processes
never see a half-written model.

KV bytes per token with the defaults (bfloat16): 2 (K and V) x layers 2 x kv_heads 2 x head_dim 64 x 2 bytes
= 1,024 bytes; the weights are about 3 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GENERATOR_VERSION = 1
"""Bump when the generated files change, so stale cache entries are not reused."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tidal serves large language models on many GPUs with vLLM.",
    "Kubernetes operators reconcile the desired state with the observed state.",
    "Tensor parallelism splits each layer across the GPUs of one node.",
    "Pipeline parallelism splits the layers across nodes that Ray connects.",
    "A replica drains before it goes: no new requests, and the running ones finish.",
    "Prometheus scrapes the queue length, the KV cache usage and the latency of every engine.",
    "Hello world! How are you today? I am fine, thank you.",
    "Once upon a time there was a tiny model that answered every question with random words.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000, + - * / = ( ) [ ] { } < > : ; ' \" ? !",
    "user assistant system: please write a short story about the sea.",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Every parameter that determines the generated files (hashed into the cache key)."""

    num_layers: int = 2
    hidden_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 512
    vocab_size: int = 512
    max_position_embeddings: int = 2048
    seed: int = 0

    def cache_key(self) -> str:
        """A short stable hash of the parameters and the generator version."""
        payload = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token takes in bfloat16 (K and V, all layers, unsplit)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2


def tidal_cache_dir() -> Path:
    """``$TIDAL_CACHE`` or ``~/.cache/tidal``."""
    return Path(os.environ.get("TIDAL_CACHE") or Path.home() / ".cache" / "tidal")


def make_tiny_model(
    out_dir: Path | None = None,
    *,
    num_layers: int = 2,
    hidden_size: int = 256,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 64,
    intermediate_size: int = 512,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Return a directory holding a tiny random Llama model + tokenizer (cached; see the module docstring).

    With ``out_dir`` None the cache directory itself is returned (treat it as read-only). Otherwise the model
    is copied to ``out_dir`` (created; files with the same names are overwritten) and ``out_dir`` returned.
    """
    spec = TinyModelSpec(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        seed=seed,
    )
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if vocab_size < 300:
        raise ValueError("vocab_size must be at least 300 (256 byte tokens + specials + merges)")
    cached = tidal_cache_dir() / "tinymodels" / spec.cache_key()
    if not (cached / "config.json").is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}-", dir=cached.parent))
        try:
            _generate(spec, tmp)
            tmp.chmod(0o755)
            for f in tmp.iterdir():
                f.chmod(0o644)
            try:
                tmp.rename(cached)
            except OSError:
                # Another process won the race; its copy is identical.
                if not (cached / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if out_dir is None:
        return cached
    out_dir = Path(out_dir)
    shutil.copytree(cached, out_dir, dirs_exist_ok=True)
    return out_dir


def _generate(spec: TinyModelSpec, out: Path) -> None:
    """Write config, weights and tokenizer for `spec` into `out`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast: Any = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    # Pad to exactly vocab_size with plain tokens, so any id the random model samples decodes.
    missing = spec.vocab_size - len(fast)
    if missing > 0:
        fast.add_tokens([f"<|extra_{i}|>" for i in range(missing)])
    for i, name in enumerate(SPECIAL_TOKENS):
        if fast.convert_tokens_to_ids(name) != i:
            raise RuntimeError(f"special token {name} is not id {i}")
    if len(fast) != spec.vocab_size:
        raise RuntimeError(f"tokenizer has {len(fast)} tokens, expected {spec.vocab_size}")
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = spec.max_position_embeddings
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model: Any = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # Make the dtype explicit whichever key this transformers version writes.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "tidal-tinymodel.json").write_text(
        json.dumps({"generator_version": GENERATOR_VERSION, **asdict(spec)}, indent=2, sort_keys=True) + "\n"
    )


if __name__ == "__main__":  # pragma: no cover - convenience: print the path of the default model
    print(make_tiny_model())
