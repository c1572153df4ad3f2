"""Build the trainer's `TrainConfig` and the KubeRay `ray.io/v1` RayJob of one FineTuneJob.

The RayJob runs `python -m tramontane_workers.train --config-b64 ...` (the workers' contract
renders the entrypoint) on its own Ray cluster: a head without CPUs for tasks (the Ray Train
workers must land on the worker pods) and one worker group of `spec.resources.workers` pods
with the job's GPUs, CPU and memory. Ray Train runs one training worker per GPU (data
parallel), or one per pod on CPU. KubeRay retries the whole job `backoffLimit` times (each
retry resumes from the newest checkpoint), stops it after `activeDeadlineSeconds`, and deletes
the Ray cluster when the job ends. `suspend` maps to the RayJob's own `suspend` (KubeRay
deletes the Ray cluster and keeps the RayJob; resuming starts again from the checkpoint).
Claims named by pvc:// URIs are mounted on every pod: base model and datasets read-only, the
output read-write (`volumes`). The submitter pod template is set (KubeRay's default one, under
the restricted pod security profile like every other pod: KubeRay's own default has no
security context, so a restricted namespace would refuse its pod).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_operator.placement import ClusterView
from tramontane_workers.contract.train_config import (
    LoraSettings,
    TrainConfig,
    TrainingFile,
    entrypoint,
)

from .labels import child_labels
from .rayservice import (
    GPU_RESOURCE,
    RAY_API_VERSION,
    BuildSettings,
    child_metadata,
    gpu_placement,
    head_group,
    pod_template,
    worker_pod_spec,
)
from .security import restricted_pod_spec
from .serve import parse_quantity
from .volumes import ClaimUse, PodVolumes, pod_volumes

# KubeRay keeps a finished RayJob this long before deleting it (the Ray cluster goes at once).
TTL_AFTER_FINISHED_S: Final = 3600
HEAD_PORTS: Final = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001))
# What the RayJob was rendered from: a job resumed with another one gets a new RayJob.
SPEC_HASH_ANNOTATION: Final = "tramontane.dev/spec-hash"
# KubeRay's default submitter container (`GetDefaultSubmitterContainer`): its name and resources.
SUBMITTER_CONTAINER: Final = "ray-job-submitter"
SUBMITTER_REQUESTS: Final = {"cpu": "500m", "memory": "200Mi"}
SUBMITTER_LIMITS: Final = {"cpu": "1", "memory": "1Gi"}


def spec_hash(job: FineTuneJob) -> str:
    """A digest of the spec fields a RayJob is rendered from that change only while the job is
    suspended (hyperparameters, resources) or never. Not the job controls patched in place
    (suspend, activeDeadlineSeconds, backoffLimit), nor the base model a referenced
    ModelDeployment resolves to (a running job keeps the one it started with)."""
    spec = job.spec
    rendered_from = {
        "hyperparameters": spec.hyperparameters.model_dump(mode="json"),
        "resources": spec.resources.model_dump(mode="json"),
        "method": spec.method.model_dump(mode="json"),
        "trainingFiles": [f.model_dump(mode="json") for f in spec.training_files],
        "validationFiles": [f.uri for f in spec.validation_files or []],
        "output": spec.output.uri,
    }
    text = json.dumps(rendered_from, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rendered_hash(rayjob: Mapping[str, Any]) -> str | None:
    """The spec hash an observed RayJob was rendered with (None: unknown, e.g. older)."""
    annotations = (rayjob.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(SPEC_HASH_ANNOTATION)
    return str(value) if value else None


def training_workers(job: FineTuneJob) -> int:
    """Ray Train workers: one per GPU (data parallel), or one per pod without GPUs."""
    res = job.spec.resources
    return res.workers * max(res.gpus_per_worker, 1)


def cpus_per_training_worker(job: FineTuneJob) -> int:
    """Whole CPUs each Ray Train worker reserves: the pod's CPUs shared by its GPUs."""
    res = job.spec.resources
    cpus = parse_quantity(res.cpu, "spec.resources.cpu")
    return max(1, math.floor(cpus / max(res.gpus_per_worker, 1)))


def build_train_config(
    job: FineTuneJob, base_model_uri: str, base_model_name: str | None = None
) -> TrainConfig:
    """The trainer's input for `job`; `base_model_uri` is resolved by the caller (the URI in
    the spec, or the referenced ModelDeployment's `spec.model.source`).

    Raises ValueError naming the field when the spec cannot be trained as given.
    """
    spec = job.spec
    hp = spec.hyperparameters
    if spec.method.type != "lora":
        raise ValueError("spec.method.type: only lora fine-tuning is supported by the trainer")
    workers = training_workers(job)
    if hp.batch_size < workers:
        raise ValueError(
            f"spec.hyperparameters.batchSize: {hp.batch_size} is smaller than the "
            f"{workers} training workers (one sequence each at least)"
        )
    lora = spec.method.lora
    return TrainConfig(
        job_name=job.metadata.name,
        base_model_uri=base_model_uri,
        base_model_name=base_model_name,
        training_files=[TrainingFile(uri=f.uri, weight=f.weight) for f in spec.training_files],
        validation_files=[f.uri for f in spec.validation_files or []],
        output_uri=spec.output.uri,
        lora=LoraSettings() if lora is None else LoraSettings.model_validate(lora.model_dump()),
        training_steps=hp.training_steps,
        epochs=hp.epochs,
        learning_rate=hp.learning_rate,
        warmup_fraction=hp.warmup_fraction,
        weight_decay=hp.weight_decay,
        sequence_length=hp.sequence_length,
        batch_size=hp.batch_size,
        checkpoint_every_steps=hp.checkpoint_every_steps,
        seed=hp.seed,
        num_workers=workers,
        use_gpu=spec.resources.gpus_per_worker > 0,
        cpus_per_worker=cpus_per_training_worker(job),
        max_failures=spec.backoff_limit,
    )


