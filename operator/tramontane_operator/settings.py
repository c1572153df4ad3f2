"""Operator-wide settings: from the CLI flags and environment, with defaults for production.

Environment: `TRAMONTANE_CLUSTER_NAME` (the hub's ComputeCluster name, default `hub`),
`TRAMONTANE_WORKER_IMAGE` (default worker image), `TRAMONTANE_GATEWAY_CLASS` (Gateway API class
enabling incremental upgrades), `TRAMONTANE_PROBE_INTERVAL` and `TRAMONTANE_RESYNC_INTERVAL`
(seconds), `TRAMONTANE_RECONCILE_WORKERS` (ModelDeployment reconciles in flight).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from tramontane_kube.config import ClusterConfig
from tramontane_operator.builders import BuildSettings
from tramontane_operator.builders.rayservice import DEFAULT_WORKER_IMAGE


@dataclass(frozen=True)
class OperatorSettings:
    cluster_name: str = "hub"
    worker_image: str = DEFAULT_WORKER_IMAGE
    gateway_class_name: str | None = None
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

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: object
    ) -> OperatorSettings:
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "cluster_name": env.get("TRAMONTANE_CLUSTER_NAME") or "hub",
            "worker_image": env.get("TRAMONTANE_WORKER_IMAGE") or DEFAULT_WORKER_IMAGE,
            "gateway_class_name": env.get("TRAMONTANE_GATEWAY_CLASS") or None,
        }
        for name, var in (
            ("probe_interval_s", "TRAMONTANE_PROBE_INTERVAL"),
            ("resync_interval_s", "TRAMONTANE_RESYNC_INTERVAL"),
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
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def build_settings(self) -> BuildSettings:
        return BuildSettings(
            worker_image=self.worker_image,
            hub_cluster=self.cluster_name,
            gateway_class_name=self.gateway_class_name,
        )

    def hub_config(self) -> ClusterConfig:
        """The hub's connection: explicit, else in-cluster, else $KUBECONFIG."""
        if self.hub is not None:
            return self.hub
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return ClusterConfig.in_cluster()
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        return ClusterConfig.from_kubeconfig_file(path.split(os.pathsep)[0])
