"""What may change in a FineTuneJob once it exists, as the generated CRD's transition rules
say (an API server evaluates them with `oldSelf` on every update): each refused change names
its field; the allowed ones pass."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.test_invalid_manifests import FTJ, crd_validator, mutate

SUSPENDED = mutate(FTJ, "spec.suspend", True)


def problems(old: dict[str, Any], path: str, value: Any) -> list[tuple[str, str]]:
    new = mutate(old, path, value)
    return [(p.path, p.message) for p in crd_validator("FineTuneJob").validate(new, old)]


@pytest.mark.parametrize(
    ("path", "value", "where", "fragment"),
    [
        ("spec.baseModel", {"uri": "hf://x/y"}, "spec.baseModel", "baseModel is immutable"),
        ("spec.trainingFiles", [{"uri": "file:///d/other.jsonl"}], "spec.trainingFiles",
         "trainingFiles is immutable"),
        ("spec.validationFiles", [{"uri": "file:///d/v.jsonl"}], "spec.validationFiles",
         "validationFiles is immutable"),
        ("spec.method", {"type": "full"}, "spec.method", "method is immutable"),
        ("spec.output", {"uri": "file:///elsewhere"}, "spec.output", "output is immutable"),
        ("spec.hyperparameters.learningRate", 0.001, "spec.hyperparameters",
         "hyperparameters can change only while the job is suspended"),
        ("spec.resources.workers", 2, "spec.resources",
         "resources can change only while the job is suspended"),
        ("spec.placement", {"clusters": ["onprem"]}, "spec.placement",
         "placement can change only while the job is suspended"),
        ("spec.dryRun", True, "spec.dryRun", "not on once the job exists"),
    ],
)  # fmt: skip
def test_refused_changes_name_the_field(path: str, value: Any, where: str, fragment: str) -> None:
    found = problems(FTJ, path, value)
    assert any(p == where and fragment in m for p, m in found), found


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.hyperparameters.learningRate", 0.001),
        ("spec.resources.workers", 2),
        ("spec.placement", {"clusters": ["onprem"]}),
    ],
)
def test_scheduling_fields_change_while_suspended(path: str, value: Any) -> None:
    assert problems(SUSPENDED, path, value) == []


def test_immutable_fields_stay_immutable_while_suspended() -> None:
    assert problems(SUSPENDED, "spec.output", {"uri": "file:///elsewhere"})


def test_suspending_and_changing_in_one_update_is_refused() -> None:
    new = mutate(mutate(FTJ, "spec.suspend", True), "spec.resources.workers", 4)
    found = crd_validator("FineTuneJob").validate(new, FTJ)
    assert [p.path for p in found] == ["spec.resources"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.suspend", True),
        ("spec.priority", 10),
        ("spec.activeDeadlineSeconds", 3600),
        ("spec.backoffLimit", 0),
        ("spec.autoDeploy", {"modelDeploymentRef": {"name": "m"}, "adapterName": "a"}),
    ],
)
def test_job_controls_change_at_any_time(path: str, value: Any) -> None:
    assert problems(FTJ, path, value) == []


def test_dry_run_can_be_turned_off() -> None:
    assert problems(mutate(FTJ, "spec.dryRun", True), "spec.dryRun", False) == []
