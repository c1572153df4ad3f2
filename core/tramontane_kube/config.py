"""How to reach one cluster's API server: in-cluster service account or a kubeconfig.

`ClusterConfig` is the connection data the async client needs (server URL, CA, token, client
certificate, or an exec credential plugin). Member clusters come from a kubeconfig stored in a
Secret, so only embedded data is accepted (`certificate-authority-data`,
`client-certificate-data`, `token`) besides an `exec` plugin: file paths would need files inside
the operator pod, and are rejected with an error naming the field. A user's own kubeconfig file
(the tenant CLI) may also name files (`certificate-authority`, `client-certificate`,
`client-key`, `tokenFile`), resolved against the kubeconfig's directory as kubectl does:
`from_kubeconfig(..., files_from=DIR)`.

An `exec` block (kubelogin on AKS, `aws eks get-token`, `gke-gcloud-auth-plugin`) is checked
here and run by the client when it needs a token (`execauth`: what runs, with which
environment, how tokens are refreshed; `interactiveMode: Always` is refused). `source` names
where the kubeconfig came from (e.g. `Secret ops/aks`) in the plugin's errors. `auth-provider`
blocks (removed from kubectl) are refused. The operator converts the same config to Kopf's
`ConnectionInfo` (`tramontane_operator.main`), so Kopf and our client talk to the hub with the
same credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import KubeconfigError
from .execauth import ExecConfig

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

__all__ = ["SERVICE_ACCOUNT_DIR", "ClusterConfig", "ExecConfig", "KubeconfigError"]


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
    exec: ExecConfig | None = None  # a credential plugin: the client runs it for tokens

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
    def from_kubeconfig_text(
        cls,
        text: str,
        context: str | None = None,
        *,
        files_from: Path | None = None,
        source: str = "kubeconfig",
    ) -> ClusterConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise KubeconfigError(f"kubeconfig: invalid YAML: {exc}") from exc
        if not isinstance(data, Mapping):
            raise KubeconfigError("kubeconfig: expected a mapping at the top level")
        return cls.from_kubeconfig(data, context, files_from=files_from, source=source)

    @classmethod
    def from_kubeconfig(
        cls,
        data: Mapping[str, Any],
        context: str | None = None,
        *,
        files_from: Path | None = None,
        source: str = "kubeconfig",
    ) -> ClusterConfig:
        """The current (or named) context of a kubeconfig with embedded credentials or an exec
        plugin; with `files_from` (the kubeconfig's directory), credentials in files are read
        too. `source` names the kubeconfig in the exec plugin's errors."""
        name = context or data.get("current-context")
        if not name:
            raise KubeconfigError("kubeconfig: current-context is not set")
        ctx = _named(data, "contexts", name, "context")
        cluster = _named(data, "clusters", _field(ctx, "cluster", f"contexts[{name}]"), "cluster")
        user_name = _field(ctx, "user", f"contexts[{name}]")
        user = _named(data, "users", user_name, "user")
        if "auth-provider" in user:
            raise KubeconfigError(
                "kubeconfig: users[].user.auth-provider (a credential plugin) is not supported; "
                "use an exec plugin, a token or client-certificate-data/client-key-data"
            )
        plugin = None
        if "exec" in user:
            plugin = ExecConfig.parse(
                user["exec"],
                cluster,
                source=source,
                user=str(user_name),
                cwd=str(files_from) if files_from is not None else None,
            )
        files = ("client-certificate", "client-key", "tokenFile")
        if files_from is None:
            for unsupported in files:
                if unsupported in user:
                    raise KubeconfigError(
                        f"kubeconfig: users[].user.{unsupported} is not supported in a "
                        "kubeconfig Secret; embed a token or client-certificate-data/"
                        "client-key-data"
                    )
            if "certificate-authority" in cluster:
                raise KubeconfigError(
                    "kubeconfig: clusters[].cluster.certificate-authority (a file path) is not "
                    "supported; use certificate-authority-data"
                )
        ca_path = _path(files_from, cluster.get("certificate-authority"))
        token_path = _path(files_from, user.get("tokenFile"))
        return cls(
            server=str(_field(cluster, "server", "clusters[].cluster")).rstrip("/"),
            ca_data=_b64_pem(cluster.get("certificate-authority-data")),
            ca_path=ca_path,
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            token=user.get("token") or (_text(token_path, "tokenFile") if token_path else None),
            token_path=token_path,
            client_cert_data=_b64_pem(user.get("client-certificate-data"))
            or _file_text(files_from, user.get("client-certificate"), "client-certificate"),
            client_key_data=_b64_pem(user.get("client-key-data"))
            or _file_text(files_from, user.get("client-key"), "client-key"),
            default_namespace=ctx.get("namespace"),
            exec=plugin,
        )

    @classmethod
    def from_kubeconfig_file(
        cls, path: str | os.PathLike[str], context: str | None = None, *, files: bool = False
    ) -> ClusterConfig:
        """The kubeconfig at `path`; with `files`, credentials it names as files are read
        (relative to its directory)."""
        base = Path(path).parent if files else None
        return cls.from_kubeconfig_text(Path(path).read_text(), context, files_from=base)


def _path(base: Path | None, value: Any) -> str | None:
    if base is None or not value:
        return None
    return str(base / Path(str(value)).expanduser())


def _text(path: str, field: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise KubeconfigError(
            f"kubeconfig: users[].user.{field}: cannot read {path}: {exc.strerror or exc}"
        ) from exc


def _file_text(base: Path | None, value: Any, field: str) -> str | None:
    path = _path(base, value)
    return _text(path, field) + "\n" if path else None


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