def dataset_uses(job: FineTuneJob) -> list[ClaimUse]:
    """The training and validation files of `job` (read-only)."""
    spec = job.spec
    return [
        *(
            ClaimUse(f"spec.trainingFiles[{i}].uri", f.uri)
            for i, f in enumerate(spec.training_files)
        ),
        *(
            ClaimUse(f"spec.validationFiles[{i}].uri", f.uri)
            for i, f in enumerate(spec.validation_files or [])
        ),
    ]


def claim_uses(job: FineTuneJob, base_model_uri: str) -> list[ClaimUse]:
    """Every URI the training pods use: the base model and datasets (read), the output (write)."""
    base_field = (
        "spec.baseModel.uri"
        if job.spec.base_model.uri is not None
        else "spec.baseModel.modelDeploymentRef (the ModelDeployment's spec.model.source)"
    )
    return [
        ClaimUse(base_field, base_model_uri),
        *dataset_uses(job),
        ClaimUse("spec.output.uri", job.spec.output.uri, writes=True),
    ]


def gpu_tolerations(gpus: int) -> list[dict[str, Any]]:
    """Tolerate the GPU nodes' taint when the pod asks for GPUs."""
    if not gpus:
        return []
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def worker_group(
    image: str,
    pods: int,
    cpu: str,
    memory: str,
    gpus: int,
    labels: Mapping[str, str],
    volumes: PodVolumes,
    cpu_field: str,
    tolerations: Sequence[Mapping[str, Any]],
    settings: BuildSettings,
    node_selector: Mapping[str, str] | None = None,
    type_nodes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A fixed-size worker group of `pods` pods, each with `cpu`, `memory` and `gpus` (what
    Ray may schedule there too), the claims in `volumes` mounted; GPU pods get the operator's
    GPU node selector and tolerations too, and the labels of the GPU type's nodes in this
    cluster (`type_nodes`); every pod the workers' account and labels. `cpu_field` names the
    CPU quantity's field in errors."""
    selector, tolerations = dict(node_selector or {}), [dict(t) for t in tolerations]
    if gpus:
        selector, tolerations = gpu_placement(settings, selector, tolerations, type_nodes)
    pod_spec = worker_pod_spec(image, cpu, memory, gpus, tolerations, selector, volumes)
    cpus = max(1, math.ceil(parse_quantity(cpu, cpu_field)))
    return {
        "groupName": "gpu-workers" if gpus else "workers",
        "replicas": pods,
        "minReplicas": pods,
        "maxReplicas": pods,
        "rayStartParams": {"num-cpus": str(cpus), "num-gpus": str(gpus)},
        "template": pod_template(pod_spec, labels, settings),
    }


def _worker_group(
    job: FineTuneJob,
    image: str,
    labels: Mapping[str, str],
    volumes: PodVolumes,
    settings: BuildSettings,
    cluster: ClusterView,
) -> dict[str, Any]:
    res = job.spec.resources
    return worker_group(
        image,
        res.workers,
        res.cpu,
        res.memory,
        res.gpus_per_worker,
        labels,
        volumes,
        "spec.resources.cpu",
        gpu_tolerations(res.gpus_per_worker),
        settings,
        type_nodes=cluster.gpu_nodes(res.gpu_type),
    )


def submitter_pod_template(
    image: str, labels: Mapping[str, str], settings: BuildSettings
) -> dict[str, Any]:
    """KubeRay's default submitter pod (the head's image, its resources, no restarts) under the
    restricted profile. No command: KubeRay fills in its `ray job submit` and the address."""
    pod_spec = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": SUBMITTER_CONTAINER,
                "image": image,
                "resources": {
                    "requests": dict(SUBMITTER_REQUESTS),
                    "limits": dict(SUBMITTER_LIMITS),
                },
            }
        ],
    }
    return pod_template(restricted_pod_spec(pod_spec), labels, settings)


def build_rayjob(
    job: FineTuneJob,
    train_config: TrainConfig,
    cluster: ClusterView,
    settings: BuildSettings,
    tenant: str | None,
) -> dict[str, Any]:
    """The RayJob of `job` in `cluster`, named like the job, in its namespace."""
    spec = job.spec
    image = settings.image_for(spec.resources.gpus_per_worker)
    labels = child_labels(job, cluster.name, tenant)
    metadata = child_metadata(job, cluster, settings, labels)
    metadata["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(job)}
    volumes = pod_volumes(claim_uses(job, train_config.base_model_uri))
    rayjob_spec: dict[str, Any] = {
        "entrypoint": entrypoint(train_config),
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
        # Our trainer retries worker failures in-job (Ray Train) and KubeRay retries the
        # whole job (a new driver and Ray cluster); both resume from the last checkpoint.
        "backoffLimit": spec.backoff_limit,
        "suspend": spec.suspend,
        "rayClusterSpec": {
            # No task may land on the head: the training workers need the worker pods' resources.
            "headGroupSpec": head_group(image, settings, labels, HEAD_PORTS, volumes),
            "workerGroupSpecs": [_worker_group(job, image, labels, volumes, settings, cluster)],
        },
        "submitterPodTemplate": submitter_pod_template(image, labels, settings),
    }
    if spec.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": metadata,
        "spec": rayjob_spec,
    }
