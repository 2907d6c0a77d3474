"""The worker's code reaches the pods of the stock vLLM image through a ConfigMap the running operator keeps
(docs/adr/0002-worker-code-on-stock-images.md), against a real kube-apiserver with KWOK GPU nodes and the
operator under its production RBAC: two deployments of ``examples/llama-3.1-8b.yaml`` in one namespace share
one ConfigMap ``tidal-worker-code-<hash>`` holding every file of ``tidal_worker`` (the workers' labels, no
deployment, no owner); their pods run the stock image and mount it read-only on PYTHONPATH with the hash in
their template; a deployment's own copy from before the ConfigMaps were shared is deleted; a deleted ConfigMap
comes back; it stays while a deployment of the namespace remains and goes with the last one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.controlplane.test_operator_reconcile import Env
from tests.support.cluster import ControlPlane
from tests.support.operator import OperatorProcess, operator_process, wait_for  # noqa: F401
from tidal.builders.workercode import CODE_HASH_ANNOTATION, CODE_MOUNT_PATH, config_map_name
from tidal.shell.workercode import load_worker_code

pytestmark = pytest.mark.controlplane


@pytest.fixture
def env(control_plane: ControlPlane, operator_process: OperatorProcess) -> Iterator[Env]:  # noqa: F811
    e = Env(control_plane, 1)
    yield e
    e.close()


def _config_map(env: Env, name: str) -> client.V1ConfigMap | None:
    try:
        return env.cp.core.read_namespaced_config_map(name, env.ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _worker_code_maps(env: Env) -> list[client.V1ConfigMap]:
    return list(
        env.cp.core.list_namespaced_config_map(
            env.ns, label_selector="app.kubernetes.io/component=worker-code"
        ).items
    )


def test_deployments_of_a_namespace_share_one_worker_code_config_map(env: Env) -> None:
    code = load_worker_code()  # the operator process reads the same installed package
    cm_name = config_map_name(code.hash)
    # A deployment's own copy, as operators before the shared ConfigMap wrote it: deleted once it reconciles.
    first = env.example("llama-3.1-8b.yaml")
    own = f"{first['metadata']['name']}-worker-code"
    env.cp.core.create_namespaced_config_map(
        env.ns,
        {
            "metadata": {
                "name": own,
                "labels": {
                    "app.kubernetes.io/name": "tidal-worker",
                    "app.kubernetes.io/component": "worker-code",
                    "tidal.dev/deployment": first["metadata"]["name"],
                },
            },
            "data": {"x": "y"},
        },
    )
    name = env.create(first)
    second = env.example("llama-3.1-8b.yaml")
    second["metadata"]["name"] = other = f"{name}-b"
    env.create(second)

    cm = wait_for(lambda: _config_map(env, cm_name), timeout=60, what="worker-code ConfigMap")
    assert not cm.metadata.owner_references
    assert "tidal.dev/deployment" not in cm.metadata.labels
    assert cm.metadata.labels["app.kubernetes.io/managed-by"] == "tidal-operator"
    assert cm.metadata.annotations[CODE_HASH_ANNOTATION] == code.hash
    assert cm.data == code.data
    assert {"tidal_worker.__main__.py", "tidal_worker.middleware.py"} <= set(cm.data)
    wait_for(lambda: _config_map(env, own) is None, timeout=60, what="the deployment's own copy deleted")

    for dep in (name, other):
        wait_for(lambda dep=dep: env.ready(dep), timeout=90, what=f"{dep} Ready")  # type: ignore[misc]
        [pod] = env.live_pods(dep)
        c = pod.spec.containers[0]
        assert c.image.startswith("vllm/vllm-openai:")
        assert c.command == ["python3", "-m", "tidal_worker"]
        [vol] = [v for v in pod.spec.volumes if v.config_map is not None]
        assert vol.config_map.name == cm_name and vol.config_map.default_mode == 0o444
        items = vol.config_map.items
        assert {i.key for i in items} == set(cm.data)
        assert all(i.path.startswith("tidal_worker/") and i.key == i.path.replace("/", ".") for i in items)
        [mount] = [m for m in c.volume_mounts if m.name == vol.name]
        assert mount.mount_path == CODE_MOUNT_PATH and mount.read_only is True
        env_vars = {e.name: e.value for e in c.env}
        assert env_vars["PYTHONPATH"] == CODE_MOUNT_PATH
        assert pod.metadata.annotations[CODE_HASH_ANNOTATION] == code.hash
    assert [m.metadata.name for m in _worker_code_maps(env)] == [cm_name]

    # Deleted by hand: the operator puts it back (a new object).
    env.cp.core.delete_namespaced_config_map(cm_name, env.ns)
    back = wait_for(
        lambda: (m := _config_map(env, cm_name)) is not None and m.metadata.uid != cm.metadata.uid and m,
        timeout=45,
        what="ConfigMap recreated",
    )
    assert back.data == code.data

    # It stays while a deployment of the namespace remains, and goes with the last one.
    env.custom.delete_namespaced_custom_object("tidal.dev", "v1alpha1", env.ns, "llmdeployments", name)
    wait_for(lambda: not env.live_pods(name), timeout=60, what=f"{name}'s pods deleted")
    assert _config_map(env, cm_name) is not None
    env.custom.delete_namespaced_custom_object("tidal.dev", "v1alpha1", env.ns, "llmdeployments", other)
    wait_for(lambda: _config_map(env, cm_name) is None, timeout=60, what="ConfigMap deleted")
