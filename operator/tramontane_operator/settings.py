"""Operator-wide settings: from the CLI flags and environment, with defaults for production.

Environment: `TRAMONTANE_CLUSTER_NAME` (the hub's ComputeCluster name, default `hub`),
`TRAMONTANE_WORKER_IMAGE` (default worker image), `TRAMONTANE_GPU_WORKER_IMAGE` (default image
of Ray clusters whose workers request GPUs; unset: the worker image),
`TRAMONTANE_GATEWAY_CLASS` (Gateway API class enabling incremental upgrades),
`TRAMONTANE_PROBE_INTERVAL` and `TRAMONTANE_RESYNC_INTERVAL` (seconds),
`TRAMONTANE_RECONCILE_WORKERS` (ModelDeployment reconciles in flight).

Worker pods (the chart's `workers.*` values): `TRAMONTANE_GPU_NODE_SELECTOR` (a JSON object)
and `TRAMONTANE_GPU_TOLERATIONS` (a JSON list of tolerations) are added to GPU worker pods;
`TRAMONTANE_WORKER_SERVICE_ACCOUNT` and `TRAMONTANE_WORKER_POD_LABELS` (a JSON object) go on
every Ray pod (e.g. Azure Workload Identity's annotated service account and its label), and
with `TRAMONTANE_WORKER_ENV` (a JSON list of `{"name": ..., "value": ...}`) every container of
every Ray pod and of the dataset validation Job gets those variables (e.g.
`AZURE_STORAGE_ACCOUNT_NAME`, the storage account adlfs reads `az://container/path` from).

`TRAMONTANE_KUBECONFIG_SECRET_NAMESPACE` (default `$POD_NAMESPACE`): the one namespace member
ComputeClusters' kubeconfig Secrets may live in (the only one the chart lets the operator read
Secrets in); a ComputeCluster naming a Secret elsewhere is Unreachable, saying so. Unset
outside a pod: no restriction (development against a kubeconfig).
`TRAMONTANE_KEY_NAMESPACES` (comma-separated; the chart's `tenants.keyNamespaces`): the
namespaces the router may read API-key Secrets in; the webhook refuses a Tenant naming a key
Secret elsewhere. Unset: not checked.

`TRAMONTANE_ROUTER_NAMESPACE` (default `$POD_NAMESPACE`): where the routers' Leases carry their
figures of canary adapter versions.
`TRAMONTANE_LOCAL_MODE` (`true`/`false`, default false): the operator runs beside its
tenants' files on one machine (development, the operator test tier), so it may read `file://`
datasets, the base model's `config.json` and `progress.json` itself. Off, a FineTuneJob naming
a `file://` URI (or a bare path) fails validation and the operator reads no tenant data under
its own identity (docs/trust-model.md).

Leader election (replicas > 1: one reconciles, the others stand by): `TRAMONTANE_LEADER_ELECTION`
(`true`/`false`, default true), the Lease `TRAMONTANE_LEADER_ELECTION_ID` (default
`tramontane-operator`) in `TRAMONTANE_LEADER_ELECTION_NAMESPACE` (default `$POD_NAMESPACE`, else
the service account's namespace), held as `$POD_NAME` (else the host name plus a random
suffix), with `TRAMONTANE_LEADER_ELECTION_LEASE_DURATION`, `..._RENEW_DEADLINE` and
`..._RETRY_PERIOD` in seconds (15, 10, 2: client-go's defaults).

Admission webhook (HTTPS on every replica, see `webhook/`): `TRAMONTANE_WEBHOOK_PORT` (default
9443, 0 disables), the Service it is reached through `TRAMONTANE_WEBHOOK_SERVICE` (default
`tramontane-webhook`) in `TRAMONTANE_WEBHOOK_NAMESPACE` (default `$POD_NAMESPACE`, else the
service account's), its certificate's Secret `TRAMONTANE_WEBHOOK_SECRET` (default
`tramontane-webhook-tls`), the ValidatingWebhookConfiguration whose caBundle the leader keeps
`TRAMONTANE_WEBHOOK_CONFIGURATION` (default `tramontane`), `TRAMONTANE_WEBHOOK_CERT_MANAGER`
(`true`: cert-manager writes the Secret and the caBundle; the operator only reads), and
`TRAMONTANE_WEBHOOK_TENANT_REQUIRED` (`auto`: a ModelDeployment or FineTuneJob needs a Tenant
owning its namespace once any Tenant exists; `always`; `never`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tramontane_kube.config import ClusterConfig
from tramontane_kube.leader import LeaderElectionConfig, config_problems, default_identity
from tramontane_operator.builders import BuildSettings
from tramontane_operator.builders.rayservice import DEFAULT_WORKER_IMAGE
from tramontane_operator.webhook.checks import TENANT_REQUIRED_CHOICES, TenantRequired

# Where a pod finds its own namespace when the downward API does not pass it.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_LEADER_DURATIONS = (
    ("leader_election_lease_duration_s", "TRAMONTANE_LEADER_ELECTION_LEASE_DURATION"),
    ("leader_election_renew_deadline_s", "TRAMONTANE_LEADER_ELECTION_RENEW_DEADLINE"),
    ("leader_election_retry_period_s", "TRAMONTANE_LEADER_ELECTION_RETRY_PERIOD"),
)


@dataclass(frozen=True)
class OperatorSettings:
    cluster_name: str = "hub"
    worker_image: str = DEFAULT_WORKER_IMAGE
    gpu_worker_image: str | None = None
    gateway_class_name: str | None = None
    # Added to GPU worker pods (a GPU node pool's label and taint); see BuildSettings.
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Mapping[str, Any], ...] = ()
    # The namespace of member clusters' kubeconfig Secrets (None: any; see the docstring).
    kubeconfig_secret_namespace: str | None = None
    # The namespaces tenants' API-key Secrets may live in (None: not checked).
    key_namespaces: tuple[str, ...] | None = None
    # On every Ray pod: the workers' service account (None: the namespace's default) and labels.
    worker_service_account: str | None = None
    worker_pod_labels: Mapping[str, str] = field(default_factory=dict)
    # On every container of every Ray pod and validation Job: {name, value} pairs, in order.
    worker_env: tuple[Mapping[str, str], ...] = ()
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = True
    metrics_port: int | None = 9090
    liveness_port: int | None = 8080
    # The hub's API server; None: the service account of the pod we run in, else $KUBECONFIG.
    hub: ClusterConfig | None = None
    # How often each ComputeCluster is probed while reachable; unreachable ones back off
    # exponentially from `backoff_base_s` to `backoff_max_s` (the cap of reconcile retries too).
    probe_interval_s: float = 30.0
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    # A ModelDeployment nobody woke (no child or cluster change) is re-checked this often.
    resync_interval_s: float = 600.0
    # How often every member is swept for children whose owner is gone (and once at start).
    sweep_interval_s: float = 300.0
    # A failed reconcile is retried after this, doubling per consecutive failure of the same
    # object (with jitter) up to `backoff_max_s`; a success resets it.
    retry_delay_s: float = 0.5
    # ModelDeployment reconciles in flight at once (each mostly waits on API calls).
    reconcile_workers: int = 32
    # Per-request timeout towards member clusters.
    request_timeout_s: float = 10.0
    client_options: Mapping[str, float] = field(default_factory=dict)
    # One active replica among several: the Lease `leader_election_id` in
    # `leader_election_namespace` (None: the service account's namespace).
    leader_election: bool = True
    leader_election_namespace: str | None = None
    leader_election_id: str = "tramontane-operator"
    leader_election_identity: str = field(default_factory=default_identity)
    leader_election_lease_duration_s: float = 15.0
    leader_election_renew_deadline_s: float = 10.0
    leader_election_retry_period_s: float = 2.0
    # The admission webhook (None or 0: off), its Service, certificate Secret and the
    # ValidatingWebhookConfiguration the leader writes the caBundle into.
    webhook_port: int | None = 9443
    webhook_host: str = "0.0.0.0"
    webhook_service: str = "tramontane-webhook"
    webhook_namespace: str | None = None
    webhook_secret: str = "tramontane-webhook-tls"
    webhook_configuration: str = "tramontane"
    webhook_cert_manager: bool = False
    webhook_tenant_required: TenantRequired = "auto"
    # How often every replica re-reads the certificate's Secret (and renews it when due).
    webhook_refresh_s: float = 60.0
    # Tenants' files on this machine may be read by the operator (file:// URIs): never in a
    # shared cluster (docs/trust-model.md).
    local_mode: bool = False
    # Where the routers' Leases are (their live figures of adapter versions, read during a
    # canary); None: `POD_NAMESPACE` (the chart installs the routers beside the operator),
    # else the service account's namespace.
    router_namespace: str | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: object
    ) -> OperatorSettings:
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "cluster_name": env.get("TRAMONTANE_CLUSTER_NAME") or "hub",
            "worker_image": env.get("TRAMONTANE_WORKER_IMAGE") or DEFAULT_WORKER_IMAGE,
            "gpu_worker_image": env.get("TRAMONTANE_GPU_WORKER_IMAGE") or None,
            "gateway_class_name": env.get("TRAMONTANE_GATEWAY_CLASS") or None,
            "worker_service_account": env.get("TRAMONTANE_WORKER_SERVICE_ACCOUNT") or None,
            "kubeconfig_secret_namespace": env.get("TRAMONTANE_KUBECONFIG_SECRET_NAMESPACE")
            or env.get("POD_NAMESPACE")
            or None,
        }
        values.update(_worker_pod_values(env))
        if env.get("TRAMONTANE_KEY_NAMESPACES") is not None:
            listed = env["TRAMONTANE_KEY_NAMESPACES"].split(",")
            values["key_namespaces"] = tuple(n.strip() for n in listed if n.strip())
        for name, var in (
            ("probe_interval_s", "TRAMONTANE_PROBE_INTERVAL"),
            ("resync_interval_s", "TRAMONTANE_RESYNC_INTERVAL"),
            *_LEADER_DURATIONS,
        ):
            if env.get(var):
                try:
                    values[name] = float(env[var])
                except ValueError as exc:
                    raise ValueError(f"{var}: expected seconds, got {env[var]!r}") from exc
        workers = env.get("TRAMONTANE_RECONCILE_WORKERS")
        if workers:
            if not workers.isdigit() or int(workers) < 1:
                raise ValueError(
                    f"TRAMONTANE_RECONCILE_WORKERS: expected a whole number >= 1, got {workers!r}"
                )
            values["reconcile_workers"] = int(workers)
        for name, var in (
            ("leader_election", "TRAMONTANE_LEADER_ELECTION"),
            ("local_mode", "TRAMONTANE_LOCAL_MODE"),
        ):
            flag = env.get(var)
            if flag:
                if flag.strip().lower() not in _BOOLEANS:
                    raise ValueError(f"{var}: expected true or false, got {flag!r}")
                values[name] = _BOOLEANS[flag.strip().lower()]
        values["leader_election_namespace"] = (
            env.get("TRAMONTANE_LEADER_ELECTION_NAMESPACE") or env.get("POD_NAMESPACE") or None
        )
        values["router_namespace"] = (
            env.get("TRAMONTANE_ROUTER_NAMESPACE") or env.get("POD_NAMESPACE") or None
        )
        if env.get("TRAMONTANE_LEADER_ELECTION_ID"):
            values["leader_election_id"] = env["TRAMONTANE_LEADER_ELECTION_ID"]
        values["leader_election_identity"] = default_identity(env)
        values.update(_webhook_values(env))
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        problems = config_problems(
            settings.leader_election_identity,
            settings.leader_election_lease_duration_s,
            settings.leader_election_renew_deadline_s,
            settings.leader_election_retry_period_s,
        )
        if settings.leader_election and problems:
            names = ", ".join(var for _, var in _LEADER_DURATIONS)
            raise ValueError(f"leader election ({names}): " + "; ".join(problems))
        return settings

    def routers_namespace(self) -> str | None:
        """The routers' namespace (their Leases), or None when it is not known."""
        if self.router_namespace:
            return self.router_namespace
        if SERVICE_ACCOUNT_NAMESPACE.is_file():
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
        return None

    def leader_election_config(self) -> LeaderElectionConfig | None:
        """The elector's configuration; None with leader election off. The Lease's namespace
        defaults to the service account's (in a pod); ValueError when none is known."""
        if not self.leader_election:
            return None
        namespace = self.leader_election_namespace
        if not namespace and SERVICE_ACCOUNT_NAMESPACE.is_file():
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        if not namespace:
            raise ValueError(
                "leader election needs the namespace of its Lease: set POD_NAMESPACE (the "
                "chart passes it) or TRAMONTANE_LEADER_ELECTION_NAMESPACE, or turn it off with "
                "TRAMONTANE_LEADER_ELECTION=false"
            )
        return LeaderElectionConfig(
            namespace=namespace,
            name=self.leader_election_id,
            identity=self.leader_election_identity,
            lease_duration_s=self.leader_election_lease_duration_s,
            renew_deadline_s=self.leader_election_renew_deadline_s,
            retry_period_s=self.leader_election_retry_period_s,
        )

    def webhook_service_namespace(self) -> str:
        """The namespace of the webhook's Service and Secret; ValueError when none is known."""
        namespace = self.webhook_namespace
        if not namespace and SERVICE_ACCOUNT_NAMESPACE.is_file():
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        if not namespace:
            raise ValueError(
                "the admission webhook needs the namespace of its Service and Secret: set "
                "POD_NAMESPACE (the chart passes it) or TRAMONTANE_WEBHOOK_NAMESPACE, or turn "
                "it off with TRAMONTANE_WEBHOOK_PORT=0"
            )
        return namespace

    def build_settings(self) -> BuildSettings:
        return BuildSettings(
            worker_image=self.worker_image,
            gpu_worker_image=self.gpu_worker_image,
            hub_cluster=self.cluster_name,
            gateway_class_name=self.gateway_class_name,
            gpu_node_selector=dict(self.gpu_node_selector),
            gpu_tolerations=tuple(dict(t) for t in self.gpu_tolerations),
            worker_service_account=self.worker_service_account,
            worker_pod_labels=dict(self.worker_pod_labels),
            worker_env=tuple(dict(e) for e in self.worker_env),
        )

    def hub_config(self) -> ClusterConfig:
        """The hub's connection: explicit, else in-cluster, else $KUBECONFIG."""
        if self.hub is not None:
            return self.hub
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return ClusterConfig.in_cluster()
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        return ClusterConfig.from_kubeconfig_file(path.split(os.pathsep)[0])


_TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})


def _json_env(env: Mapping[str, str], var: str, kind: type) -> Any:
    """The JSON value of `var` (None when unset or empty); ValueError naming it otherwise."""
    text = env.get(var)
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{var}: not JSON: {exc.msg}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{var}: expected a JSON {'object' if kind is dict else 'list'}")
    return value


def _string_map(env: Mapping[str, str], var: str) -> dict[str, str]:
    value = _json_env(env, var, dict) or {}
    bad = sorted(k for k, v in value.items() if not isinstance(v, str))
    if bad:
        raise ValueError(f"{var}: values must be strings (not {', '.join(bad)})")
    return dict(value)


def _worker_pod_values(env: Mapping[str, str]) -> dict[str, object]:
    """GPU node selector and tolerations, and the worker pods' labels, from the environment."""
    tolerations = _json_env(env, "TRAMONTANE_GPU_TOLERATIONS", list) or []
    for index, toleration in enumerate(tolerations):
        if not isinstance(toleration, dict) or not set(toleration) <= _TOLERATION_KEYS:
            raise ValueError(
                f"TRAMONTANE_GPU_TOLERATIONS[{index}]: expected a toleration (keys "
                f"{', '.join(sorted(_TOLERATION_KEYS))}), got {toleration!r}"
            )
    return {
        "gpu_node_selector": _string_map(env, "TRAMONTANE_GPU_NODE_SELECTOR"),
        "gpu_tolerations": tuple(tolerations),
        "worker_pod_labels": _string_map(env, "TRAMONTANE_WORKER_POD_LABELS"),
        "worker_env": _env_list(env, "TRAMONTANE_WORKER_ENV"),
    }


