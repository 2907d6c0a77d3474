# ruff: noqa: E501  (a table reads best one case per line)
"""A table of malformed ``LLMDeployment`` documents, shared by two tiers.

``tests/unit/test_api_malformed.py`` checks that the pydantic models reject each one, and
``tests/controlplane/test_crd.py`` that the real kube-apiserver with the generated CRD rejects it too. Each
row is ``(id, document, field)`` where ``field`` is a substring both layers' error messages contain — the
field's path (``spec.engine.tensorParallelSize``) or, for an unknown field, its name. Every case starts from
one valid document and breaks exactly one thing, so the rejection can only come from that thing.
"""

from __future__ import annotations

import copy
from typing import Any

VALID: dict[str, Any] = {
    "apiVersion": "tidal.dev/v1alpha1",
    "kind": "LLMDeployment",
    "metadata": {"name": "malformed"},
    "spec": {
        "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "engine": {"tensorParallelSize": 1},
        "resources": {"gpuType": "H100-80GB", "gpusPerNode": 8},
        "replicas": 1,
        "minReplicas": 1,
        "maxReplicas": 4,
    },
}
"""The valid document every case breaks."""

_DELETE = object()


def _with(changes: dict[str, Any]) -> dict[str, Any]:
    """``VALID`` with ``changes`` applied: keys are dotted paths under the document; ``_DELETE`` removes."""
    doc = copy.deepcopy(VALID)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return doc


