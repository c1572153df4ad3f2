"""The trust model's pure decisions: which of a FineTuneJob's URIs the operator reads itself.

Outside local mode a `file://` URI or plain path anywhere in the job (datasets, output, base
model as resolved) is refused with every field named; in local mode local files are read here
and everything else still goes to the member cluster; progress and the base model's size are
read by the operator only for local files in local mode.
"""

from __future__ import annotations

import pytest
from tests.unit.test_builders_rayjob import make_job
from tests.unit.test_reconcile_finetunejob import T0, cond

from tramontane_operator.reconcile.finetunejob import FAILED, VALIDATED, Observed, decide
from tramontane_operator.reconcile.finetunejob_trust import (
    LOCAL_PATH_REFUSED,
    NOT_READ_BY_OPERATOR,
    is_local,
    local_path_refusal,
    needs_cluster_validation,
    reads_base_model,
    reads_output,
    unread_model_size,
)
from tramontane_workers.contract.estimate import ModelParams

LOCAL = {
    "trainingFiles": [{"uri": "s3://data/a.jsonl"}, {"uri": "file:///var/run/secrets/token"}],
    "validationFiles": [{"uri": "file:///etc/tramontane/kubeconfig"}],
    "output": {"uri": "file:///tmp/out"},
}


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("file:///data/x.jsonl", True),
        ("/data/x.jsonl", True),
        ("relative/x.jsonl", True),
        ("C:/data/x.jsonl", True),
        ("pvc://claim/x.jsonl", False),
        ("s3://bucket/x.jsonl", False),
        ("gs://bucket/x.jsonl", False),
        ("az://container/x.jsonl", False),
        ("hf://datasets/org/set/x.jsonl", False),
    ],
)
def test_local_uris_are_files_and_plain_paths(uri: str, local: bool) -> None:
    assert is_local(uri) is local


def test_outside_local_mode_every_local_field_is_refused_by_name() -> None:
    refusal = local_path_refusal(make_job(LOCAL), "file:///models/m", local_mode=False)
    assert refusal is not None and not refusal.ok and refusal.reason == LOCAL_PATH_REFUSED
    fields = [e.split(":", 1)[0] for e in refusal.errors]
    assert fields == [
        "spec.baseModel.uri",
        "spec.trainingFiles[1].uri",
        "spec.validationFiles[0].uri",
        "spec.output.uri",
    ]
    assert refusal.errors[1] == (
        "spec.trainingFiles[1].uri: file:// URIs are read only in local mode "
        "(got 'file:///var/run/secrets/token'); use pvc://, s3://, gs:// or az://"
    )
    assert refusal.errors[0].endswith("use pvc://, s3://, gs://, az:// or hf://")


def test_a_model_deployments_local_source_is_named_as_such() -> None:
    job = make_job({"baseModel": {"modelDeploymentRef": {"name": "base"}}})
    refusal = local_path_refusal(job, "/models/mistral", local_mode=False)
    assert refusal is not None
    assert refusal.errors[0].startswith("spec.baseModel.modelDeploymentRef (the ModelDeployment")
    assert local_path_refusal(job, None, local_mode=False) is None  # base not known yet


def test_remote_uris_and_local_mode_are_not_refused() -> None:
    assert local_path_refusal(make_job(), "hf://mistralai/m", local_mode=False) is None
    assert local_path_refusal(make_job(LOCAL), "file:///models/m", local_mode=True) is None


def test_a_refusal_fails_validation_with_its_own_reason() -> None:
    refusal = local_path_refusal(make_job(LOCAL), None, local_mode=False)
    decision = decide(make_job(LOCAL), Observed(validation=refusal), T0)
    assert decision.phase == "FailedValidation" and decision.actions == ()
    assert cond(decision, VALIDATED) == ("False", LOCAL_PATH_REFUSED)
    assert cond(decision, FAILED) == ("True", LOCAL_PATH_REFUSED)
    message = next(c.message for c in decision.status.conditions or [] if c.type == VALIDATED)
    assert "spec.output.uri: file:// URIs are read only in local mode" in message


def test_in_local_mode_only_local_datasets_stay_in_the_operator() -> None:
    local = {"trainingFiles": [{"uri": "file:///d/t.jsonl"}], "validationFiles": None}
    assert not needs_cluster_validation(make_job(local))
    assert needs_cluster_validation(make_job(LOCAL))  # one s3:// file: all go to the cluster


def test_the_operator_reads_progress_and_model_size_only_of_local_files_in_local_mode() -> None:
    for reads in (reads_output, reads_base_model):
        assert reads("file:///tmp/out", True) and reads("/tmp/out", True)
        assert not reads("file:///tmp/out", False)
        for uri in ("s3://b/out", "pvc://c/out", "gs://b/out", "hf://org/model"):
            assert not reads(uri, True) and not reads(uri, False)


def test_an_unread_model_size_is_assumed_and_says_why() -> None:
    params = ModelParams.of(unread_model_size("s3://models/mistral"))
    assert params.source == "Assumed" and params.assumption is not None
    assert f"s3://models/mistral: {NOT_READ_BY_OPERATOR}" in params.assumption
