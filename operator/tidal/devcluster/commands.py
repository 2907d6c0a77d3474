"""The command line of each control-plane component: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK, with the flags that make them one small secure cluster on loopback.

It exists apart from :mod:`tidal.devcluster.cluster` so the flags, which change with Kubernetes releases,
read in one place and the cluster class stays about starting, waiting and stopping. Pure: it builds lists of
strings and starts nothing.
"""

from __future__ import annotations

from pathlib import Path

from tidal.devcluster.nodes import KWOK_ANNOTATION, KWOK_ANNOTATION_VALUE
from tidal.devcluster.pki import ClusterPKI

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
"""Room for ~65,000 ClusterIPs: each LLMDeployment has Services (the 1,000-deployment bench needs them)."""
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


def etcd_argv(bin_dir: Path, work_dir: Path, client_port: int, peer_port: int, no_fsync: bool) -> list[str]:
    """A single-member etcd on loopback, its data under ``work_dir/etcd-data``."""
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    argv = [
        str(bin_dir / "etcd"),
        "--name=devcluster",
        f"--data-dir={work_dir / 'etcd-data'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=devcluster={peer_url}",
        "--log-level=warn",
    ]
    if no_fsync:
        argv.append("--unsafe-no-fsync")
    return argv


def apiserver_argv(
    bin_dir: Path, work_dir: Path, api_port: int, etcd_port: int, pki: ClusterPKI
) -> list[str]:
    """kube-apiserver with X.509 and service-account authentication, Node and RBAC authorization and
    NodeRestriction admission."""
    return [
        str(bin_dir / "kube"),
        "apiserver",
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}",
        f"--cert-dir={work_dir / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving.cert}",
        f"--tls-private-key-file={pki.serving.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        # The `kubernetes` Endpoints may not point at loopback, and nothing in-cluster needs it.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        # Real kubelet nodes (tidal.devcluster.realnode), for logs, exec and port-forward: dial the node IP
        # (node names do not resolve) with the admin certificate (those kubelets trust the cluster CA).
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={pki.clients['admin'].cert}",
        f"--kubelet-client-key={pki.clients['admin'].key}",
        "--profiling=false",
        "--v=1",
    ]


def _kube_component(bin_dir: Path, name: str, kubeconfig: Path, port: int) -> list[str]:
    """The flags the controller manager and the scheduler share: one kubeconfig for the API server and
    for delegated authentication and authorization, a loopback secure port, no leader election."""
    return [
        str(bin_dir / "kube"),
        name,
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
    ]


def controller_manager_argv(bin_dir: Path, kubeconfig: Path, pki: ClusterPKI, port: int) -> list[str]:
    """kube-controller-manager with per-controller ServiceAccounts, signing with the cluster CA."""
    return [
        *_kube_component(bin_dir, "controller-manager", kubeconfig, port),
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca.cert}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--v=1",
    ]


def scheduler_argv(bin_dir: Path, kubeconfig: Path, port: int) -> list[str]:
    """kube-scheduler, the only one (no leader election)."""
    return [*_kube_component(bin_dir, "scheduler", kubeconfig, port), "--v=1"]


def kwok_argv(bin_dir: Path, kubeconfig: Path) -> list[str]:
    """KWOK, managing only the nodes annotated as fake (the GPU nodes :mod:`tidal.devcluster.nodes` makes)."""
    return [
        str(bin_dir / "kwok"),
        f"--kubeconfig={kubeconfig}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
        "--node-ip=10.244.0.1",
        "--cidr=10.244.0.0/16",
        "--node-lease-duration-seconds=40",
    ]
