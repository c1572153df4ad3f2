"""The RayJob builder: every rendering validates against KubeRay v1.7.0's RayJob CRD, and the
fields that matter (entrypoint with the trainer config, GPU worker group, job controls, labels,
owner reference only on the hub) come out as the FineTuneJob says."""

from __future__ import annotations

import shlex
from functools import cache
from typing import Any

import pytest
import yaml
from tests.conftest import EXAMPLES_DIR, KUBERAY_CRDS_DIR

from tramontane_api.schema import SchemaValidator
from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_operator.builders import BuildSettings
from tramontane_operator.builders.rayjob import build_rayjob, build_train_config
from tramontane_operator.placement import ClusterView
from tramontane_workers.contract.train_config import ENTRYPOINT_MODULE, config_from_b64

HUB = ClusterView("hub", gpus_capacity={"H100": 8}, in_cluster=True)
MEMBER = ClusterView("aks", gpus_capacity={"H100": 8, "A100-80GB": 8})
SETTINGS = BuildSettings(worker_image="example.com/worker:1", hub_cluster="hub")
BASE_URI = "hf://mistralai/Mistral-7B-Instruct-v0.3"


@cache
def rayjob_validator() -> SchemaValidator:
    crd = yaml.safe_load((KUBERAY_CRDS_DIR / "ray.io_rayjobs.yaml").read_text())
    return SchemaValidator.from_crd(crd, version="v1")


def make_job(spec: dict[str, Any] | None = None, uid: str | None = "uid-1") -> FineTuneJob:
    base: dict[str, Any] = {
        "baseModel": {"uri": BASE_URI},
        "trainingFiles": [{"uri": "s3://data/train.jsonl", "weight": 2}],
        "validationFiles": [{"uri": "s3://data/valid.jsonl"}],
        "hyperparameters": {"trainingSteps": 100, "batchSize": 8},
        "resources": {"workers": 2, "gpusPerWorker": 1, "gpuType": "H100", "cpu": "8"},
        "output": {"uri": "s3://out/job"},
    }
    base.update(spec or {})
    meta: dict[str, Any] = {"name": "tune", "namespace": "team-a", "generation": 1}
    if uid:
        meta["uid"] = uid
    return FineTuneJob.model_validate(
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "FineTuneJob", "metadata": meta,
         "spec": base}
    )  # fmt: skip


