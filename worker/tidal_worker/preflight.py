"""Preflight: refuse impossible engine settings in a second, before vLLM spends minutes loading.

`preflight_problems(contract, hf_config, known_quantizations)` is pure: it reads the model's ``config.json``
(as a dict) and the contract and returns every problem as a readable sentence, for example "TIDAL_TP=8 does
not divide the model's 4 attention heads". The worker logs them as one ``preflight failed:`` line and exits
with `EXIT_PREFLIGHT`. vLLM would refuse most of these too, but only after importing torch and starting
processes, with a traceback rather than a sentence an SRE can act on.

The list of quantization methods is read from the installed vLLM's source without importing vLLM (importing it
takes seconds), falling back to a built-in copy of vLLM 0.32's list when vLLM is not installed.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from .contract import ENV_EXPECTED_GPUS, ENV_MAX_MODEL_LEN, ENV_PP, ENV_QUANTIZATION, ENV_TP, WorkerContract

BUILTIN_QUANTIZATIONS = frozenset(
    {
        "auto_awq", "auto_gptq", "awq", "awq_marlin", "bitsandbytes", "compressed-tensors", "experts_int8",
        "fbgemm_fp8", "fp8", "fp_quant", "gguf", "gptq", "gptq_marlin", "inc", "modelopt", "modelopt_fp4",
        "moe_wna16", "mxfp4", "ptpc_fp8", "quark", "torchao", "tpu_int8",
    }
)  # fmt: skip


class PreflightError(RuntimeError):
    """Impossible settings; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("preflight failed: " + "; ".join(problems))


def text_config(hf_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language-model part of a config (multimodal configs nest it under ``text_config``)."""
    nested = hf_config.get("text_config")
    if isinstance(nested, Mapping):
        return {**hf_config, **nested}
    return hf_config


def preflight_problems(
    contract: WorkerContract, hf_config: Mapping[str, Any], known_quantizations: Collection[str]
) -> list[str]:
    """Every reason the contract cannot serve this model (empty when it can)."""
    cfg = text_config(hf_config)
    tp, pp = contract.tensor_parallel_size, contract.pipeline_parallel_size
    problems: list[str] = []

    heads = _int(cfg.get("num_attention_heads"))
    kv_heads = _int(cfg.get("num_key_value_heads")) or heads
    layers = _int(cfg.get("num_hidden_layers"))
    if heads is not None:
        if tp > heads:
            problems.append(f"{ENV_TP}={tp} is larger than the model's {heads} attention heads")
        elif heads % tp:
            problems.append(f"{ENV_TP}={tp} does not divide the model's {heads} attention heads")
    if kv_heads is not None and heads is not None and tp <= heads:
        if tp <= kv_heads and kv_heads % tp:
            problems.append(f"{ENV_TP}={tp} does not divide the model's {kv_heads} key/value heads")
        if tp > kv_heads and tp % kv_heads:
            problems.append(
                f"{ENV_TP}={tp} is not a multiple of the model's {kv_heads} key/value heads "
                "(needed to replicate them)"
            )
    if layers is not None and pp > layers:
        problems.append(f"{ENV_PP}={pp} is larger than the model's {layers} layers")

    if contract.quantization is not None and contract.quantization not in known_quantizations:
        problems.append(
            f"{ENV_QUANTIZATION}={contract.quantization!r} is not a quantization method this vLLM knows "
            f"(known: {', '.join(sorted(known_quantizations))})"
        )

    if contract.expected_gpus is not None and contract.expected_gpus != contract.world_size:
        problems.append(
            f"{ENV_TP} x {ENV_PP} = {tp} x {pp} = {contract.world_size} does not match "
            f"{ENV_EXPECTED_GPUS}={contract.expected_gpus}"
        )

    max_pos = _int(cfg.get("max_position_embeddings"))
    if contract.max_model_len is not None and max_pos is not None and contract.max_model_len > max_pos:
        problems.append(
            f"{ENV_MAX_MODEL_LEN}={contract.max_model_len} exceeds the model's "
            f"max_position_embeddings {max_pos}"
        )
    return problems


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    """Load ``config.json`` of a model directory."""
    path = model_dir / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PreflightError([f"cannot read {path}: {exc}"]) from exc
    if not isinstance(data, dict):
        raise PreflightError([f"{path} is not a JSON object"])
    return data


def installed_quantizations() -> frozenset[str]:
    """Quantization methods of the installed vLLM, read from its source without importing it."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return BUILTIN_QUANTIZATIONS
    source = (
        Path(next(iter(spec.submodule_search_locations))) / "model_executor/layers/quantization/__init__.py"
    )
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError):
        return BUILTIN_QUANTIZATIONS
    for node in tree.body:
        target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if (
            isinstance(target, ast.Name)
            and target.id == "QuantizationMethods"
            and isinstance(value, ast.Subscript)
        ):
            names = [
                elt.value
                for elt in ast.walk(value.slice)
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str)
            ]
            if names:
                return frozenset(names)
    return BUILTIN_QUANTIZATIONS


def run_preflight(contract: WorkerContract, model_dir: Path) -> None:
    """Raise `PreflightError` when the contract cannot serve the model in `model_dir`."""
    problems = preflight_problems(contract, read_hf_config(model_dir), installed_quantizations())
    if problems:
        raise PreflightError(problems)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
