"""The Helm chart (helm/tidal), rendered offline by a real Helm v4 engine (PyPI ``helm-python-sdk``).

Lint is clean; the chart renders with the defaults and with the optional parts on; every rendered
manifest of a built-in kind validates against the Kubernetes 1.34 OpenAPI schemas (``kubernetes-validate``,
strict: unknown fields fail), the prometheus-operator and kopf kinds are checked by shape; the ClusterRole
carries exactly the rules of ``files/operator-rbac-rules.yaml`` and the chart's CRDs are exactly ``crds/``
and ``tidal.shell.peering``; the operator pod is locked down; ``values.schema.json`` refuses bad values; the
container command really gives every pod a distinct peering priority that ``tidal run`` accepts.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tidal.cli import build_parser
from tidal.shell.peering import PEERING_CRDS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tidal"
KUBE_VERSION = "1.34.0"
RELEASE = "tidal"
NAMESPACE = "tidal-system"

ALL_ON: dict[str, Any] = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True, "namespace": "monitoring"},
    }
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-on": ALL_ON,
    "namespaced": {
        "operator": {
            "watchNamespaces": ["team-a", "team-b"],
            "verbose": True,
            "extraArgs": ["--kubeconfig="],
        },
        "image": {"digest": "sha256:" + "a" * 64},
        **ALL_ON,
    },
    "standalone": {
        "replicaCount": 1,
        "operator": {"peering": {"enabled": False, "name": "tidal", "priority": "auto"}},
        "metrics": {"service": {"enabled": False}, "dashboard": {"enabled": False}},
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing-sa"},
    },
    "gpu-catalog-and-hub": {
        "gpuCatalog": {
            "gpus": [
                {
                    "name": "RTX-PRO-6000",
                    "memory_gib": 95.0,
                    "bandwidth_tbps": 1.79,
                    "bf16_tflops": 500,
                    "product_labels": ["NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"],
                }
            ]
        },
        "hub": {"endpoint": "https://hub.example.com", "tokenSecret": {"name": "hf-token", "key": "token"}},
    },
    "fixed-priority": {
        "replicaCount": 1,
        "operator": {"peering": {"enabled": True, "name": "p", "priority": 7}},
    },
    "prometheus-tls": {
        "operator": {
            "prometheus": {
                "allow": ["https://thanos.monitoring.svc:10902/prom", "http://prom.example:9090"],
                "caBundle": {"configMap": "monitoring-ca", "key": "bundle.pem"},
            }
        }
    },
}

# Kinds kubernetes-validate has no schema for: checked by shape below.
SHAPE_CHECKED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("kopf.dev/v1", "ClusterKopfPeering"),
    ("kopf.dev/v1", "KopfPeering"),
}


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


# --- lint and render -------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_lint_is_clean(values_name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[values_name], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings (2) and errors (3) must not appear.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_manifest_validates_for_kubernetes_1_34(chart: helm.Chart, values_name: str) -> None:
    docs = manifests(render(chart, VALUE_SETS[values_name]))
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in SHAPE_CHECKED:
            check_shape(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        name: str = doc["metadata"]["name"]
        assert len(name) <= 63 or doc["kind"] in {"ClusterRole", "ClusterRoleBinding", "ConfigMap"}
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"], doc["kind"]


def check_shape(doc: dict[str, Any]) -> None:
    """What the prometheus-operator / kopf CRDs would require, checked without their schemas."""
    kind = doc["kind"]
    meta = doc["metadata"]
    assert meta["name"] and set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, kind
    if kind in {"ClusterKopfPeering", "KopfPeering"}:
        assert "spec" not in doc
        assert ("namespace" in meta) == (kind == "KopfPeering")
        return
    spec = doc["spec"]
    if kind == "ServiceMonitor":
        assert set(spec) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}
        assert spec["selector"]["matchLabels"]
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels"}
            assert isinstance(ep["port"], str) and ep["path"].startswith("/")
    elif kind == "PodMonitor":
        assert set(spec) <= {"namespaceSelector", "selector", "podTargetLabels", "podMetricsEndpoints"}
        assert spec["selector"]["matchLabels"]["app.kubernetes.io/name"] == "tidal-worker"
        for ep in spec["podMetricsEndpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"}
    elif kind == "PrometheusRule":
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule)
                assert isinstance(rule["expr"], str) and rule["expr"].strip()
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
    else:  # pragma: no cover - SHAPE_CHECKED and this function must list the same kinds
        pytest.fail(f"no shape check for {kind}")


def test_default_render_has_the_expected_objects(chart: helm.Chart) -> None:
    docs = manifests(render(chart, {}))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ConfigMap",
            "ClusterKopfPeering",
        ]
    )
    # The optional monitoring objects are off by default (they need prometheus-operator's CRDs).
    all_on = manifests(render(chart, ALL_ON))
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= {d["kind"] for d in all_on}


def test_notes_render(chart: helm.Chart) -> None:
    notes = render(chart, {})[f"{RELEASE}/templates/NOTES.txt"]
    assert "kubectl -n tidal-system rollout status deployment/tidal" in notes
    assert "all namespaces" in notes


# --- single sources: RBAC rules, CRDs, alerts, dashboard -------------------------------------------


def test_cluster_role_rules_are_exactly_the_rules_file(chart: helm.Chart) -> None:
    rules = yaml.safe_load((CHART / "files" / "operator-rbac-rules.yaml").read_text())
    assert isinstance(rules, list) and rules
    docs = manifests(render(chart, {}))
    role = one(docs, "ClusterRole")
    assert role["rules"] == rules
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    # No access to Secrets, whatever the rules file grows into.
    assert all("secrets" not in r["resources"] for r in role["rules"])


def test_chart_crd_is_the_generated_crd(chart: helm.Chart) -> None:
    crds = {c["name"]: c["data"] for c in chart.crds}
    generated = (ROOT / "crds" / "llmdeployments.tidal.dev.yaml").read_text()
    assert crds["crds/llmdeployments.tidal.dev.yaml"] == generated, "run `make chart-crds`"


def test_chart_kopf_peering_crds_are_the_operators(chart: helm.Chart) -> None:
    crds = {c["name"]: c["data"] for c in chart.crds}
    assert set(crds) == {"crds/llmdeployments.tidal.dev.yaml", "crds/kopf-peering.yaml"}
    docs = [d for d in yaml.safe_load_all(crds["crds/kopf-peering.yaml"]) if d]
    assert docs == PEERING_CRDS
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_peering_object_matches_the_operator_scope(chart: helm.Chart) -> None:
    cluster = one(manifests(render(chart, {})), "ClusterKopfPeering")
    assert cluster["metadata"]["name"] == "tidal"
    namespaced = manifests(render(chart, VALUE_SETS["namespaced"]))
    assert by_kind(namespaced, "ClusterKopfPeering") == []
    assert sorted(p["metadata"]["namespace"] for p in by_kind(namespaced, "KopfPeering")) == [
        "team-a",
        "team-b",
    ]
    standalone = manifests(render(chart, VALUE_SETS["standalone"]))
    assert not by_kind(standalone, "ClusterKopfPeering") and not by_kind(standalone, "KopfPeering")


def test_prometheus_rule_is_the_alerts_file(chart: helm.Chart) -> None:
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    rule = one(manifests(render(chart, ALL_ON)), "PrometheusRule")
    assert rule["spec"] == alerts
    names = {r.get("alert") for g in alerts["groups"] for r in g["rules"]}
    for required in (
        "TidalTTFTBudgetBurnFast",
        "TidalTPOTBudgetBurnFast",
        "TidalMetricsStale",
        "TidalInsufficientGPU",
        "TidalReplicaDegraded",
        "TidalOperatorDown",
    ):
        assert required in names


def test_dashboard_configmap_is_the_dashboard_file(chart: helm.Chart) -> None:
    cm = one(manifests(render(chart, ALL_ON)), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    embedded = json.loads(cm["data"]["tidal.json"])
    assert embedded == json.loads((CHART / "files" / "dashboard.json").read_text())


def test_monitors_select_the_operator_and_the_workers(chart: helm.Chart) -> None:
    docs = manifests(render(chart, ALL_ON))
    service = one(docs, "Service")
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The alerts match job=~".*tidal-operator.*": the ServiceMonitor takes the job from this Service label.
    assert service["metadata"]["labels"][sm["spec"]["jobLabel"]] == "tidal-operator"
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    container = operator_container(docs)
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "tidal-worker",
        "tidal.dev/serving": "true",
    }
    assert "tidal.dev/deployment" in pm["spec"]["podTargetLabels"]
    # The worker's port name and metrics path, as the pod builder writes them.
    from tidal.builders.pods import PORT_NAME

    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == PORT_NAME
    ns = one(manifests(render(chart, VALUE_SETS["namespaced"])), "PodMonitor")["spec"]["namespaceSelector"]
    assert ns == {"matchNames": ["team-a", "team-b"]}


# --- the operator pod ------------------------------------------------------------------------------


def test_operator_pod_is_locked_down(chart: helm.Chart) -> None:
    docs = manifests(render(chart, {}))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = operator_container(docs)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def test_operator_probes_hit_kopf_health_endpoint(chart: helm.Chart) -> None:
    c = operator_container(manifests(render(chart, {})))
    health = next(p for p in c["ports"] if p["name"] == "health")
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert f"--liveness=http://0.0.0.0:{health['containerPort']}/healthz" in c["args"]


def test_replicas_and_leader_election(chart: helm.Chart) -> None:
    docs = manifests(render(chart, {}))
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    c = operator_container(docs)
    assert "--peering=tidal" in c["args"] and "--standalone" not in c["args"]
    standalone = operator_container(manifests(render(chart, VALUE_SETS["standalone"])))
    assert "--standalone" in standalone["args"] and standalone["command"] == ["tidal"]
    assert by_kind(manifests(render(chart, VALUE_SETS["standalone"])), "PodDisruptionBudget") == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"replicaCount": 2, "operator": {"peering": {"enabled": False, "name": "t", "priority": "auto"}}},
            "needs operator.peering.enabled",
        ),
        (
            {"replicaCount": 2, "operator": {"peering": {"enabled": True, "name": "t", "priority": 3}}},
            'must be "auto"',
        ),
        ({"operator": {"healthPort": 9090, "metricsPort": 9090}}, "must differ"),
        (
            {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
            "needs metrics.service.enabled",
        ),
    ],
)
def test_render_refuses_inconsistent_values(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(chart, values)


@pytest.fixture
def fake_tidal(tmp_path: Path) -> Iterator[Path]:
    """A ``tidal`` on PATH that prints its arguments as JSON, so the container command can run for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tidal"
    printer = "import json, sys; print(json.dumps(sys.argv[1:]))"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c '{printer}' \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    yield bin_dir


