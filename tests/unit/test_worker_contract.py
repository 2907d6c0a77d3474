"""Golden tests of the pod contract (tests/golden/worker-contract-*.json is the single source of truth).

The operator's manifest builders test the same files from their side: for the deployment a file describes they
must write exactly its ``env``. Here the worker must parse that ``env`` into exactly ``contract``, render it
back to the same ``env``, and turn it into exactly ``vllm_argv``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from tidal_worker.contract import CONTRACT_ENV_VARS, REMOVED_ENV_VARS, ContractError, Role, WorkerContract
from tidal_worker.engine_args import build_vllm_argv

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = sorted((ROOT / "tests" / "golden").glob("worker-contract-*.json"))


def _plain(contract: WorkerContract) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(contract).items():
        if key == "hf_token":
            continue
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def test_golden_files_exist() -> None:
    names = {p.name for p in GOLDEN}
    assert {
        "worker-contract-single.json",
        "worker-contract-ray-head.json",
        "worker-contract-ray-worker.json",
    } <= names


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_contract(path: Path) -> None:
    golden = json.loads(path.read_text())
    contract = WorkerContract.from_env(golden["env"])
    assert _plain(contract) == golden["contract"]
    assert contract.to_env() == golden["env"], "to_env must render what the operator writes"
    assert golden["pod"]["min_termination_grace_period_seconds"] == contract.min_termination_grace_seconds
    if contract.role is not Role.RAY_WORKER:
        assert golden["pod"]["container_port"] == contract.port
    # The pod runs this package as a module from the directory the operator mounts (first on PYTHONPATH).
    assert golden["pod"]["command"] == ["python3", "-m", "tidal_worker"]
    assert importlib.util.find_spec("tidal_worker.__main__") is not None
    code = golden["pod"]["worker_code"]
    assert code["pythonpath"].split(":")[0] == code["mount_path"] and code["read_only"] is True
    if "vllm_argv" in golden:
        spec = golden["vllm_argv"]
        assert list(build_vllm_argv(contract, spec["model_path"], python=spec["python"])) == spec["argv"]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_env_uses_only_contract_variables(path: Path) -> None:
    env = json.loads(path.read_text())["env"]
    assert set(env) <= set(CONTRACT_ENV_VARS)


def test_every_variable_is_documented() -> None:
    doc = (ROOT / "docs" / "worker-contract.md").read_text()
    missing = [name for name in CONTRACT_ENV_VARS if f"`{name}`" not in doc]
    assert not missing, f"document these in docs/worker-contract.md: {missing}"


def test_defaults() -> None:
    c = WorkerContract.from_env({"TIDAL_MODEL_URI": "hf://org/model"})
    assert c.role is Role.SINGLE
    assert (c.tensor_parallel_size, c.pipeline_parallel_size, c.world_size, c.gpus_expected) == (1, 1, 1, 1)
    assert c.model_name == "model"
    assert c.port == 8000
    assert c.drain_grace_seconds == 30.0
    assert c.to_env() == {"TIDAL_MODEL_URI": "hf://org/model", "TIDAL_ROLE": "single"}


def test_model_name_from_uri_revision() -> None:
    c = WorkerContract.from_env({"TIDAL_MODEL_URI": "hf://meta-llama/Llama-3.1-8B@abc123"})
    assert c.model_name == "Llama-3.1-8B"


def test_hf_token_is_read_but_never_shown() -> None:
    c = WorkerContract.from_env({"TIDAL_MODEL_URI": "/m", "HF_TOKEN": "hf_secret"})
    assert c.hf_token == "hf_secret"
    assert "hf_secret" not in repr(c)
    assert "HF_TOKEN" not in c.to_env(minimal=False)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"TIDAL_ROLE": "leader"}, "TIDAL_ROLE='leader' is not one of single, ray-head, ray-worker"),
        ({"TIDAL_TP": "two"}, "TIDAL_TP='two' is not an integer"),
        ({"TIDAL_TP": "0"}, "TIDAL_TP=0 must be >= 1"),
        ({"TIDAL_PP": "1.5"}, "TIDAL_PP='1.5' is not an integer"),
        ({"TIDAL_GPU_MEMORY_UTILIZATION": "1.2"}, "TIDAL_GPU_MEMORY_UTILIZATION=1.2 must be in (0.0, 1.0]"),
        ({"TIDAL_DTYPE": "int4"}, "TIDAL_DTYPE='int4' is not one of"),
        ({"TIDAL_KV_CACHE_DTYPE": "fp4"}, "TIDAL_KV_CACHE_DTYPE='fp4' is not one of"),
        ({"TIDAL_ENABLE_PREFIX_CACHING": "maybe"}, "TIDAL_ENABLE_PREFIX_CACHING='maybe' is not a boolean"),
        ({"TIDAL_EXTRA_ARGS": "--foo"}, "TIDAL_EXTRA_ARGS is not valid JSON"),
        ({"TIDAL_EXTRA_ARGS": '["--a", 1]'}, "TIDAL_EXTRA_ARGS must be a JSON list of strings"),
        ({"TIDAL_PORT": "70000"}, "TIDAL_PORT=70000 is not a TCP port"),
        ({"TIDAL_DRAIN_GRACE_SECONDS": "-1"}, "TIDAL_DRAIN_GRACE_SECONDS='-1' must be a finite number"),
        ({"TIDAL_DEVICE": "tpu"}, "TIDAL_DEVICE='tpu' is not one of cuda, cpu"),
        ({"TIDAL_GROUP_SIZE": "2"}, "TIDAL_GROUP_SIZE=2 needs role ray-head/ray-worker"),
        ({"TIDAL_ROLE": "ray-head"}, "role ray-head needs TIDAL_GROUP_SIZE >= 2"),
        ({"TIDAL_ROLE": "ray-worker", "TIDAL_GROUP_SIZE": "2"}, "TIDAL_RAY_HEAD_ADDRESS is required"),
    ],
)
def test_invalid_values_are_reported(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ContractError) as err:
        WorkerContract.from_env({"TIDAL_MODEL_URI": "/m", **env})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ContractError) as err:
        WorkerContract.from_env({"TIDAL_ROLE": "x", "TIDAL_TP": "y", "TIDAL_PP": "z"})
    assert len(err.value.problems) == 4  # role, TP, PP, and the missing model URI
    assert str(err.value).startswith("invalid worker contract: ")


def test_model_uri_required_except_for_ray_worker() -> None:
    with pytest.raises(ContractError, match="TIDAL_MODEL_URI is required for role single"):
        WorkerContract.from_env({})
    c = WorkerContract.from_env(
        {"TIDAL_ROLE": "ray-worker", "TIDAL_GROUP_SIZE": "2", "TIDAL_RAY_HEAD_ADDRESS": "head"}
    )
    assert c.uses_ray


def test_empty_values_mean_unset() -> None:
    c = WorkerContract.from_env({"TIDAL_MODEL_URI": "/m", "TIDAL_TP": "", "TIDAL_QUANTIZATION": " "})
    assert c.tensor_parallel_size == 1 and c.quantization is None


def test_startup_timeout_zero_disables() -> None:
    c = WorkerContract.from_env({"TIDAL_MODEL_URI": "/m", "TIDAL_STARTUP_TIMEOUT_SECONDS": "0"})
    assert c.startup_timeout_seconds is None


def test_removed_variables_are_ignored() -> None:
    """TIDAL_ENGINE_PORT / TIDAL_METRICS_PORT left in an old pod spec neither fail nor reach the contract."""
    assert not set(REMOVED_ENV_VARS) & set(CONTRACT_ENV_VARS)
    c = WorkerContract.from_env(
        {"TIDAL_MODEL_URI": "/m", "TIDAL_ENGINE_PORT": "8000", "TIDAL_METRICS_PORT": "x"}
    )
    assert c.port == 8000
    assert not set(REMOVED_ENV_VARS) & set(c.to_env(minimal=False))