def example_jobs() -> list[FineTuneJob]:
    return [
        FineTuneJob.model_validate(doc)
        for path in sorted(EXAMPLES_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "FineTuneJob"
    ]


JOBS: dict[str, FineTuneJob] = {
    **{f"example-{j.metadata.name}": j for j in example_jobs()},
    "defaults": make_job(),
    "cpu-only": make_job({"resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "500m"}}),
    "multi-gpu": make_job(
        {"resources": {"workers": 2, "gpusPerWorker": 4, "gpuType": "H100", "cpu": "32"}}
    ),
    "deadline-suspended": make_job({"activeDeadlineSeconds": 3600, "suspend": True}),
    "no-uid": make_job(uid=None),
}


def render(job: FineTuneJob, cluster: ClusterView = MEMBER) -> dict[str, Any]:
    config = build_train_config(job, BASE_URI, "mistral-7b")
    return build_rayjob(job, config, cluster, SETTINGS, "team")


@pytest.mark.parametrize("name", sorted(JOBS))
@pytest.mark.parametrize("cluster", [HUB, MEMBER], ids=["hub", "member"])
def test_every_rendering_is_a_valid_kuberay_rayjob(name: str, cluster: ClusterView) -> None:
    obj = render(JOBS[name], cluster)
    assert rayjob_validator().validate(obj) == []


def test_entrypoint_carries_the_trainer_config() -> None:
    job = make_job()
    spec = render(job)["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", ENTRYPOINT_MODULE, "--config-b64"]
    config = config_from_b64(argv[4])
    assert config.base_model_uri == BASE_URI and config.base_model_name == "mistral-7b"
    assert [(f.uri, f.weight) for f in config.training_files] == [("s3://data/train.jsonl", 2.0)]
    assert config.validation_files == ["s3://data/valid.jsonl"]
    assert config.output_uri == "s3://out/job" and config.training_steps == 100
    assert (config.num_workers, config.use_gpu, config.cpus_per_worker) == (2, True, 8)
    assert config.job_name == "tune" and config.max_failures == 3


def test_one_training_worker_per_gpu() -> None:
    config = build_train_config(JOBS["multi-gpu"], BASE_URI)
    assert (config.num_workers, config.cpus_per_worker) == (8, 8)
    group = render(JOBS["multi-gpu"])["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 4 and group["rayStartParams"]["num-gpus"] == "4"
    assert group["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_cpu_job_has_no_gpu_anywhere() -> None:
    obj = render(JOBS["cpu-only"])
    group = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["groupName"] == "workers" and "tolerations" not in group["template"]["spec"]
    assert "nvidia.com/gpu" not in group["template"]["spec"]["containers"][0]["resources"]["limits"]
    config = build_train_config(JOBS["cpu-only"], BASE_URI)
    assert (config.use_gpu, config.num_workers, config.cpus_per_worker) == (False, 1, 1)


def test_head_takes_no_training_work() -> None:
    head = render(make_job())["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"] == "example.com/worker:1"


def test_job_controls() -> None:
    spec = render(JOBS["deadline-suspended"])["spec"]
    assert spec["activeDeadlineSeconds"] == 3600 and spec["suspend"] is True
    assert spec["backoffLimit"] == 3 and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["submissionMode"] == "K8sJobMode"
    assert "activeDeadlineSeconds" not in render(make_job())["spec"]


def test_labels_and_owner_reference_only_on_the_hub() -> None:
    member = render(make_job(), MEMBER)["metadata"]
    assert member["name"] == "tune" and member["namespace"] == "team-a"
    assert member["labels"] == {
        "app.kubernetes.io/managed-by": "tramontane",
        "tramontane.dev/owner-kind": "FineTuneJob",
        "tramontane.dev/owner-name": "tune",
        "tramontane.dev/owner-namespace": "team-a",
        "tramontane.dev/owner-uid": "uid-1",
        "tramontane.dev/cluster": "aks",
        "tramontane.dev/tenant": "team",
    }
    assert "ownerReferences" not in member
    (owner,) = render(make_job(), HUB)["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("FineTuneJob", "tune", "uid-1")
    assert "ownerReferences" not in render(JOBS["no-uid"], HUB)["metadata"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"hyperparameters": {"trainingSteps": 10, "batchSize": 1}}, "batchSize"),
        ({"method": {"type": "full"}}, "method.type"),
        ({"resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "lots"}}, "resources.cpu"),
    ],
)
def test_untrainable_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_train_config(make_job(spec), BASE_URI)


def test_lora_settings_come_from_the_spec() -> None:
    lora = {"rank": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj"]}
    config = build_train_config(make_job({"method": {"type": "lora", "lora": lora}}), BASE_URI)
    assert (
        config.lora.rank == 4
        and config.lora.alpha == 8
        and config.lora.target_modules == ["q_proj"]
    )


def test_the_spec_hash_changes_with_what_the_rayjob_is_rendered_from_only() -> None:
    from tramontane_operator.builders.rayjob import rendered_hash, spec_hash

    base = make_job()
    assert rendered_hash(render(base)) == spec_hash(base) and len(spec_hash(base)) == 16
    for changed in ({"hyperparameters": {"trainingSteps": 100, "batchSize": 8,
                                         "learningRate": 3e-4}},
                    {"resources": {"workers": 4, "gpusPerWorker": 1, "gpuType": "H100"}}):  # fmt: skip
        assert spec_hash(make_job(changed)) != spec_hash(base), changed
    for controls in ({"suspend": True}, {"backoffLimit": 0}, {"activeDeadlineSeconds": 60},
                     {"priority": 5}, {"baseModel": {"modelDeploymentRef": {"name": "chat"}}}):  # fmt: skip
        assert spec_hash(make_job(controls)) == spec_hash(base), controls
    assert rendered_hash({"metadata": {}}) is None  # rendered by an older operator: unknown


AKS_SETTINGS = BuildSettings(
    worker_image="acr.azurecr.io/worker:1",
    gpu_worker_image="acr.azurecr.io/worker-gpu:1",
    hub_cluster="hub",
    gpu_node_selector={"kubernetes.azure.com/accelerator": "nvidia"},
    gpu_tolerations=({"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},),
    worker_service_account="tramontane-worker",
    worker_pod_labels={"azure.workload.identity/use": "true"},
    worker_env=({"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": "mlweights"},),
)


def job_pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Head, worker and submitter pod templates of a RayJob."""
    spec = obj["spec"]
    cluster = spec["rayClusterSpec"]
    return [
        cluster["headGroupSpec"]["template"],
        *(group["template"] for group in cluster["workerGroupSpecs"]),
        spec["submitterPodTemplate"],
    ]


@pytest.mark.parametrize(
    ("name", "image"),
    [("defaults", "acr.azurecr.io/worker-gpu:1"), ("cpu-only", "acr.azurecr.io/worker:1")],
)
def test_gpu_jobs_run_the_gpu_image_and_cpu_jobs_the_cpu_image(name: str, image: str) -> None:
    job = JOBS[name]
    obj = build_rayjob(job, build_train_config(job, BASE_URI), MEMBER, AKS_SETTINGS, "team")
    rayjob_validator().validate(obj)
    assert [pod["spec"]["containers"][0]["image"] for pod in job_pods(obj)] == [image] * 3


def test_gpu_job_workers_get_the_gpu_node_defaults_and_every_pod_the_identity() -> None:
    job = JOBS["defaults"]
    obj = build_rayjob(job, build_train_config(job, BASE_URI), MEMBER, AKS_SETTINGS, "team")
    head, worker, submitter = job_pods(obj)
    assert worker["spec"]["nodeSelector"] == {"kubernetes.azure.com/accelerator": "nvidia"}
    assert worker["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    ]
    assert "nodeSelector" not in head["spec"] and "nodeSelector" not in submitter["spec"]
    for pod in (head, worker, submitter):
        assert pod["spec"]["serviceAccountName"] == "tramontane-worker"
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        assert pod["metadata"]["labels"]["tramontane.dev/tenant"] == "team"
        (container,) = pod["spec"]["containers"]
        assert container["env"] == [{"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": "mlweights"}]
    cpu = JOBS["cpu-only"]
    plain = build_rayjob(cpu, build_train_config(cpu, BASE_URI), MEMBER, AKS_SETTINGS, "team")
    assert "nodeSelector" not in job_pods(plain)[1]["spec"]
    bare = build_rayjob(job, build_train_config(job, BASE_URI), MEMBER, SETTINGS, "team")
    assert all("env" not in pod["spec"]["containers"][0] for pod in job_pods(bare))
