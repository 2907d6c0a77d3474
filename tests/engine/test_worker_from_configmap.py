"""The worker runs from exactly what the ConfigMap ships, as a pod on the stock vLLM image would run it.

The ConfigMap and the pod are built by the operator's builders from the installed ``tidal_worker`` package;
the files are then written out the way the kubelet projects the volume (each ``items`` entry: the key's data
at its path, mode ``defaultMode``) into a read-only directory, and the pod's command runs with that directory
alone as ``PYTHONPATH``, under a python that has vLLM (the venv, standing in for the image). ``tidal_worker``
is a regular package, so every submodule it imports must come from that directory: a file the ConfigMap
lacks fails the import even though the source tree has it. The vLLM child imports the middleware from the
same directory (it inherits PYTHONPATH), so ``/ready`` answering 200 proves that part too. The development
install's editable finder is switched off in those processes (a ``sitecustomize`` after the shipped
directory), as the image has no other copy to fall back on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.engine import running_worker, tiny_model_dir

from tidal.api import LLMDeployment
from tidal.builders.engine import recommend_for_spec, resolve_engine
from tidal.builders.pods import BuilderConfig, ReplicaInputs, build_replica_pods
from tidal.builders.workercode import CODE_VOLUME, build_worker_code_config_map
from tidal.shell.workercode import load_worker_code

__all__ = ["tiny_model_dir"]

ROOT = Path(__file__).resolve().parents[2]
SOURCE_TREE = ROOT / "worker"
GUARD = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
"""


def _pod_and_config_map() -> tuple[dict[str, Any], dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["metadata"].update(namespace="serving", uid="uid-1", generation=1)
    dep = LLMDeployment.model_validate(doc)
    code = load_worker_code()
    inp = ReplicaInputs(
        dep, resolve_engine(dep.spec, recommend_for_spec(dep.spec, 1)), BuilderConfig(worker_code=code)
    )
    pod = build_replica_pods(inp, 0, "h")[0]
    cm = build_worker_code_config_map(inp.namespace, code)
    # Through JSON, as the API server stores and returns them.
    return json.loads(json.dumps(pod)), json.loads(json.dumps(cm))


def _materialise(pod: dict[str, Any], cm: dict[str, Any], root: Path) -> tuple[Path, dict[str, str]]:
    """Project the ConfigMap volume like the kubelet; return the mount directory and the pod's env."""
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == CODE_VOLUME)["configMap"]
    assert volume["name"] == cm["metadata"]["name"]
    container = pod["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == CODE_VOLUME)
    target = root / mount["mountPath"].lstrip("/")
    for item in volume["items"]:
        path = target / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cm["data"][item["key"]])
        path.chmod(volume["defaultMode"])
    for d in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        d.chmod(0o555)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The mount path of the pod, re-rooted in the test's directory.
    env["PYTHONPATH"] = env["PYTHONPATH"].replace(mount["mountPath"], str(target))
    return target, env


@pytest.fixture(scope="module")
def shipped(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, Any], dict[str, str]]]:
    pod, cm = _pod_and_config_map()
    root = tmp_path_factory.mktemp("pod")
    target, env = _materialise(pod, cm, root)
    # The image has no other tidal_worker: hide the development install (its editable finder would supply a
    # module the shipped directory lacks). Last on PYTHONPATH, so it cannot shadow a shipped file.
    guard = root / "no-editable-install"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{guard}"
    yield target, pod, env
    for d in (p for p in target.rglob("*") if p.is_dir()):
        d.chmod(0o755)
    target.chmod(0o755)


def _python(env: dict[str, str], args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python3 ARGS`` with the pod's environment (the venv's python stands in for the image's)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_") and k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_module_imports_from_the_shipped_files_alone(
    shipped: tuple[Path, dict[str, Any], dict[str, str]],
) -> None:
    target, _, env = shipped
    # Every module of the source tree (not of the shipped directory: a file missing there must fail here).
    modules = sorted(p.stem for p in (SOURCE_TREE / "tidal_worker").glob("*.py") if p.stem != "__init__")
    script = (
        "import importlib, json, tidal_worker\n"
        f"mods = [importlib.import_module('tidal_worker.' + m) for m in {modules!r}]\n"
        "print(json.dumps([tidal_worker.__file__] + [m.__file__ for m in mods]))\n"
    )
    out = _python(env, ["-c", script], cwd=target)
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)
    assert len(files) == len(modules) + 1 >= 10
    assert all(f.startswith(str(target)) for f in files), files
    assert not any(f.startswith(str(SOURCE_TREE)) for f in files)


def test_help_runs_the_pods_command(shipped: tuple[Path, dict[str, Any], dict[str, str]]) -> None:
    target, pod, env = shipped
    command = pod["spec"]["containers"][0]["command"]
    assert command == ["python3", "-m", "tidal_worker"]
    out = _python(env, [*command[1:], "--help"], cwd=target)
    assert out.returncode == 0, out.stderr
    assert "--print-argv" in out.stdout


def test_a_real_worker_serves_from_the_shipped_files(
    shipped: tuple[Path, dict[str, Any], dict[str, str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    target, _, env = shipped
    log = tmp_path / "worker.log"
    with running_worker(tiny_model_dir, env={"PYTHONPATH": env["PYTHONPATH"]}, log_path=log) as worker:
        body = json.dumps(
            {"model": worker.model_name, "prompt": "hello", "max_tokens": 4, "ignore_eos": True}
        ).encode()
        req = urllib.request.Request(
            worker.base_url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
        assert answer["choices"][0]["text"] is not None and answer["usage"]["completion_tokens"] == 4
        with urllib.request.urlopen(worker.metrics_url, timeout=30) as resp:
            metrics = resp.read().decode()
        assert "tidal_worker_" in metrics  # the middleware's collector, loaded in vLLM's process
    assert f"tidal_worker from {target / 'tidal_worker'}" in log.read_text()