_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


def _env_list(env: Mapping[str, str], var: str) -> tuple[dict[str, str], ...]:
    """A JSON list of `{"name": ..., "value": ...}` (Kubernetes EnvVars with a literal value),
    each name once; ValueError naming `var` and the entry otherwise."""
    items = _json_env(env, var, list) or []
    out: list[dict[str, str]] = []
    for index, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or set(item) != {"name", "value"}
            or not isinstance(item["name"], str)
            or not isinstance(item["value"], str)
        ):
            raise ValueError(
                f'{var}[{index}]: expected {{"name": "...", "value": "..."}} (strings), '
                f"got {item!r}"
            )
        if not _ENV_NAME.fullmatch(item["name"]):
            raise ValueError(f"{var}[{index}]: {item['name']!r} is not a valid variable name")
        if any(e["name"] == item["name"] for e in out):
            raise ValueError(f"{var}[{index}]: {item['name']!r} is set twice")
        out.append({"name": item["name"], "value": item["value"]})
    return tuple(out)


def _webhook_values(env: Mapping[str, str]) -> dict[str, object]:
    """The webhook's settings from the environment (see the module docstring)."""
    values: dict[str, object] = {}
    port = env.get("TRAMONTANE_WEBHOOK_PORT")
    if port:
        if not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"TRAMONTANE_WEBHOOK_PORT: expected a port number (0 disables), got {port!r}"
            )
        values["webhook_port"] = int(port) or None
    for name, var in (
        ("webhook_service", "TRAMONTANE_WEBHOOK_SERVICE"),
        ("webhook_secret", "TRAMONTANE_WEBHOOK_SECRET"),
        ("webhook_configuration", "TRAMONTANE_WEBHOOK_CONFIGURATION"),
    ):
        if env.get(var):
            values[name] = env[var]
    values["webhook_namespace"] = (
        env.get("TRAMONTANE_WEBHOOK_NAMESPACE") or env.get("POD_NAMESPACE") or None
    )
    cert_manager = env.get("TRAMONTANE_WEBHOOK_CERT_MANAGER")
    if cert_manager:
        if cert_manager.strip().lower() not in _BOOLEANS:
            raise ValueError(
                f"TRAMONTANE_WEBHOOK_CERT_MANAGER: expected true or false, got {cert_manager!r}"
            )
        values["webhook_cert_manager"] = _BOOLEANS[cert_manager.strip().lower()]
    required = env.get("TRAMONTANE_WEBHOOK_TENANT_REQUIRED")
    if required:
        if required not in TENANT_REQUIRED_CHOICES:
            raise ValueError(
                "TRAMONTANE_WEBHOOK_TENANT_REQUIRED: expected one of "
                f"{', '.join(TENANT_REQUIRED_CHOICES)}, got {required!r}"
            )
        values["webhook_tenant_required"] = required
    return values
