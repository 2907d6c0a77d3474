"""The parts of the ``LLMDeployment`` spec that shape the worker pod itself rather than the engine:
environment variables (with ``valueFrom``), the model download cache, the pod's security settings, and the
list of vLLM flags Tidal manages (which ``spec.engine.extraArgs`` may not set).

It exists apart from :mod:`tidal.api.spec` so that module stays about *what* is served; this one is about the
pod it runs in. Every rule here is a :class:`~tidal.api.base.Rule`, enforced by the API server (CEL) and by
the models with the same message.

Pure: no Kubernetes client, no I/O.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tidal.api.base import DATA_KEY, DNS_SUBDOMAIN, ApiModel, Quantity, Rule
from tidal.api.enginefields import SETTINGS

_ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_CAPABILITY = r"^[A-Z_]+$"
Capability = Annotated[str, Field(min_length=1, max_length=64, pattern=_CAPABILITY)]

MANAGED_ENGINE_FLAGS: tuple[str, ...] = (
    "--model",
    "--served-model-name",
    "--host",
    "--port",
    "--middleware",
    *(flag for setting in SETTINGS for flag in (setting.flag, *setting.aliases)),
    "--distributed-executor-backend",
    "--dtype",
    "--quantization",
    "-q",
    "--kv-cache-dtype",
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
    "--speculative-config",
)
"""The vLLM flags Tidal sets from the spec (the worker's ``build_vllm_argv`` plus the operator's
``--speculative-config``), with vLLM's short aliases. ``extraArgs`` may not set them: vLLM takes the last
occurrence, so an extra ``--port`` or ``--tensor-parallel-size`` would silently override what Tidal
planned for (probes, Services, GPU requests, the recommendation). ``tests/unit/test_workload_api.py``
checks this list against the flags ``build_vllm_argv`` actually emits for a contract with every field set, so
a flag added to the builder cannot be forgotten here."""


def _flag_of(arg: str) -> str:
    """``--tensor_parallel_size=2`` → ``--tensor-parallel-size`` (vLLM accepts underscores and ``=``)."""
    return arg.split("=", 1)[0].replace("_", "-")


def managed_flags_in(args: list[str]) -> list[str]:
    """The arguments of ``args`` that set a managed flag, in order."""
    managed = set(MANAGED_ENGINE_FLAGS)
    return [a for a in args if _flag_of(a) in managed]


_CEL_FLAGS = "[" + ", ".join(f"'{f}'" for f in MANAGED_ENGINE_FLAGS) + "]"
_CEL_IS_MANAGED = (
    f"{_CEL_FLAGS}.exists(f, a.replace('_', '-') == f || a.replace('_', '-').startsWith(f + '='))"
)
EXTRA_ARGS_RULE = Rule(
    cel=f"!has(self.extraArgs) || !self.extraArgs.exists(a, {_CEL_IS_MANAGED})",
    message="spec.engine.extraArgs sets a flag Tidal manages (set it through its spec field instead)",
    message_expression=(
        f"'spec.engine.extraArgs sets ' + self.extraArgs.filter(a, {_CEL_IS_MANAGED})[0] + "
        "', a flag Tidal manages from the spec: set it through its spec.engine field instead'"
    ),
    check=lambda e: not managed_flags_in(list(e.extra_args)),
    explain=lambda e: (
        f"spec.engine.extraArgs sets {managed_flags_in(list(e.extra_args))[0]}, a flag Tidal manages from "
        "the spec: set it through its spec.engine field instead"
    ),
    field_path=".extraArgs",
    reason="FieldValueForbidden",
)
"""Refuses ``extraArgs`` that set a managed flag, naming it (both layers)."""


# ------------------------------------------------------------------------------------------------ env


class KeySelector(ApiModel):
    """A key of a Secret or ConfigMap in the ``LLMDeployment``'s namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the Secret or ConfigMap."""
    key: str = Field(min_length=1, max_length=253, pattern=DATA_KEY)
    """Key inside it."""
    optional: bool | None = None
    """Start the pod even when the object or key is missing (core/v1 semantics)."""


class EnvVarSource(ApiModel):
    """Where a variable's value comes from (core/v1 ``EnvVarSource``, the Secret and ConfigMap forms)."""

    __rules__ = (
        Rule(
            cel="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="spec.engine.env[].valueFrom needs exactly one of secretKeyRef and configMapKeyRef",
            check=lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
        ),
    )

    secret_key_ref: KeySelector | None = None
    """A key of a Secret: the value never appears in the ``LLMDeployment``, and the operator never reads
    it (the kubelet does)."""
    config_map_key_ref: KeySelector | None = None
    """A key of a ConfigMap."""


