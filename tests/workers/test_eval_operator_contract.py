"""The operator's side of the evaluator's contract, with the real evaluator: the entrypoint the
operator renders into an Evaluation's RayJob runs `python -m tramontane_workers.evaluate` on
the tiny Mistral (what KubeRay's submitter would run), and what it prints is what the operator
judges: scores and deltas in the status, Failed naming the missed threshold; a dataset that
cannot be read is an Error carrying the evaluator's own message."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tramontane_api.v1alpha1 import Evaluation, ModelDeployment
from tramontane_operator.builders import BuildSettings
from tramontane_operator.builders.evaluation_rayjob import build_eval_config, build_eval_rayjob
from tramontane_operator.placement import ClusterView
from tramontane_operator.reconcile.evaluation import Observed, decide
from tramontane_operator.reconcile.evaluation_inputs import resolve
from tramontane_workers.contract.eval_config import last_result

NOW = datetime(2026, 1, 1, tzinfo=UTC)
QA = [("What is the capital of France?", "Paris"), ("Who wrote Hamlet?", "William Shakespeare")]


def _manifests(model: Path, adapter: Path, data: str) -> tuple[Evaluation, ModelDeployment]:
    md = ModelDeployment.model_validate({
        "apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "tiny", "namespace": "team-a"},
        "spec": {"model": {"name": "tiny", "source": model.as_uri(), "format": "hf"},
                 "runtime": {"engine": "transformers", "dtype": "float32"},
                 "resources": {"cpu": "1", "memory": "2Gi"}},
    })  # fmt: skip
    ev = Evaluation.model_validate({
        "apiVersion": "tramontane.dev/v1alpha1", "kind": "Evaluation",
        "metadata": {"name": "qa", "namespace": "team-a", "generation": 1},
        "spec": {
            "target": {"modelDeploymentRef": {"name": "tiny"}, "adapterUri": adapter.as_uri()},
            "baseline": {"modelDeploymentRef": {"name": "tiny"}},
            "dataset": {"uri": data},
            "metrics": [{"name": "exactMatch", "min": 0.9}, {"name": "tokenF1"},
                        {"name": "validationLoss", "minDelta": -1000.0}],
            "generation": {"maxTokens": 4, "batchSize": 2},
        },
    })  # fmt: skip
    return ev, md


def _run(ev: Evaluation, md: ModelDeployment) -> tuple[int, str]:
    """Render the RayJob as the operator does and run its entrypoint as the submitter would."""
    resolution = resolve(ev, {"tiny": md}, {}, local_mode=True)
    assert resolution.target is not None, resolution
    config = build_eval_config(ev, resolution.target, resolution.baseline, md)
    settings = BuildSettings(worker_image="example.com/worker:1", hub_cluster="hub")
    rayjob = build_eval_rayjob(ev, config, md, ClusterView("aks"), settings, None)
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "tramontane_workers.evaluate"]
    done = subprocess.run(
        [sys.executable, *argv[1:]], capture_output=True, text=True, timeout=600, check=False
    )
    return done.returncode, done.stdout


def _running(ev: Evaluation) -> Evaluation:
    """`ev` as the operator left it when it created the RayJob (the way there is the phase
    machine's own tests')."""
    status: dict[str, Any] = {
        "phase": "Running", "observedGeneration": 1, "cluster": "aks", "rayJob": "qa-eval",
        "conditions": [{"type": "Admitted", "status": "True", "reason": "QuotaAvailable",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }  # fmt: skip
    return Evaluation.model_validate(
        {**ev.model_dump(by_alias=True, mode="json"), "status": status}
    )


RAYJOB_DONE = {
    "metadata": {"annotations": {"tramontane.dev/run": "1"}},
    "status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
}


def test_the_real_evaluator_runs_what_the_operator_renders_and_its_scores_are_judged(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": a}]}) + "\n"
        for q, a in QA
    ))  # fmt: skip
    ev, md = _manifests(tiny_model_dir, tiny_adapters["alpha"], data.as_uri())
    code, stdout = _run(ev, md)
    result = last_result(stdout)
    assert code == 0 and result is not None and result.state == "succeeded", stdout[-2000:]
    decision = decide(_running(ev), Observed(rayjob=RAYJOB_DONE, result=result), NOW)
    status = decision.status
    # A random adapter recites nothing: exactMatch misses its threshold; the rest are scored.
    assert decision.phase == "Failed", status
    by = {r.metric: r for r in status.results or []}
    assert by["exactMatch"].score is not None and by["exactMatch"].score < 0.9
    assert by["exactMatch"].passed is False and by["tokenF1"].passed is None
    assert by["validationLoss"].delta is not None and by["validationLoss"].passed is True
    assert status.samples == len(QA)
    assert status.message is not None and status.message.startswith("exactMatch ")
    assert "misses >= 0.9" in status.message


def test_an_unreadable_dataset_is_an_error_with_the_evaluators_message(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    missing = (tmp_path / "missing.jsonl").as_uri()
    ev, md = _manifests(tiny_model_dir, tiny_adapters["alpha"], missing)
    code, stdout = _run(ev, md)
    result = last_result(stdout)
    assert code != 0 and result is not None and result.state == "failed"
    failed_rayjob = {**RAYJOB_DONE, "status": {"jobDeploymentStatus": "Failed"}}
    decision = decide(_running(ev), Observed(rayjob=failed_rayjob, result=result), NOW)
    assert decision.phase == "Error"
    assert decision.status.message is not None and "missing.jsonl" in decision.status.message
