"""The worker pod's resource requests, security contexts, model cache volume and termination grace, derived
from the spec (``spec.resources``, ``spec.model.cache``, ``spec.podSecurity``) and the model's size.

It exists apart from :mod:`tidal.builders.pods` so the sizing rules (documented in ``docs/concepts.md``,
"Worker pods") sit together and are unit-tested one by one:

* memory request: this pod's share of the checkpoint (the weights pass through host memory, the page cache,
  while they load) + 4 GiB + 2 GiB per GPU; a 16 GiB floor stands in for the weights of a model the
  recommender does not know;
* CPU request: 2 cores + 2 per GPU;
* ``emptyDir`` model cache ``sizeLimit``: twice the checkpoint + 5 GiB (a Hub repository often holds a second
  copy of the weights and the worker downloads the whole snapshot); no limit when the model is unknown;
* ephemeral-storage request: 10 GiB + the ``emptyDir`` cache's limit.

Pure: no Kubernetes client, no I/O.
"""

from __future__ import annotations

import math
from typing import Any

from tidal.api import LLMDeployment
from tidal.builders.modelprofile import checkpoint_bytes

GIB = 1024**3
MEMORY_BASE_GIB = 4
MEMORY_PER_GPU_GIB = 2
UNKNOWN_MODEL_WEIGHTS_GIB = 16
"""Stands in for the weights when the recommender does not know the model (set ``resources.memory``)."""
CPU_BASE = 2
CPU_PER_GPU = 2
CACHE_FACTOR = 2.0
CACHE_MARGIN_GIB = 5
EPHEMERAL_BASE_GIB = 10
HOME_DIR = "/home/tidal"
"""``HOME`` of a non-root worker: an ``emptyDir`` (vLLM, Triton and torch.compile write caches under it);
the vLLM image's ``HOME`` (``/root``) is not writable by another user."""


def _gib(n_bytes: float) -> int:
    return math.ceil(n_bytes / GIB)


def cache_size_limit_gib(deployment: LLMDeployment) -> int | None:
    """``sizeLimit`` (GiB) of the ``emptyDir`` model cache: twice the checkpoint + 5 GiB, ``None`` when the
    model is unknown. ``spec.model.cache.sizeLimit`` is used as given instead (see :func:`cache_volume`)."""
    weights = checkpoint_bytes(deployment.spec.model)
    if weights is None:
        return None
    return _gib(weights * CACHE_FACTOR) + CACHE_MARGIN_GIB


def uses_download_cache(deployment: LLMDeployment) -> bool:
    """Whether the worker downloads the weights (``hf://``, ``s3://``) rather than reading a claim."""
    return not deployment.spec.model.uri.startswith("pvc://")


def cache_volume(deployment: LLMDeployment) -> dict[str, Any]:
    """The ``model-cache`` volume: the named PVC, a node-local ``hostPath`` or a size-limited ``emptyDir``."""
    cache = deployment.spec.model.cache
    if cache.persistent_volume_claim is not None:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.persistent_volume_claim}}
    if cache.host_path is not None:
        return {"name": "model-cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    empty: dict[str, Any] = {}
    if cache.size_limit is not None:
        empty["sizeLimit"] = str(cache.size_limit)
    else:
        limit = cache_size_limit_gib(deployment)
        if limit is not None:
            empty["sizeLimit"] = f"{limit}Gi"
    return {"name": "model-cache", "emptyDir": empty}


def _emptydir_cache_gib(deployment: LLMDeployment) -> int:
    """GiB the ``emptyDir`` cache may take from ephemeral storage (0 for a PVC, hostPath or claim model)."""
    if not uses_download_cache(deployment):
        return 0
    cache = deployment.spec.model.cache
    if cache.persistent_volume_claim is not None or cache.host_path is not None:
        return 0
    if cache.size_limit is not None:
        return 0  # an explicit limit is the user's sizing: request the base only, not a guess of its GiB
    return cache_size_limit_gib(deployment) or 0


def requests(deployment: LLMDeployment, gpus_per_pod: int, group_size: int) -> dict[str, str]:
    """CPU, memory and ephemeral-storage requests of one worker pod (explicit ``spec.resources`` wins)."""
    res = deployment.spec.resources
    out: dict[str, str] = {}
    out["cpu"] = str(res.cpu) if res.cpu is not None else str(CPU_BASE + CPU_PER_GPU * gpus_per_pod)
    if res.memory is not None:
        out["memory"] = str(res.memory)
    else:
        weights = checkpoint_bytes(deployment.spec.model)
        share = UNKNOWN_MODEL_WEIGHTS_GIB if weights is None else _gib(weights / max(1, group_size))
        out["memory"] = f"{share + MEMORY_BASE_GIB + MEMORY_PER_GPU_GIB * gpus_per_pod}Gi"
    if res.ephemeral_storage is not None:
        out["ephemeral-storage"] = str(res.ephemeral_storage)
    else:
        out["ephemeral-storage"] = f"{EPHEMERAL_BASE_GIB + _emptydir_cache_gib(deployment)}Gi"
    return out


def container_security_context(deployment: LLMDeployment) -> dict[str, Any]:
    """The worker container's ``securityContext``: no privilege escalation, ``ALL`` capabilities dropped
    (plus ``addCapabilities``), the seccomp profile, and the user from ``spec.podSecurity``."""
    sec = deployment.spec.pod_security
    caps: dict[str, Any] = {"drop": ["ALL"]}
    if sec.add_capabilities:
        caps["add"] = list(sec.add_capabilities)
    out: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": caps,
        "seccompProfile": {"type": sec.seccomp_profile},
        "runAsNonRoot": sec.run_as_non_root,
    }
    if sec.run_as_user is not None:
        out["runAsUser"] = sec.run_as_user
    if sec.run_as_group is not None:
        out["runAsGroup"] = sec.run_as_group
    return out


def pod_security_fields(deployment: LLMDeployment) -> dict[str, Any]:
    """Pod-level fields: ``securityContext`` (fsGroup, seccomp), the ServiceAccount and its token."""
    sec = deployment.spec.pod_security
    ctx: dict[str, Any] = {
        "seccompProfile": {"type": sec.seccomp_profile},
        "runAsNonRoot": sec.run_as_non_root,
    }
    if sec.fs_group is not None:
        ctx["fsGroup"] = sec.fs_group
        ctx["fsGroupChangePolicy"] = "OnRootMismatch"
    out: dict[str, Any] = {
        "securityContext": ctx,
        "automountServiceAccountToken": sec.automount_service_account_token,
    }
    if sec.service_account_name is not None:
        out["serviceAccountName"] = sec.service_account_name
    return out


def needs_home(deployment: LLMDeployment) -> bool:
    """Whether the container runs as a user other than root, so ``HOME`` must point at a writable volume."""
    return deployment.spec.pod_security.run_as_user not in (None, 0)
