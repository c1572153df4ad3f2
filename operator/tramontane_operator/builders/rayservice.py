"""Build the KubeRay `ray.io/v1` RayService of one ModelDeployment pool in one cluster.

One head group (no GPU, `num-cpus: 0` so no Serve replica lands on it; it runs the Serve
controller and a proxy) and one worker group: one Serve replica per worker pod, with the
ModelDeployment's GPUs, CPU, memory, node selector and tolerations. `serveConfigV2` is the
workers' Serve config rendered from the spec (`tramontane_workers.contract`). Claims named by
pvc:// model or adapter URIs are mounted read-only on every pod (`volumes`). The object is
named like the ModelDeployment, in its namespace, and validated in tests against KubeRay's CRD.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from tramontane_api.v1alpha1 import ModelDeployment
from tramontane_operator.placement import ClusterView, PoolSize
from tramontane_workers.contract.serve_config import GRPC_PORT, HTTP_PORT, render_serve_config_v2

from .labels import Owner, child_labels, owner_reference
from .security import restricted_pod_spec
from .serve import ray_cpus, serve_app
from .volumes import ClaimUse, PodVolumes, pod_volumes, with_volumes

RAY_API_VERSION: Final = "ray.io/v1"
GPU_RESOURCE: Final = "nvidia.com/gpu"
DEFAULT_WORKER_IMAGE: Final = "ghcr.io/tramontane/tramontane-worker:0.1.0"
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

HEAD_GROUP_PORTS: Final = (
    ("gcs-server", 6379),
    ("dashboard", 8265),
    ("client", 10001),
    ("serve", HTTP_PORT),
    ("grpc", GRPC_PORT),
)
# Incremental upgrades move traffic in steps of this many seconds (KubeRay's Gateway API mode).
INCREMENTAL_INTERVAL_SECONDS: Final = 30


@dataclass(frozen=True)
class BuildSettings:
    """Operator-wide settings the builders need.

    `gateway_class_name`: a Gateway API class in the member clusters; when set, a rollout
    with maxSurgePercent > 0 uses KubeRay's incremental upgrade, otherwise a whole new Ray
    cluster is started and traffic switches once it is ready (`NewCluster`).

    `worker_image` runs Ray clusters without GPUs; `gpu_worker_image` (None: the same) those
    whose workers request GPUs (head, workers and submitter alike: one Ray and Python
    version per cluster). A ModelDeployment's `spec.runtime.image` wins over both.
    `gpu_node_selector` and `gpu_tolerations` go on GPU worker pods only (a dedicated GPU
    node pool: on AKS its `kubernetes.azure.com/accelerator: nvidia` label and
    `sku=gpu:NoSchedule` taint); a ModelDeployment's own nodeSelector wins key by key and its
    tolerations come first. `worker_service_account` and `worker_pod_labels` go on every
    Ray pod (a cloud identity for the workers: Azure Workload Identity needs both the
    annotated service account and the `azure.workload.identity/use` label). `worker_env`
    (`{name, value}` pairs, in order) goes on every container of every Ray pod and of the
    dataset validation Job: e.g. `AZURE_STORAGE_ACCOUNT_NAME`, the storage account adlfs
    resolves `az://container/path` in.
    """

    worker_image: str = DEFAULT_WORKER_IMAGE
    gpu_worker_image: str | None = None
    hub_cluster: str = "hub"
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    gateway_class_name: str | None = None
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Mapping[str, Any], ...] = ()
    worker_service_account: str | None = None
    worker_pod_labels: Mapping[str, str] = field(default_factory=dict)
    worker_env: tuple[Mapping[str, str], ...] = ()

    def image_for(self, gpus: int) -> str:
        """The default image of a Ray cluster whose workers each request `gpus` GPUs."""
        return (self.gpu_worker_image or self.worker_image) if gpus else self.worker_image


def pod_template(
    pod_spec: Mapping[str, Any], labels: Mapping[str, str], settings: BuildSettings
) -> dict[str, Any]:
    """A Ray pod template: the child's labels (over `worker_pod_labels`, which cannot
    override them), the workers' service account, when one is set, and `worker_env` on every
    container."""
    spec = with_worker_env(pod_spec, settings)
    if settings.worker_service_account:
        spec["serviceAccountName"] = settings.worker_service_account
    return {"metadata": {"labels": {**settings.worker_pod_labels, **labels}}, "spec": spec}


def with_worker_env(pod_spec: Mapping[str, Any], settings: BuildSettings) -> dict[str, Any]:
    """`pod_spec` with `settings.worker_env` after each container's own `env` (the input is
    not modified; no `env` key is added when there is nothing to add)."""
    spec = dict(pod_spec)
    if settings.worker_env:
        added = [{"name": e["name"], "value": e["value"]} for e in settings.worker_env]
        spec["containers"] = [
            {**c, "env": [*(c.get("env") or []), *added]} for c in pod_spec["containers"]
        ]
    return spec


def gpu_placement(
    settings: BuildSettings,
    node_selector: Mapping[str, str] | None,
    tolerations: Sequence[Mapping[str, Any]],
    type_nodes: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """A GPU worker's node selector and tolerations: the operator's GPU defaults, then the
    labels of the requested GPU type's nodes in this cluster (`ComputeCluster.spec.
    gpuNodeSelectors`), then the spec's own (a later one wins for a node-selector key); the
    spec's tolerations plus the defaults (equal tolerations once)."""
    selector = {**settings.gpu_node_selector, **(type_nodes or {}), **(node_selector or {})}
    out = [dict(t) for t in tolerations]
    out += [dict(t) for t in settings.gpu_tolerations if dict(t) not in out]
    return selector, out


def upgrade_strategy(md: ModelDeployment, settings: BuildSettings) -> dict[str, Any]:
    """RayService `spec.upgradeStrategy` from `spec.rollout`."""
    surge = md.spec.rollout.max_surge_percent
    if surge == 0 or settings.gateway_class_name is None:
        return {"type": "NewCluster"}
    return {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {
            "gatewayClassName": settings.gateway_class_name,
            "maxSurgePercent": surge,
            "stepSizePercent": surge,
            "intervalSeconds": INCREMENTAL_INTERVAL_SECONDS,
        },
    }


def pod_tolerations(md: ModelDeployment) -> list[dict[str, Any]]:
    resources = md.spec.resources
    out = [
        t.model_dump(by_alias=True, exclude_none=True, exclude_defaults=False)
        for t in resources.tolerations or []
    ]
    if resources.gpu is not None and resources.gpu.count > 0:
        gpu_taint = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if not any(
            t.get("key") == GPU_RESOURCE and t.get("effect") in (None, "NoSchedule") for t in out
        ):
            out.append(gpu_taint)
    return out


def child_metadata(
    owner: Owner, cluster: ClusterView, settings: BuildSettings, labels: Mapping[str, str]
) -> dict[str, Any]:
    """Metadata of a child named like its owner, in its namespace. The owner reference is set
    only in the hub: Kubernetes garbage-collects by owner only within one cluster."""
    metadata: dict[str, Any] = {
        "name": owner.metadata.name,
        "namespace": owner.metadata.namespace or "default",
        "labels": dict(labels),
    }
    reference = owner_reference(owner)
    if reference is not None and (cluster.in_cluster or cluster.name == settings.hub_cluster):
        metadata["ownerReferences"] = [reference]
    return metadata


def head_group(
    image: str,
    settings: BuildSettings,
    labels: Mapping[str, str],
    ports: Sequence[tuple[str, int]] = HEAD_GROUP_PORTS,
    volumes: PodVolumes | None = None,
) -> dict[str, Any]:
    """A Ray head group that runs no work itself (`num-cpus: 0`), exposing `ports`, with the
    claims in `volumes` mounted (the head runs the driver and the Serve controller), under the
    restricted pod security profile."""
    limits = {"cpu": settings.head_cpu, "memory": settings.head_memory}
    pod_spec = {
        "containers": [
            {
                "name": "ray-head",
                "image": image,
                "resources": {"requests": dict(limits), "limits": dict(limits)},
                "ports": [
                    {"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports
                ],
            }
        ]
    }
    spec = restricted_pod_spec(with_volumes(pod_spec, volumes) if volumes else pod_spec)
    return {
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": pod_template(spec, labels, settings),
    }


def worker_pod_spec(
    image: str,
    cpu: str,
    memory: str,
    gpus: int,
    tolerations: Sequence[Mapping[str, Any]],
    node_selector: Mapping[str, str] | None = None,
    volumes: PodVolumes | None = None,
) -> dict[str, Any]:
    """The pod spec of a Ray worker: one container requesting (and limited to) its resources,
    with the claims in `volumes` mounted, under the restricted pod security profile. GPUs are
    a resource limit only (the device plugin needs no privilege)."""
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits[GPU_RESOURCE] = gpus
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": "ray-worker",
                "image": image,
                "resources": {"requests": dict(limits), "limits": dict(limits)},
            }
        ]
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    return restricted_pod_spec(with_volumes(pod_spec, volumes) if volumes else pod_spec)


def claim_uses(md: ModelDeployment, adapter_uris: Mapping[str, str] | None) -> list[ClaimUse]:
    """What the pods of `md` read: the model and the adapters (all read-only)."""
    uses = [ClaimUse("spec.model.source", md.spec.model.source)]
    for i, adapter in enumerate(md.spec.adapters or []):
        if adapter.uri is not None:
            uses.append(ClaimUse(f"spec.adapters[{i}].uri", adapter.uri))
        ref = adapter.fine_tune_job_ref
        if ref is not None and adapter_uris and ref.name in adapter_uris:
            where = f"spec.adapters[{i}].fineTuneJobRef (FineTuneJob {ref.name} output)"
            uses.append(ClaimUse(where, adapter_uris[ref.name]))
    seen = {u.uri for u in uses}
    for row in (md.status.adapter_versions if md.status else None) or []:
        for v in row.versions:  # kept versions are served too
            if v.uri not in seen:
                seen.add(v.uri)
                uses.append(ClaimUse(f"status.adapterVersions[{row.name}] {v.version}", v.uri))
    return uses


def _worker_group(
    md: ModelDeployment,
    image: str,
    pool: PoolSize,
    labels: Mapping[str, str],
    volumes: PodVolumes,
    settings: BuildSettings,
    cluster: ClusterView,
) -> dict[str, Any]:
    resources = md.spec.resources
    gpus = _gpus(md)
    node_selector, tolerations = dict(resources.node_selector or {}), pod_tolerations(md)
    if gpus and resources.gpu is not None:
        type_nodes = cluster.gpu_nodes(resources.gpu.type)
        node_selector, tolerations = gpu_placement(
            settings, node_selector, tolerations, type_nodes
        )
    pod_spec = worker_pod_spec(
        image, resources.cpu, resources.memory, gpus, tolerations, node_selector, volumes
    )
    return {
        "groupName": "gpu-workers" if gpus else "workers",
        "replicas": pool.replicas,
        "minReplicas": pool.min_replicas,
        "maxReplicas": pool.max_replicas,
        "rayStartParams": {"num-cpus": str(ray_cpus(md)), "num-gpus": str(gpus)},
        "template": pod_template(pod_spec, labels, settings),
    }


def _gpus(md: ModelDeployment) -> int:
    gpu = md.spec.resources.gpu
    return gpu.count if gpu is not None else 0


def serve_config_yaml(config: Mapping[str, Any]) -> str:
    """`serveConfigV2`'s YAML text for `config`, memoised on its JSON form.

    Dumping YAML was the largest CPU cost of a reconcile (even with libyaml's emitter, the
    representer is Python), and a ModelDeployment renders the same config on every reconcile
    until its spec changes; `json.dumps` keeps key order, so the text is byte-identical.
    """
    return _yaml_of(json.dumps(config))


@functools.lru_cache(maxsize=4096)
def _yaml_of(config_json: str) -> str:
    return yaml.dump(json.loads(config_json), Dumper=_DUMPER, sort_keys=False)


def build_rayservice(
    md: ModelDeployment,
    cluster: ClusterView,
    replicas: int | PoolSize,
    settings: BuildSettings,
    tenant: str | None,
    adapter_uris: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The RayService for `md`'s pool in `cluster`.

    `replicas`: the pool size; a bare int is the replica count with the whole scaling range
    of `md` as bounds (right when the pool is `md`'s only one). `adapter_uris`: FineTuneJob
    name -> output URI for adapters given by `fineTuneJobRef`.
    """
    if isinstance(replicas, int):
        scaling = md.spec.scaling
        pool = PoolSize(
            replicas, min(scaling.min_replicas, replicas), max(scaling.max_replicas, replicas, 1)
        )
    else:
        pool = replicas
    image = md.spec.runtime.image or settings.image_for(_gpus(md))
    # Pods carry the same labels, so GPU use can be attributed to tenants and deployments.
    labels = child_labels(md, cluster.name, tenant)
    metadata = child_metadata(md, cluster, settings, labels)
    volumes = pod_volumes(claim_uses(md, adapter_uris))
    serve_config = render_serve_config_v2([serve_app(md, pool, adapter_uris)])
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serveConfigV2": serve_config_yaml(serve_config),
            "upgradeStrategy": upgrade_strategy(md, settings),
            "rayClusterConfig": {
                "enableInTreeAutoscaling": pool.min_replicas != pool.max_replicas,
                "headGroupSpec": head_group(image, settings, labels, volumes=volumes),
                "workerGroupSpecs": [
                    _worker_group(md, image, pool, labels, volumes, settings, cluster)
                ],
            },
        },
    }