def _case(case_id: str, field: str, changes: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    return (case_id, _with(changes), field)


MALFORMED_CASES: list[tuple[str, dict[str, Any], str]] = [
    # --- replica bounds
    _case("replicas-wrong-type", "spec.replicas", {"spec.replicas": "3"}),
    _case("replicas-negative", "spec.replicas", {"spec.replicas": -1}),
    _case("min-replicas-negative", "spec.minReplicas", {"spec.minReplicas": -1}),
    _case("max-replicas-zero", "spec.maxReplicas", {"spec.maxReplicas": 0}),
    _case("min-above-max", "spec.minReplicas", {"spec.minReplicas": 3, "spec.maxReplicas": 2, "spec.replicas": 2}),
    _case("replicas-above-max", "spec.replicas", {"spec.replicas": 5}),
    _case("replicas-below-min", "spec.replicas", {"spec.minReplicas": 2, "spec.replicas": 1}),
    _case("max-replicas-float", "spec.maxReplicas", {"spec.maxReplicas": 2.5}),
    _case("min-replicas-zero-with-autoscaling", "nothing holds requests while a deployment scales up from zero", {"spec.minReplicas": 0, "spec.replicas": 0, "spec.autoscaling": {"enabled": True}}),
    # --- GPU memory fraction
    _case("gpu-memory-zero", "spec.engine.gpuMemoryUtilization", {"spec.engine.gpuMemoryUtilization": "0"}),
    _case("gpu-memory-above-one", "spec.engine.gpuMemoryUtilization", {"spec.engine.gpuMemoryUtilization": "1.5"}),
    _case("gpu-memory-negative", "spec.engine.gpuMemoryUtilization", {"spec.engine.gpuMemoryUtilization": "-0.5"}),
    _case("gpu-memory-word", "spec.engine.gpuMemoryUtilization", {"spec.engine.gpuMemoryUtilization": "most"}),
    _case("gpu-memory-number", "spec.engine.gpuMemoryUtilization", {"spec.engine.gpuMemoryUtilization": 0.9}),
    # --- parallelism
    _case("tp-not-dividing-gpus", "spec.engine.tensorParallelSize", {"spec.engine.tensorParallelSize": 3}),
    _case("tp-above-gpus-per-node", "spec.engine.tensorParallelSize", {"spec.engine.tensorParallelSize": 16}),
    _case(
        "multinode-tp-below-node",
        "spec.engine.tensorParallelSize",
        {"spec.engine.tensorParallelSize": 4, "spec.engine.pipelineParallelSize": 4},
    ),
    _case("tp-zero", "spec.engine.tensorParallelSize", {"spec.engine.tensorParallelSize": 0}),
    _case("tp-not-auto-string", "spec.engine.tensorParallelSize", {"spec.engine.tensorParallelSize": "four"}),
    _case("tp-numeric-string", "spec.engine.tensorParallelSize", {"spec.engine.tensorParallelSize": "2"}),
    _case("pp-float", "spec.engine.pipelineParallelSize", {"spec.engine.pipelineParallelSize": 2.5}),
    _case("max-num-seqs-negative", "spec.engine.maxNumSeqs", {"spec.engine.maxNumSeqs": -5}),
    _case("max-model-len-automatic", "spec.engine.maxModelLen", {"spec.engine.maxModelLen": "automatic"}),
    _case("gpus-per-node-zero", "spec.resources.gpusPerNode", {"spec.resources.gpusPerNode": 0}),
    _case("gpus-per-node-too-many", "spec.resources.gpusPerNode", {"spec.resources.gpusPerNode": 32}),
    # --- enums
    _case("dtype-unknown", "spec.engine.dtype", {"spec.engine.dtype": "int8"}),
    _case("quantization-unknown", "spec.engine.quantization", {"spec.engine.quantization": "int4"}),
    _case("kv-cache-dtype-unknown", "spec.engine.kvCacheDtype", {"spec.engine.kvCacheDtype": "fp4"}),
    _case("recommendation-mode-unknown", "spec.recommendation.mode", {"spec.recommendation.mode": "Auto"}),
    _case(
        "speculative-method-unknown",
        "spec.engine.speculativeDecoding.method",
        {"spec.engine.speculativeDecoding": {"method": "medusa"}},
    ),
    _case(
        "toleration-operator-unknown",
        "spec.resources.tolerations[0].operator",
        {"spec.resources.tolerations": [{"key": "nvidia.com/gpu", "operator": "Maybe"}]},
    ),
    # --- speculative decoding
    _case(
        "speculative-draft-model-missing",
        "spec.engine.speculativeDecoding.draftModel",
        {"spec.engine.speculativeDecoding": {"method": "draft_model", "numSpeculativeTokens": 4}},
    ),
    _case(
        "speculative-draft-model-with-ngram",
        "spec.engine.speculativeDecoding.draftModel",
        {"spec.engine.speculativeDecoding": {"method": "ngram", "draftModel": "hf://meta-llama/Llama-3.2-1B"}},
    ),
    _case(
        "speculative-tokens-too-many",
        "spec.engine.speculativeDecoding.numSpeculativeTokens",
        {"spec.engine.speculativeDecoding": {"method": "ngram", "numSpeculativeTokens": 17}},
    ),
    # --- model source
    _case("model-uri-missing", "spec.model.uri", {"spec.model": {"servedModelName": "llama"}}),
    _case("model-uri-https", "spec.model.uri", {"spec.model.uri": "https://huggingface.co/meta-llama/Llama-3.1-8B"}),
    _case("model-uri-hf-no-org", "spec.model.uri", {"spec.model.uri": "hf://Llama-3.1-8B"}),
    _case("model-uri-s3-bad-bucket", "spec.model.uri", {"spec.model.uri": "s3://My_Bucket/models"}),
    _case("model-uri-pvc-uppercase-claim", "spec.model.uri", {"spec.model.uri": "pvc://Models/llama"}),
    _case(
        "token-secret-with-pvc",
        "spec.model.tokenSecretRef",
        {"spec.model.uri": "pvc://models/llama", "spec.model.tokenSecretRef": {"name": "hf-token"}},
    ),
    _case("token-secret-without-name", "spec.model.tokenSecretRef.name", {"spec.model.tokenSecretRef": {"key": "t"}}),
    _case("architecture-empty", "spec.model.architecture", {"spec.model.architecture": {"headDim": 128}}),
    # --- worker pod (tidal.api.workload)
    _case("extra-args-port", "spec.engine.extraArgs sets --port", {"spec.engine.extraArgs": ["--enforce-eager", "--port", "9000"]}),
    _case("extra-args-tp-equals", "spec.engine.extraArgs sets --tensor-parallel-size=4", {"spec.engine.extraArgs": ["--tensor-parallel-size=4"]}),
    _case("extra-args-tp-underscore", "spec.engine.extraArgs sets --pipeline_parallel_size", {"spec.engine.extraArgs": ["--pipeline_parallel_size", "2"]}),
    _case("extra-args-served-name", "spec.engine.extraArgs sets --served-model-name", {"spec.engine.extraArgs": ["--served-model-name", "x"]}),
    _case("env-value-and-value-from", "spec.engine.env[].valueFrom are mutually exclusive", {"spec.engine.env": [{"name": "K", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
    _case("env-value-from-empty", "exactly one of secretKeyRef and configMapKeyRef", {"spec.engine.env": [{"name": "K", "valueFrom": {}}]}),
    _case("env-value-from-secret-no-key", "key", {"spec.engine.env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}),
    _case("cache-pvc-and-hostpath", "spec.model.cache.hostPath are mutually exclusive", {"spec.model.cache": {"persistentVolumeClaim": "c", "hostPath": "/var/cache"}}),
    _case("cache-hostpath-relative", "hostPath", {"spec.model.cache": {"hostPath": "cache"}}),
    _case("cache-with-pvc-model", "spec.model.cache is only used with hf://", {"spec.model.uri": "pvc://weights/m", "spec.model.cache": {"persistentVolumeClaim": "c"}}),
    _case("cache-size-limit-negative", "sizeLimit", {"spec.model.cache": {"sizeLimit": "-1Gi"}}),
    _case("pod-security-root-user-non-root", "spec.podSecurity.runAsUser must not be 0", {"spec.podSecurity": {"runAsUser": 0}}),
    _case("pod-security-seccomp-unknown", "seccompProfile", {"spec.podSecurity": {"seccompProfile": "Localhost"}}),
    _case("pod-security-capability-lowercase", "addCapabilities", {"spec.podSecurity": {"addCapabilities": ["net_admin"]}}),
    _case("resources-ephemeral-storage-bad", "ephemeralStorage", {"spec.resources": {"ephemeralStorage": "lots"}}),
    _case("quantization-conflicts-with-checkpoint", "spec.engine.quantization conflicts", {"spec.model.architecture": {"catalogName": "Llama-3.1-8B", "quantization": "fbgemm_fp8"}, "spec.engine.quantization": "fp8"}),
    # --- unknown fields
    _case("unknown-spec-field", "spec.gpuCount", {"spec.gpuCount": 8}),
    _case("unknown-engine-field", "spec.engine.tpSize", {"spec.engine.tpSize": 2}),
    _case("unknown-top-level-field", "replicaCount", {"replicaCount": 2}),
    # --- resources and quantities
    _case("shm-size-bad-quantity", "spec.resources.shmSize", {"spec.resources.shmSize": "16 GB"}),
    _case("shm-size-negative", "spec.resources.shmSize", {"spec.resources.shmSize": "-1Gi"}),
    _case("memory-request-bad-quantity", "spec.resources.memory", {"spec.resources.memory": "lots"}),
    _case("node-selector-non-string", "spec.resources.nodeSelector", {"spec.resources.nodeSelector": {"pool": 1}}),
    _case("env-name-invalid", "spec.engine.env[0].name", {"spec.engine.env": [{"name": "1 BAD", "value": "x"}]}),
    _case("extra-args-not-a-list", "spec.engine.extraArgs", {"spec.engine.extraArgs": "--enforce-eager"}),
    # --- autoscaling
    _case("kv-target-above-one", "spec.autoscaling.targets.kvCacheUsage", {"spec.autoscaling.targets": {"kvCacheUsage": 1.5}}),
    _case("ttft-target-negative", "spec.autoscaling.targets.ttftP95Seconds", {"spec.autoscaling.targets": {"ttftP95Seconds": -1}}),
    _case("autoscaling-enabled-string", "spec.autoscaling.enabled", {"spec.autoscaling": {"enabled": "yes"}}),
    _case("headroom-max-below-one", "spec.autoscaling.headroomMax", {"spec.autoscaling": {"headroomMax": 0.5}}),
    _case("headroom-prior-above-max", "spec.autoscaling.headroomPrior must not exceed spec.autoscaling.headroomMax", {"spec.autoscaling": {"headroomPrior": 3, "headroomMax": 2}}),
    _case("headroom-prior-above-default-max", "spec.autoscaling.headroomPrior", {"spec.autoscaling": {"headroomPrior": 12}}),
    _case("prometheus-url-no-scheme", "spec.autoscaling.prometheus.url", {"spec.autoscaling": {"prometheus": {"url": "prometheus:9090"}}}),
    _case("expected-input-tokens-zero", "spec.recommendation.expectedInputTokens", {"spec.recommendation": {"expectedInputTokens": 0}}),
]  # fmt: skip
"""Every row: ``(id, full LLMDeployment document, substring naming the offending field)``."""
