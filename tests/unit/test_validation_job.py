"""The validation Job of a FineTuneJob with pvc:// or object-store datasets, and how its
outcome reads.

The Job's pod template validates against the Kubernetes PodTemplateSpec schema embedded in
KubeRay v1.7.0's RayJob CRD; it runs the workers' report entry point on every dataset with the
claims mounted read-only (nothing mounted for object stores), a per-file byte bound, a
deadline, no API token, the restricted security context, and a File termination message. Reading: a report from a termination
message wins; a pending pod names the missing claim; a failed Job says why; garbage in a
termination message is never a crash.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from tests.unit.test_builders_rayjob import (
    AKS_SETTINGS,
    MEMBER,
    SETTINGS,
    make_job,
    rayjob_validator,
)

from tramontane_api.schema import SchemaValidator
from tramontane_operator.builders.validation_job import (
    MAX_FILE_BYTES,
    build_validation_job,
    validation_job_name,
)
from tramontane_operator.reconcile.finetunejob_validation import (
    RETRY_AFTER_S,
    needs_cluster_validation,
    read_validation_job,
    uses_claims,
)
from tramontane_workers.contract.datasets_report import DatasetsReport, ReportedError

PVC_SPEC = {
    "trainingFiles": [{"uri": "pvc://datasets/train.jsonl"}, {"uri": "s3://data/more.jsonl"}],
    "validationFiles": [{"uri": "pvc://held-out/valid.jsonl"}],
    "output": {"uri": "pvc://checkpoints/tune"},
}
WHERE = "in aks (Job tune-validate)"


@cache
def pod_template_validator() -> SchemaValidator:
    """Kubernetes' PodTemplateSpec schema, as KubeRay's CRD embeds it for the head group."""
    schema = rayjob_validator().schema
    for key in ("spec", "rayClusterSpec", "headGroupSpec", "template"):
        schema = schema["properties"][key]
    return SchemaValidator(schema)


def test_the_job_reads_datasets_as_the_training_pods_do() -> None:
    """The workers' service account, pod labels and environment (on AKS: Workload Identity
    and the storage account adlfs resolves az:// in), so an az:// dataset the trainer can read
    is one the validation Job can read; the Job's own labels still win."""
    obj = build_validation_job(make_job(PVC_SPEC), MEMBER, AKS_SETTINGS, "team")
    template = obj["spec"]["template"]
    assert pod_template_validator().validate(template) == []
    pod = template["spec"]
    assert pod["serviceAccountName"] == "tramontane-worker"
    assert pod["automountServiceAccountToken"] is False  # still no Kubernetes API token
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["metadata"]["labels"]["tramontane.dev/role"] == "dataset-validation"
    (container,) = pod["containers"]
    assert container["env"] == [{"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": "mlweights"}]
    plain = build_validation_job(make_job(PVC_SPEC), MEMBER, SETTINGS, "team")["spec"]["template"]
    assert "serviceAccountName" not in plain["spec"]  # the namespace's default
    assert "env" not in plain["spec"]["containers"][0]


def test_the_job_runs_the_report_on_every_dataset_with_read_only_claims() -> None:
    obj = build_validation_job(make_job(PVC_SPEC), MEMBER, SETTINGS, "team")
    assert (obj["apiVersion"], obj["kind"]) == ("batch/v1", "Job")
    assert obj["metadata"]["name"] == "tune-validate"
    assert obj["metadata"]["labels"]["tramontane.dev/owner-name"] == "tune"
    assert obj["metadata"]["labels"]["tramontane.dev/role"] == "dataset-validation"
    spec = obj["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0
    template = spec["template"]
    assert pod_template_validator().validate(template) == []
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == [
        "python", "-m", "tramontane_workers.contract.datasets_report",
        "--training", "pvc://datasets/train.jsonl", "s3://data/more.jsonl",
        "--validation", "pvc://held-out/valid.jsonl",
        "--max-seq-len", "4096", "--max-file-bytes", str(MAX_FILE_BYTES),
        "--output", "/dev/termination-log",
    ]  # fmt: skip
    assert MAX_FILE_BYTES > 0 and pod["automountServiceAccountToken"] is False
    assert container["terminationMessagePolicy"] == "File"
    assert container["image"] == SETTINGS.worker_image
    # Only the datasets' claims, read-only; not the output's.
    assert pod["volumes"] == [
        {"name": "pvc-datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
        {"name": "pvc-held-out", "persistentVolumeClaim": {"claimName": "held-out", "readOnly": True}},
    ]  # fmt: skip
    assert all(m["readOnly"] for m in container["volumeMounts"])


def test_the_job_name_fits_a_label_value() -> None:
    long_job = make_job(PVC_SPEC).model_copy(deep=True)
    long_job.metadata.name = "x" * 70
    name = validation_job_name(long_job)
    assert len(name) <= 63 and name.endswith("-validate")


def test_jobs_with_any_dataset_not_a_local_file_are_validated_in_cluster() -> None:
    assert needs_cluster_validation(make_job(PVC_SPEC))
    assert needs_cluster_validation(make_job({"output": {"uri": "pvc://out/x"}}))  # s3 datasets
    for uri in ("gs://b/t.jsonl", "az://c/t.jsonl", "pvc://c/t.jsonl"):
        assert needs_cluster_validation(make_job({"trainingFiles": [{"uri": uri}]})), uri
    local = {"trainingFiles": [{"uri": "file:///data/t.jsonl"}], "validationFiles": None}
    assert not needs_cluster_validation(make_job(local))
    mixed = {**local, "validationFiles": [{"uri": "s3://data/v.jsonl"}]}
    assert needs_cluster_validation(make_job(mixed))


def test_object_store_datasets_get_a_job_with_no_volume_in_the_jobs_namespace() -> None:
    obj = build_validation_job(make_job(), MEMBER, SETTINGS, "team")
    assert obj["metadata"]["namespace"] == "team-a"
    spec = obj["spec"]
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod_template_validator().validate(spec["template"]) == []
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]
    command = pod["containers"][0]["command"]
    training = command.index("--training")
    assert command[training + 1 : training + 4] == [
        "s3://data/train.jsonl", "--validation", "s3://data/valid.jsonl"
    ]  # fmt: skip
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_any_claim_pins_a_job_to_its_cluster() -> None:
    assert uses_claims(make_job(PVC_SPEC))
    assert uses_claims(make_job({"output": {"uri": "pvc://out/x"}}))
    assert uses_claims(make_job({"baseModel": {"uri": "pvc://models/m"}}))
    assert not uses_claims(make_job())


def test_a_bad_claim_name_names_the_field() -> None:
    spec = {**PVC_SPEC, "validationFiles": [{"uri": "pvc://Held_Out/v.jsonl"}]}
    with pytest.raises(ValueError, match=r"^spec\.validationFiles\[0\]\.uri: claim 'Held_Out'"):
        build_validation_job(make_job(spec), MEMBER, SETTINGS, "team")


def pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "tune-validate-abcde"}, "status": status}


