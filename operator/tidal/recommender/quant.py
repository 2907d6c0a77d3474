"""Bytes per weight parameter under vLLM's quantization methods, from the method and ``quantization_config``.

Split out of ``memory`` so the weight arithmetic there stays about *where* parameters live (TP/PP split)
while this module owns *how many bytes* one parameter takes: the packed weight plus its scales (and zero
points), from the checkpoint's own ``quantization_config`` (``bits``, ``group_size``) where it gives them,
else from the method's usual layout (``QUANT_BYTES_PER_PARAM``).
"""

from __future__ import annotations

from tidal.recommender.models import ModelProfile

QUANT_BYTES_PER_PARAM: dict[str, float] = {
    "fp8": 1.0 + 4.0 / (128 * 128),  # e4m3 + one fp32 scale per 128x128 block (per-tensor: smaller)
    "int8": 1.0 + 4.0 / 4096,  # w8a8 / per-channel scales
    "awq": 0.5 + 2.5 / 128,  # 4-bit weights + fp16 scale + 4-bit zero point per group of 128
    "gptq": 0.5 + 2.5 / 128,
    "awq_marlin": 0.5 + 2.5 / 128,
    "gptq_marlin": 0.5 + 2.5 / 128,
    "int4": 0.5 + 2.5 / 128,
    "bitsandbytes": 0.5 + 4.0 / 64,  # nf4 + fp32 absmax per 64
    "mxfp4": 0.5 + 1.0 / 32,  # e2m1 + one e8m0 scale per 32 (gpt-oss: experts only)
    "nvfp4": 0.5 + 1.0 / 16,  # e2m1 + one fp8 scale per 16
}
"""Bytes per quantized parameter (weights plus their scales) for ``--quantization`` methods."""

EXPERTS_ONLY_QUANT = frozenset({"mxfp4"})
"""Methods that quantize only the routed experts (gpt-oss's MXFP4); attention stays in the model dtype."""

GROUPED_INT_METHODS = frozenset({"awq", "gptq", "awq_marlin", "gptq_marlin", "int4"})
"""Integer group quantization: ``bits/8`` per weight + an fp16 scale and a packed zero point per group."""

MXFP4_INTERMEDIATE_ALIGN = 64
"""vLLM pads each TP rank's expert width to this for its SM90 Triton MXFP4 kernels."""


def normalize_quantization(quantization: str | None) -> str | None:
    """Canonical quantization name (``None`` / ``"none"`` → None; ``ValueError`` for an unknown method)."""
    if quantization is None:
        return None
    q = quantization.strip().lower()
    if q in ("", "none", "auto"):
        return None
    if q in ("compressed-tensors", "fbgemm_fp8", "modelopt", "fp8_e4m3"):
        q = "fp8"
    if q not in QUANT_BYTES_PER_PARAM:
        raise ValueError(
            f"unknown quantization {quantization!r}; known: {', '.join(sorted(QUANT_BYTES_PER_PARAM))}"
        )
    return q


def effective_quantization(profile: ModelProfile, quantization: str | None) -> str | None:
    """The requested method, or the checkpoint's own (``quantization_config``) when none is given."""
    q = normalize_quantization(quantization)
    if q is None and profile.quantization:
        try:
            q = normalize_quantization(profile.quantization)
        except ValueError:
            q = None
    return q


def bytes_per_param(profile: ModelProfile, method: str) -> float:
    """Bytes per parameter of ``method``; the checkpoint's bits and group size when it is that method."""
    own = normalize_quantization(profile.quantization) if profile.quantization else None
    if method in GROUPED_INT_METHODS and own in GROUPED_INT_METHODS and profile.quant_bits:
        bits = profile.quant_bits
        group = profile.quant_group_size or 128
        if group <= 0:  # one scale per output channel: negligible per parameter
            return bits / 8
        return bits / 8 + (2.0 + bits / 8) / group
    return QUANT_BYTES_PER_PARAM[method]
