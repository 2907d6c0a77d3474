"""The engine-setting registry (``tidal.api.enginefields``) against every place a setting appears: the API
model and its CRD schema, the recommender's input and output, the effective engine, the status models, the
worker's own mirror of the names (``tidal_worker.contract``) and its vLLM argv. A setting added to one and
not the others fails here, by name.

Every setting is also carried end to end: an explicit value in a spec reaches the worker's variable and
vLLM's flag with the same number.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from tests.support.malformed import VALID

from tidal.api import LLMDeployment
from tidal.api.crdgen import openapi_schema
from tidal.api.enginefields import BY_FIELD, BY_SPEC_NAME, SETTINGS, EngineSetting
from tidal.api.enginesettings import Engine
from tidal.api.status import EngineOverrides, RecommendedValues
from tidal.builders.contract import WorkerEnvInput, worker_env
from tidal.builders.engine import EffectiveEngine, resolve_engine
from tidal.builders.names import ROLE_RAY_HEAD, ROLE_RAY_WORKER, ROLE_SINGLE
from tidal.recommender.recommend import Recommendation, RecommendInput
from tidal.scaling.tuning import TUNABLE
from tidal_worker import contract as worker_contract
from tidal_worker.contract import WorkerContract
from tidal_worker.engine_args import build_vllm_argv

pytestmark = pytest.mark.unit

_EXPLICIT = {"int": 3, "fraction": "0.85"}
"""An explicit spec value per kind, different from every default (TP 3 divides no 8-GPU node, so it runs
with ``gpusPerNode: 3``)."""


def _names(settings: tuple[EngineSetting, ...], attr: str) -> list[str]:
    return [getattr(s, attr) for s in settings]


def test_names_are_unique_in_every_spelling() -> None:
    for attr in ("field", "spec_name", "env", "flag", "recommend_input"):
        names = _names(SETTINGS, attr)
        assert len(names) == len(set(names)), f"two settings share a {attr}: {names}"
    assert BY_FIELD.keys() == {s.field for s in SETTINGS} and BY_SPEC_NAME.keys() == {
        s.spec_name for s in SETTINGS
    }


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.spec_name)
def test_each_setting_exists_wherever_it_is_spelled(setting: EngineSetting) -> None:
    engine_schema = openapi_schema()["properties"]["spec"]["properties"]["engine"]["properties"]
    prop = engine_schema[setting.spec_name]
    if setting.kind == "int":
        assert prop.get("x-kubernetes-int-or-string") is True, prop
    else:
        assert prop["type"] == "string", prop
    assert Engine.model_fields[setting.field].alias == setting.spec_name
    assert Engine.model_fields[setting.field].default == "auto"
    for typed in (EffectiveEngine, Recommendation):
        assert setting.field in {f.name for f in dataclasses.fields(typed)}, typed
    assert setting.recommend_input in {f.name for f in dataclasses.fields(RecommendInput)}
    assert setting.field in RecommendedValues.model_fields
    assert (setting.field in EngineOverrides.model_fields) == setting.live_tunable
    assert (setting.spec_name in TUNABLE) == setting.live_tunable
    # The worker's mirror: same variable for the same contract field.
    assert worker_contract._FIELD_ENV[setting.field] == setting.env


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.spec_name)
def test_an_explicit_value_reaches_the_variable_and_the_flag(setting: EngineSetting) -> None:
    doc: dict[str, Any] = copy.deepcopy(VALID)
    doc["spec"]["engine"] = {setting.spec_name: _EXPLICIT[setting.kind]}
    doc["spec"]["resources"]["gpusPerNode"] = 3
    spec = LLMDeployment.model_validate(doc).spec
    engine = resolve_engine(spec, None)
    value = getattr(engine, setting.field)
    assert value == setting.parse(_EXPLICIT[setting.kind])
    roles = (ROLE_RAY_HEAD, ROLE_RAY_WORKER) if setting.every_pod else (ROLE_SINGLE,)
    for role in roles:
        env = worker_env(
            WorkerEnvInput(
                role=role,
                model_uri="hf://org/m",
                served_model_name="m",
                engine=engine,
                expected_gpus=engine.world_size,
                group_size=1 if role == ROLE_SINGLE else 2,
                ray_head_address="" if role == ROLE_SINGLE else "head.ns.svc",
            )
        )
        assert env[setting.env] == setting.render(value), role
    if not setting.every_pod:
        ray_worker = dataclasses.replace(
            WorkerEnvInput("x", "hf://org/m", "m", engine, engine.world_size, 2, "h"), role=ROLE_RAY_WORKER
        )
        assert setting.env not in worker_env(ray_worker), "only the engine's pod runs vLLM"
    argv = build_vllm_argv(WorkerContract.from_env(env), "/models/m")
    at = argv.index(setting.flag)
    assert float(argv[at + 1]) == pytest.approx(float(value))


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.spec_name)
def test_auto_without_a_recommendation_runs_the_default(setting: EngineSetting) -> None:
    spec = LLMDeployment.model_validate({**VALID, "spec": {**VALID["spec"], "engine": {}}}).spec
    engine = resolve_engine(spec, None)
    assert getattr(engine, setting.field) == setting.default
    env = worker_env(WorkerEnvInput(ROLE_SINGLE, "hf://org/m", "m", engine, engine.world_size))
    assert setting.env not in env, "a default is left to the worker"


@pytest.mark.parametrize(
    ("kind", "raw", "parsed", "rendered"),
    [
        ("int", "8", 8, "8"),
        ("int", 8.0, 8, "8"),
        ("int", 255.9, 255, "255"),
        ("fraction", "0.92", 0.92, "0.92"),
        ("fraction", 1, 1.0, "1"),
    ],
)
def test_parse_and_render(kind: str, raw: object, parsed: float, rendered: str) -> None:
    setting = next(s for s in SETTINGS if s.kind == kind)
    value = setting.parse(raw)
    assert value == parsed and type(value) is (int if kind == "int" else float)
    assert setting.render(value) == rendered
