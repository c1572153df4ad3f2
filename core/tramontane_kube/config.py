"""How to reach one cluster's API server: in-cluster service account or a kubeconfig.

`ClusterConfig` is the connection data the async client needs (server URL, CA, token or client
certificate). Member clusters come from a kubeconfig stored in a Secret, so only embedded data is
accepted (`certificate-authority-data`, `client-certificate-data`, `token`): file paths and exec
plugins would need files and cloud CLIs inside the operator pod, and are rejected with an error
naming the field. The operator converts the same config to Kopf's `ConnectionInfo`
(`tramontane_operator.main`), so Kopf and our client talk to the hub with the same credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeconfigError(ValueError):
    """A kubeconfig that cannot be used; the message names the offending field."""


@dataclass(frozen=True)
class ClusterConfig:
    """Connection data for one API server."""

    server: str
    ca_data: str | None = None  # PEM text
    ca_path: str | None = None
    insecure: bool = False
    token: str | None = None
    token_path: str | None = None  # re-read on 401 (projected service-account tokens rotate)
    client_cert_data: str | None = None  # PEM text
    client_key_data: str | None = None  # PEM text
    default_namespace: str | None = None

    def bearer_token(self) -> str | None:
        if self.token_path:
            try:
                return Path(self.token_path).read_text().strip() or None
            except OSError:
                return self.token
        return self.token

    @classmethod
    def in_cluster(cls, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> ClusterConfig:
        """The API server of the cluster this pod runs in (service-account credentials)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token_file = sa_dir / "token"
        if not host or not token_file.exists():
            raise KubeconfigError(
                "connection.inCluster: not running in a pod (KUBERNETES_SERVICE_HOST or the "
                f"service-account token {token_file} is missing)"
            )
        namespace_file = sa_dir / "namespace"
        ca_file = sa_dir / "ca.crt"
        host = f"[{host}]" if ":" in host else host
        return cls(
            server=f"https://{host}:{port}",
            ca_path=str(ca_file) if ca_file.exists() else None,
            token_path=str(token_file),
            default_namespace=(
                namespace_file.read_text().strip() if namespace_file.exists() else None
            ),
        )

    @classmethod
    def from_kubeconfig_text(cls, text: str, context: str | None = None) -> ClusterConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise KubeconfigError(f"kubeconfig: invalid YAML: {exc}") from exc
        if not isinstance(data, Mapping):
            raise KubeconfigError("kubeconfig: expected a mapping at the top level")
        return cls.from_kubeconfig(data, context)

    @classmethod
    def from_kubeconfig(cls, data: Mapping[str, Any], context: str | None = None) -> ClusterConfig:
        """The current (or named) context of a kubeconfig with embedded credentials."""
        name = context or data.get("current-context")
        if not name:
            raise KubeconfigError("kubeconfig: current-context is not set")
        ctx = _named(data, "contexts", name, "context")
        cluster = _named(data, "clusters", _field(ctx, "cluster", f"contexts[{name}]"), "cluster")
        user = _named(data, "users", _field(ctx, "user", f"contexts[{name}]"), "user")
        for unsupported in ("exec", "auth-provider", "client-certificate", "client-key"):
            if unsupported in user:
                raise KubeconfigError(
                    f"kubeconfig: users[].user.{unsupported} is not supported in a kubeconfig "
                    "Secret; embed a token or client-certificate-data/client-key-data"
                )
        if "certificate-authority" in cluster:
            raise KubeconfigError(
                "kubeconfig: clusters[].cluster.certificate-authority (a file path) is not "
                "supported; use certificate-authority-data"
            )
        return cls(
            server=str(_field(cluster, "server", "clusters[].cluster")).rstrip("/"),
            ca_data=_b64_pem(cluster.get("certificate-authority-data")),
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            token=user.get("token"),
            client_cert_data=_b64_pem(user.get("client-certificate-data")),
            client_key_data=_b64_pem(user.get("client-key-data")),
            default_namespace=ctx.get("namespace"),
        )

    @classmethod
    def from_kubeconfig_file(cls, path: str | os.PathLike[str]) -> ClusterConfig:
        return cls.from_kubeconfig_text(Path(path).read_text())


def _named(data: Mapping[str, Any], section: str, name: str, inner: str) -> Mapping[str, Any]:
    for item in data.get(section) or []:
        if isinstance(item, Mapping) and item.get("name") == name:
            value = item.get(inner)
            if not isinstance(value, Mapping):
                raise KubeconfigError(f"kubeconfig: {section}[{name}].{inner} is missing")
            return value
    raise KubeconfigError(f"kubeconfig: {section} has no entry named {name!r}")


def _field(item: Mapping[str, Any], key: str, where: str) -> Any:
    value = item.get(key)
    if not value:
        raise KubeconfigError(f"kubeconfig: {where}.{key} is missing")
    return value


def _b64_pem(value: Any) -> str | None:
    import base64
    import binascii

    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise KubeconfigError(f"kubeconfig: invalid base64 certificate data: {exc}") from exc
