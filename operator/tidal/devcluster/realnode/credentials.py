"""A real node's kubelet credentials: a client certificate the cluster signs through a CSR.

Why this exists: the kubelet authenticates as `system:node:<name>` so that the Node authorizer and
NodeRestriction apply to it as on a real cluster; the key is made here, the certificate comes from a
CertificateSigningRequest this module creates and approves with the admin kubeconfig, and both go into the
kubelet's own kubeconfig. Apart from :class:`~tidal.devcluster.realnode.RealNode`, whose life cycle does not
depend on how the credentials are obtained.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tidal.devcluster.realnode.prereqs import NodeStartError


def node_certificate(api: Any, node_name: str, csr_pem: bytes) -> bytes:
    """Have the cluster sign the node's client certificate: create, approve and read a CSR."""
    from kubernetes import client as k8s_client
    from kubernetes.client.exceptions import ApiException

    certs: Any = k8s_client.CertificatesV1Api(api)
    name = f"tidal-node-{node_name}-{uuid.uuid4().hex[:6]}"
    certs.create_certificate_signing_request(
        {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {
                "request": base64.b64encode(csr_pem).decode(),
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["digital signature", "client auth"],
            },
        }
    )
    try:
        for attempt in range(20):  # the controller-manager may update the CSR between read and write
            csr = certs.read_certificate_signing_request(name)
            csr.status.conditions = [
                k8s_client.V1CertificateSigningRequestCondition(
                    type="Approved", status="True", reason="TidalDevCluster", message="dev-cluster node"
                )
            ]
            try:
                certs.replace_certificate_signing_request_approval(name, csr)
                break
            except ApiException as exc:
                if exc.status != 409 or attempt == 19:
                    raise
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            csr = certs.read_certificate_signing_request(name)
            if csr.status and csr.status.certificate:
                return base64.b64decode(csr.status.certificate)
            time.sleep(0.2)
    finally:
        with contextlib.suppress(Exception):
            certs.delete_certificate_signing_request(name)
    raise NodeStartError(f"CSR {name} for {node_name} was not signed within 30s (controller-manager?)")


def write_kubelet_credentials(node_dir: Path, admin_kubeconfig: Path, node_name: str, api: Any) -> Path:
    """Write the cluster CA and `node_dir/kubelet.kubeconfig` (key and signed certificate embedded) for
    `node_name`; `api` is an admin `ApiClient`. Returns the CA file (the kubelet's client CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    pki = node_dir / "kubelet-pki"
    pki.mkdir(parents=True, exist_ok=True)
    ca_file = pki / "cluster-ca.crt"
    ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    cert_pem = node_certificate(api, node_name, csr.public_bytes(serialization.Encoding.PEM))
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tidal-dev", "cluster": cluster}],
        "users": [
            {
                "name": f"system:node:{node_name}",
                "user": {
                    "client-certificate-data": base64.b64encode(cert_pem).decode(),
                    "client-key-data": base64.b64encode(key_pem).decode(),
                },
            }
        ],
        "contexts": [
            {"name": "tidal-dev", "context": {"cluster": "tidal-dev", "user": f"system:node:{node_name}"}}
        ],
        "current-context": "tidal-dev",
    }
    path = node_dir / "kubelet.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
    path.chmod(0o600)
    return ca_file