def terminated(message: str | None, code: int = 0, **kw: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                             "finishedAt": "2026-01-01T00:00:00Z", **kw}  # fmt: skip
    if message is not None:
        state["message"] = message
    return pod(phase="Succeeded", containerStatuses=[{"name": "v", "state": {"terminated": state}}])


def job_with(condition: str | None = None, **kw: Any) -> dict[str, Any]:
    if condition is None:
        return {"status": {}}
    cond = {"type": condition, "status": "True",
            "lastTransitionTime": "2026-01-01T00:00:00Z", **kw}  # fmt: skip
    return {"status": {"conditions": [cond]}}


def test_the_report_in_a_termination_message_is_the_outcome() -> None:
    report = DatasetsReport(
        ok=False, lines=5, bad_lines=1,
        errors=[ReportedError(uri="pvc://d/t.jsonl", line=2, message="bad")],
    )  # fmt: skip
    outcome = read_validation_job(job_with("Complete"), [terminated(report.to_json())], WHERE)
    assert outcome.report == report and not outcome.failed


def test_an_unreadable_report_fails_and_is_retried_later() -> None:
    report = DatasetsReport.failed_to_read("pvc://d/t.jsonl: No such file")
    outcome = read_validation_job(job_with("Complete"), [terminated(report.to_json())], WHERE)
    assert outcome.report is None and outcome.failed
    assert outcome.message == "cannot read: pvc://d/t.jsonl: No such file"
    finished = datetime(2026, 1, 1, tzinfo=UTC)
    assert not outcome.retry_due(finished + timedelta(seconds=RETRY_AFTER_S - 1))
    assert outcome.retry_due(finished + timedelta(seconds=RETRY_AFTER_S))


def test_a_pending_pod_names_the_missing_claim() -> None:
    unschedulable = pod(phase="Pending", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": '0/3 nodes are available: persistentvolumeclaim "data" not found.'}])  # fmt: skip
    outcome = read_validation_job(job_with(), [unschedulable], WHERE)
    assert not outcome.failed and outcome.report is None
    assert outcome.message == (
        f"validating the datasets {WHERE}: pod Pending: "
        '0/3 nodes are available: persistentvolumeclaim "data" not found.'
    )


def test_an_image_pull_error_is_named() -> None:
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "w:1"'}
    outcome = read_validation_job(
        job_with(), [pod(containerStatuses=[{"name": "v", "state": {"waiting": waiting}}])], WHERE
    )
    assert outcome.message.endswith('container ImagePullBackOff: Back-off pulling image "w:1"')


@pytest.mark.parametrize("garbage", [None, "", "{not json", '{"ok": "maybe"}', "Traceback..."])
def test_a_failed_job_without_a_report_says_why(garbage: str | None) -> None:
    failed = job_with("Failed", reason="DeadlineExceeded", message="Job was active longer")
    outcome = read_validation_job(failed, [terminated(garbage, code=137)], WHERE)
    assert outcome.failed and outcome.report is None
    assert outcome.message.startswith(
        f"validation {WHERE} failed (DeadlineExceeded: Job was active longer): "
        "container Error (exit code 137)"
    )
    assert outcome.message.endswith("(no report)")


def test_a_complete_job_without_a_report_is_a_failure() -> None:
    outcome = read_validation_job(job_with("Complete"), [terminated(None)], WHERE)
    assert outcome.failed and "completed without a report" in outcome.message


def test_a_running_job_without_pods_yet_is_just_running() -> None:
    outcome = read_validation_job(job_with(), [], WHERE)
    assert outcome.message == f"validating the datasets {WHERE}" and not outcome.failed