def run_container_command(container: dict[str, Any], env: dict[str, str], bin_dir: Path) -> list[str]:
    argv = [*container["command"], *container["args"]]
    proc = subprocess.run(
        argv,
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 0, f"{shlex.join(argv)}: {proc.stderr}"
    result: list[str] = json.loads(proc.stdout)
    return result


def test_each_pod_gets_its_own_peering_priority(chart: helm.Chart, fake_tidal: Path) -> None:
    """kopf pauses every operator that shares the top priority: two replicas must never share one."""
    c = operator_container(manifests(render(chart, {})))
    assert {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}} in c["env"]
    uids = ["0a1b2c3d-0000-4000-8000-000000000001", "ffee0011-0000-4000-8000-000000000002"]
    priorities = []
    for uid in uids:
        argv = run_container_command(c, {"POD_UID": uid}, fake_tidal)
        args = build_parser().parse_args(argv)  # what `tidal run` really accepts
        assert args.command == "run" and args.peering == "tidal" and not args.standalone
        assert args.metrics_port == 9090 and args.liveness == "http://0.0.0.0:8080/healthz"
        priorities.append(args.priority)
    assert priorities == [int(u.split("-")[0], 16) for u in uids]
    assert priorities[0] != priorities[1]


def test_namespaced_and_fixed_priority_args_parse(chart: helm.Chart, fake_tidal: Path) -> None:
    c = operator_container(manifests(render(chart, VALUE_SETS["namespaced"])))
    args = build_parser().parse_args(run_container_command(c, {"POD_UID": "12345678-aaaa"}, fake_tidal))
    assert args.namespace == ["team-a", "team-b"] and args.verbose and args.priority == 0x12345678
    assert c["image"] == "ghcr.io/tidal-dev/tidal-operator@sha256:" + "a" * 64
    fixed = operator_container(manifests(render(chart, VALUE_SETS["fixed-priority"])))
    assert fixed["command"] == ["tidal"]
    args = build_parser().parse_args(fixed["args"])
    assert args.priority == 7 and args.peering == "p"