class EnvVar(ApiModel):
    """An environment variable for the engine container: a literal ``value`` or a ``valueFrom`` reference."""

    __rules__ = (
        Rule(
            cel="!(has(self.value) && has(self.valueFrom))",
            message="spec.engine.env[].value and spec.engine.env[].valueFrom are mutually exclusive",
            check=lambda v: v.value is None or v.value_from is None,
            field_path=".valueFrom",
            reason="FieldValueForbidden",
        ),
    )

    name: str = Field(min_length=1, max_length=256, pattern=_ENV_NAME)
    """Variable name. ``TIDAL_*`` and ``HF_TOKEN`` are set by Tidal and cannot be overridden here."""
    value: str | None = Field(default=None, max_length=4096)
    """Literal value (written in the ``LLMDeployment``: use ``valueFrom`` for secrets)."""
    value_from: EnvVarSource | None = None
    """Take the value from a Secret or ConfigMap key."""

    def to_k8s(self) -> dict[str, object]:
        """The core/v1 ``EnvVar``."""
        if self.value_from is not None:
            return {"name": self.name, "valueFrom": self.value_from.to_dict()}
        return {"name": self.name, "value": self.value or ""}


# ------------------------------------------------------------------------------------------ model cache


class ModelCache(ApiModel):
    """Where downloaded (``hf://``, ``s3://``) weights are kept. By default a size-limited ``emptyDir``, which
    lives as long as the pod: every new replica downloads the weights again. A ``persistentVolumeClaim`` or
    a ``hostPath`` outlives the pod, so a replica that starts where the weights already are loads them
    from disk instead."""

    __rules__ = (
        Rule(
            cel="!(has(self.persistentVolumeClaim) && has(self.hostPath))",
            message="spec.model.cache.persistentVolumeClaim and spec.model.cache.hostPath are mutually "
            "exclusive",
            check=lambda c: c.persistent_volume_claim is None or c.host_path is None,
            field_path=".hostPath",
            reason="FieldValueForbidden",
        ),
    )

    persistent_volume_claim: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN
    )
    """A PersistentVolumeClaim in the namespace, mounted read-write at the cache directory and shared by
    every worker pod of the deployment. With more than one node it must be ``ReadWriteMany`` (e.g. NFS,
    CephFS, a cloud file store); the Hugging Face downloader locks files, so concurrent starts share one
    download."""
    host_path: str | None = Field(default=None, min_length=2, max_length=512, pattern=r"^/[^\s]*$")
    """A directory on each node (``hostPath``, created if missing) used as a node-local cache: a replica that
    lands on a node that served the model before skips the download. It must be writable by
    ``spec.podSecurity.runAsUser`` (the kubelet creates it owned by root; pre-create it with that owner).
    Pod Security ``baseline`` and ``restricted`` forbid ``hostPath``: use it only in a namespace that
    allows it (``privileged``)."""
    size_limit: Quantity | None = None
    """``sizeLimit`` of the default ``emptyDir`` cache. Unset: twice the checkpoint's size plus 5 GiB when
    the recommender knows the model (a Hub repository often holds a second copy of the weights, such as
    Meta's ``original/`` files, and the whole snapshot is downloaded), else no limit. A pod whose cache
    outgrows it is evicted by the kubelet."""


# ------------------------------------------------------------------------------------------ pod security

Seccomp = Literal["RuntimeDefault", "Unconfined"]


class PodSecurity(ApiModel):
    """The worker pod's security settings. The defaults pass Pod Security ``restricted``: no privilege
    escalation, every capability dropped, the runtime's default seccomp profile, a non-root user and no
    ServiceAccount token (nothing in the worker, Ray included, calls the Kubernetes API)."""

    __rules__ = (
        Rule(
            cel="!self.runAsNonRoot || !has(self.runAsUser) || self.runAsUser != 0",
            message="spec.podSecurity.runAsUser must not be 0 while spec.podSecurity.runAsNonRoot is true",
            check=lambda p: not p.run_as_non_root or p.run_as_user != 0,
            field_path=".runAsUser",
        ),
    )

    run_as_non_root: bool = True
    """Refuse to start the container as root (``runAsNonRoot``). The stock ``vllm/vllm-openai`` image (and
    the Tidal worker image built on it) declares no user, i.e. root, so this needs ``runAsUser``; set
    ``runAsNonRoot: false`` and ``runAsUser: 0`` to run an image that only works as root."""
    run_as_user: int | None = Field(default=1000, ge=0, le=2147483647)
    """UID the container runs as. The default 1000 lets the root-declaring vLLM image run as non-root:
    its Python packages are world-readable, ``HOME`` is set to a writable ``emptyDir`` (vLLM, Triton and
    torch.compile write caches there) and the model cache is writable through ``fsGroup``."""
    run_as_group: int | None = Field(default=1000, ge=0, le=2147483647)
    """Primary GID of the container."""
    fs_group: int | None = Field(default=1000, ge=0, le=2147483647)
    """Group that owns the pod's volumes (the model cache PVC becomes writable for ``runAsUser``)."""
    seccomp_profile: Seccomp = "RuntimeDefault"
    """Seccomp profile (``restricted`` needs ``RuntimeDefault``)."""
    add_capabilities: list[Capability] = Field(default_factory=list, max_length=16)
    """Capabilities added after dropping ``ALL``, e.g. ``IPC_LOCK`` for RDMA (InfiniBand) NCCL transports
    across nodes. Anything but ``NET_BIND_SERVICE`` takes the pod out of Pod Security ``restricted``."""
    automount_service_account_token: bool = False
    """Mount the ServiceAccount token. Off: the worker and Ray never call the Kubernetes API."""
    service_account_name: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN
    )
    """ServiceAccount of the worker pods (the namespace's ``default`` when unset)."""
