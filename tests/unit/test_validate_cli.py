"""`tramontane validate`: examples pass; problems print on stderr as FILE:LINE: field.path: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tramontane_api.validate import validate_object, validate_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tramontane_cli.main", "validate", *args],
        capture_output=True,
        text=True,
        input=stdin,
    )


def test_examples_cover_every_kind() -> None:
    kinds = {
        doc["kind"]
        for path in EXAMPLES
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict)
    }
    assert {"ModelDeployment", "FineTuneJob", "Tenant", "ComputeCluster"} <= kinds


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    checked, problems = validate_text(path.read_text())
    assert checked >= 1
    assert problems == []


def test_cli_accepts_all_examples() -> None:
    result = run_cli(*map(str, EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert f"{len(EXAMPLES)} document(s) checked, 0 problem(s)" in result.stderr


def test_cli_reports_file_document_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """\
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: tramontane.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  namespaces: [team-a]
  fairShareWeight: 0
---
apiVersion: tramontane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: m, namespace: team-a}
spec:
  model: {name: m, source: "hf://a/b"}
  runtime: {engine: transformers}
  scaling: {minReplicas: 4, maxReplicas: 2}
  extra: true
"""
    )
    result = run_cli(str(bad))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"{bad}:10: spec.fairShareWeight: Input should be greater than 0" in lines
    assert f"{bad}:19: spec.extra: unknown field" in lines
    assert result.stdout == f"{bad}:1: skipped v1 Namespace 'team-a': not a tramontane.dev kind\n"
    # Structural problems come first; CEL rules are only evaluated on a well-formed object.
    assert not any("minReplicas" in line for line in lines)
    assert "2 document(s) checked, 2 problem(s)" in result.stderr


def test_cli_reports_cel_rules_and_stdin() -> None:
    text = """\
apiVersion: tramontane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: m}
spec:
  model: {name: m, source: "file:///m"}
  runtime: {engine: transformers}
  scaling: {minReplicas: 4, maxReplicas: 2}
"""
    result = run_cli("-", stdin=text)
    assert result.returncode == 1
    assert (
        result.stderr.splitlines()[0]
        == "-:7: spec.scaling.minReplicas: minReplicas must not exceed maxReplicas"
    )


def test_cli_yaml_error_and_unreadable_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: tramontane.dev/v1alpha1\nkind: [Tenant\n")
    result = run_cli(str(broken))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{broken}:3: invalid YAML")

    missing = run_cli(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_unknown_kind_and_version_are_named() -> None:
    assert [
        str(p) for p in validate_object({"apiVersion": "tramontane.dev/v1alpha1", "kind": "Model"})
    ] == [
        "kind: unknown kind 'Model' (expected one of ['ComputeCluster', 'Evaluation', 'FineTuneJob', 'ModelDeployment', 'Tenant'])"
    ]
    problems = validate_object({"apiVersion": "tramontane.dev/v1", "kind": "Tenant"})
    assert [p.path for p in problems] == ["apiVersion"]


def test_immutable_fields_of_a_fine_tune_job() -> None:
    job = yaml.safe_load((ROOT / "examples" / "finetunejob-autodeploy.yaml").read_text())
    job["spec"]["suspend"] = True  # hyperparameters may change only while suspended
    assert validate_object(job, old=job) == []
    changed = yaml.safe_load(yaml.safe_dump(job))
    changed["spec"]["baseModel"] = {"uri": "hf://mistralai/Mistral-Nemo-Instruct-2407"}
    changed["spec"]["trainingFiles"][0]["weight"] = 5
    changed["spec"]["hyperparameters"]["learningRate"] = 0.0002  # mutable (suspended)
    problems = validate_object(changed, old=job)
    assert sorted(p.path for p in problems) == ["spec.baseModel", "spec.trainingFiles"]
    assert all("immutable" in p.message for p in problems)
    # Without an old object (a create), transition rules do not apply.
    assert validate_object(changed) == []
