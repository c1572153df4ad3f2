"""Manifests and settings the operator tests share (cluster names, objects, fast timings)."""

from __future__ import annotations

from typing import Any

from tramontane_kube import ClusterConfig
from tramontane_operator.settings import OperatorSettings

HUB = "hub"
AKS = "aks-westeurope"
ONPREM = "onprem"
NS = "team-a"
SYSTEM_NS = "tramontane-system"


def compute_cluster(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ComputeCluster",
        "metadata": {"name": name, "labels": {"tier": "gpu"}},
        "spec": spec,
    }


def model_deployment(name: str = "chat", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "mistral-7b", "source": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
        "resources": {"gpu": {"type": "H100", "count": 1}},
        "scaling": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4},
        "placement": {"clusters": [AKS], "strategy": "Pinned"},
    }
    base.update(spec)
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": base,
    }


def tenant(quotas: dict[str, Any], name: str = "team") -> dict[str, Any]:
    """A Tenant owning the test namespace with these quotas."""
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"namespaces": [NS], "quotas": quotas},
    }


def operator_settings(hub_url: str, **overrides: Any) -> OperatorSettings:
    values: dict[str, Any] = {
        "cluster_name": HUB,
        "hub": ClusterConfig(server=hub_url),
        "metrics_port": None,
        "liveness_port": None,
        "probe_interval_s": 0.3,
        "backoff_base_s": 0.2,
        "backoff_max_s": 1.0,
        "resync_interval_s": 5.0,
        "retry_delay_s": 0.3,
        "request_timeout_s": 2.0,
        "client_options": {"attempts": 3, "backoff_s": 0.05},
        # Every test runs elected, as production does (a Lease in the hub).
        "leader_election_namespace": SYSTEM_NS,
        # Kubeconfig Secrets only in the operator's namespace, as the chart runs it.
        "kubeconfig_secret_namespace": SYSTEM_NS,
        # Off unless a test turns it on (tests/operator/test_webhook.py): a fixed port would
        # collide between operators of one test.
        "webhook_port": None,
        # The operator runs beside the tests' tmp dirs: file:// datasets are read in-process, as
        # in local mode (docs/trust-model.md). Tests of the trust model turn it off.
        "local_mode": True,
    }
    values.update(overrides)
    return OperatorSettings(**values)
