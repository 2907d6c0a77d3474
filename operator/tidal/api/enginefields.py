"""The registry of engine settings Tidal may choose: one entry per setting, naming it everywhere it appears.

A setting such as ``maxNumSeqs`` is spelled eight ways between the spec and vLLM: the CRD field, the
``spec.engine`` attribute, the recommender's input and output, the engine-tuning override, the worker's
``TIDAL_*`` variable, the vLLM flag, and its type (``gpuMemoryUtilization`` is a fraction, the rest are
integers). Each of those used to be a hand-kept table; they now read this one. The API model
(:class:`tidal.api.enginesettings.Engine`) keeps a typed field per setting (its documentation is the CRD's),
and a unit test holds the two together and the worker's mirror of the names
(``tidal_worker.contract``), which cannot import the operator.

Adding a setting the recommender may choose: an entry here, its field on ``Engine`` (``IntOrAuto`` or
``FractionOrAuto``), the worker's variable and flag, and the recommender's value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal


@dataclass(frozen=True)
class EngineSetting:
    """One engine setting that may be ``"auto"``."""

    field: str
    """Attribute of ``spec.engine``, of the effective engine and of the recommendation
    (``max_num_seqs``)."""
    spec_name: str
    """The CRD field under ``spec.engine`` and the key of ``status.engineTuning`` (``maxNumSeqs``)."""
    env: str
    """The worker's variable (``TIDAL_MAX_NUM_SEQS``)."""
    flag: str
    """vLLM's flag (``--max-num-seqs``)."""
    kind: Literal["int", "fraction"]
    """An integer, or a fraction in (0, 1] written as a decimal string in the spec."""
    recommend_input: str
    """The recommender input's field that fixes the setting (``RecommendInput.tp`` for TP)."""
    aliases: tuple[str, ...] = ()
    """vLLM's short spellings of the flag (``-tp``): refused in ``extraArgs`` like the flag itself."""
    default: int | None = None
    """What the workers run when the setting stays ``"auto"`` without a recommendation (``None``: vLLM's own
    default, so nothing is passed)."""
    every_pod: bool = False
    """Passed to every pod of a Ray group (parallelism), not only to the one that runs the engine."""
    live_tunable: bool = False
    """Engine tuning may override it from the running engines' metrics (:mod:`tidal.scaling.tuning`)."""

    def parse(self, raw: object) -> int | float:
        """The setting's value from the spec or status (``"0.92"``, ``8``, ``8.0``) as its type."""
        return float(str(raw)) if self.kind == "fraction" else int(float(str(raw)))

    def render(self, value: int | float) -> str:
        """The value as the worker's variable and vLLM's flag carry it (``0.9``, ``256``)."""
        number = float(value)
        return str(int(number)) if number.is_integer() else str(number)


SETTINGS: Final[tuple[EngineSetting, ...]] = (
    EngineSetting(
        "tensor_parallel_size",
        "tensorParallelSize",
        "TIDAL_TP",
        "--tensor-parallel-size",
        "int",
        "tp",
        aliases=("-tp",),
        default=1,
        every_pod=True,
    ),
    EngineSetting(
        "pipeline_parallel_size",
        "pipelineParallelSize",
        "TIDAL_PP",
        "--pipeline-parallel-size",
        "int",
        "pp",
        aliases=("-pp",),
        default=1,
        every_pod=True,
    ),
    EngineSetting(
        "gpu_memory_utilization",
        "gpuMemoryUtilization",
        "TIDAL_GPU_MEMORY_UTILIZATION",
        "--gpu-memory-utilization",
        "fraction",
        "gpu_memory_utilization",
        live_tunable=True,
    ),
    EngineSetting(
        "max_num_seqs",
        "maxNumSeqs",
        "TIDAL_MAX_NUM_SEQS",
        "--max-num-seqs",
        "int",
        "max_num_seqs",
        live_tunable=True,
    ),
    EngineSetting(
        "max_model_len", "maxModelLen", "TIDAL_MAX_MODEL_LEN", "--max-model-len", "int", "max_model_len"
    ),
    EngineSetting(
        "max_num_batched_tokens",
        "maxNumBatchedTokens",
        "TIDAL_MAX_NUM_BATCHED_TOKENS",
        "--max-num-batched-tokens",
        "int",
        "max_num_batched_tokens",
        live_tunable=True,
    ),
)
"""Every setting that may be ``"auto"``, in the order the API lists them."""

BY_FIELD: Final = {s.field: s for s in SETTINGS}
BY_SPEC_NAME: Final = {s.spec_name: s for s in SETTINGS}

__all__ = ["BY_FIELD", "BY_SPEC_NAME", "SETTINGS", "EngineSetting"]