def test_prometheus_allowlist_and_ca_bundle_reach_tidal_run(chart: helm.Chart) -> None:
    default = operator_container(manifests(render(chart, {})))
    args = build_parser().parse_args(default["args"])
    assert args.prometheus_allow == ["http://prometheus-operated.monitoring.svc:9090"]
    assert args.prometheus_ca_bundle is None
    docs = manifests(render(chart, VALUE_SETS["prometheus-tls"]))
    c = operator_container(docs)
    args = build_parser().parse_args(c["args"])
    assert args.prometheus_allow == ["https://thanos.monitoring.svc:10902/prom", "http://prom.example:9090"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "prometheus-ca")
    assert args.prometheus_ca_bundle == f"{mount['mountPath']}/bundle.pem" and mount["readOnly"] is True
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    ca = next(v for v in volumes if v["name"] == "prometheus-ca")
    items = [{"key": "bundle.pem", "path": "bundle.pem"}]
    assert ca["configMap"] == {"name": "monitoring-ca", "items": items}


# --- values.schema.json ----------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_schema_accepts_good_values(chart: helm.Chart, values_name: str) -> None:
    chart.validate_schema(chart.merge_values(VALUE_SETS[values_name]))


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": "two"},
        {"replicaCount": -1},
        {"replicaCount": 1.5},
        {"replicas": 2},
        {"image": {"pullPolicy": "Sometimes"}},
        {"image": {"tag": "bad tag"}},
        {"image": {"digest": "md5:abc"}},
        {"image": {"registry": "x"}},
        {"operator": {"metricsPort": 0}},
        {"operator": {"healthPort": 70000}},
        {"operator": {"peering": {"priority": "high"}}},
        {"operator": {"peering": {"priority": -3}}},
        {"operator": {"watchNamespaces": ["Not_A_Namespace"]}},
        {"operator": {"watchNamespaces": ["a", "a"]}},
        {"operator": {"logLevel": "debug"}},
        {"resources": {"requests": {"cpu": "lots"}}},
        {"resources": {"requests": {"gpu": 1}}},
        {"metrics": {"service": {"type": "ExternalName"}}},
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        {"metrics": {"podMonitor": {"path": "metrics"}}},
        {"metrics": {"grafana": {}}},
        {"podDisruptionBudget": {"enabled": "yes"}},
        {"operator": {"prometheus": {"allow": ["prometheus:9090"]}}},
        {"operator": {"prometheus": {"allow": []}}},
        {"operator": {"prometheus": {"allow": ["http://user:pw@prom:9090"]}}},
        {"operator": {"prometheus": {"caBundle": {"configMap": "ca", "key": "a/b"}}}},
        {"operator": {"prometheus": {"insecureSkipVerify": True}}},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")),
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))
    # Helm refuses them at render (install/upgrade/template) time too.
    with pytest.raises(helm.HelmError):
        render(chart, values)


def test_defaults_document_every_schema_key() -> None:
    """values.yaml and values.schema.json describe the same tree (no undocumented or unvalidated key)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], val: Any, path: str) -> None:
        if node.get("type") != "object" or "properties" not in node:
            return
        assert node.get("additionalProperties") is False, path
        if not isinstance(val, dict):
            return
        assert set(val) <= set(node["properties"]), f"{path}: keys missing from the schema"
        for key, sub in node["properties"].items():
            if sub.get("type") == "object" and "properties" in sub:
                assert key in val, f"{path}.{key}: in the schema but not in values.yaml"
            walk(sub, val.get(key), f"{path}.{key}")

    walk(schema, values, "values")
