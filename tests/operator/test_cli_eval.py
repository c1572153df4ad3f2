"""`tramontane eval run|get|show` against the emulated hub and member, the operator in-process
and a fake KubeRay whose submitter pod prints the evaluator's real `result_line`s (as in
test_evaluation.py): run --wait to Passed and to Failed, a re-run with a new runId, the list,
one object, the scores table, -o json, the PNG plot, and bad input with its exit codes.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fake_kubelet import FakeKubelet
from fake_rayjob import FakeRayJobs
from manifests import AKS, NS, model_deployment
from operator_harness import Clusters, OperatorRun, eventually
from test_cli_tenant import cli, kubeconfig, run_main
from test_evaluation import BASE_SCORES, GOOD_SCORES, phase, rayjob, result, submitter_pod
from test_finetunejob import GOOD, dataset
from tramontane_kube import MODELDEPLOYMENT, KubeClient

pytestmark = pytest.mark.usefixtures("fast_poll")
EVS = "tramontane.dev/v1alpha1/evaluations"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def kubelet(clusters: Clusters) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(clusters.all, {})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def rayjobs(clusters: Clusters, kubelet: FakeKubelet) -> AsyncIterator[FakeRayJobs]:
    fake = FakeRayJobs(clusters.all, submitters=True)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def home(
    tmp_path: Path, clusters: Clusters, api: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Local mode "running" against the emulated hub, with the ModelDeployment to score."""
    local = tmp_path / "home" / "local"
    local.mkdir(parents=True)
    (local / "kubeconfig").write_text(yaml.safe_dump(kubeconfig(clusters)))
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRAMONTANE_LOCAL", raising=False)
    await api.create(MODELDEPLOYMENT, model_deployment("chat"))
    return local


def manifest(tmp_path: Path, name: str = "qa", lines: list[Any] | None = None,
             **spec: Any) -> Path:  # fmt: skip
    body: dict[str, Any] = {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "Evaluation",
        "metadata": {"name": name},
        "spec": {
            "target": {"modelDeploymentRef": {"name": "chat"}, "adapterUri": "hf://acme/qa-lora"},
            "baseline": {"modelDeploymentRef": {"name": "chat"}},
            "dataset": {"uri": dataset(tmp_path / f"{name}.jsonl", lines or [GOOD] * 3)},
            "metrics": [
                {"name": "exactMatch", "min": 0.8},
                {"name": "tokenF1", "minDelta": 0.1},
                {"name": "validationLoss", "max": 1.5},
            ],
            "failingSamples": 2,
            **spec,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def start_run(*argv: str) -> asyncio.Task[int]:
    return asyncio.create_task(asyncio.to_thread(run_main, ["eval", "run", *argv]))


async def test_run_wait_passes_then_get_show_plot_and_a_rerun(
    tmp_path: Path, clusters: Clusters, rayjobs: FakeRayJobs, operator: OperatorRun,
    home: Path, capsys: Any,
) -> None:  # fmt: skip
    path = manifest(tmp_path)
    capsys.readouterr()
    waiting = await start_run("-f", str(path), "--local", "--wait", "--interval", "0.1")
    await eventually(lambda: rayjob(clusters))
    await submitter_pod(rayjobs, clusters, "qa-eval")
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result("running", done=1))
    await eventually(lambda: (clusters.hub.emulator.stored(EVS, NS, "qa") or {})
                     .get("status", {}).get("done") == 1)  # fmt: skip
    await asyncio.sleep(0.3)  # the CLI sees 1/3
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result(
        target=GOOD_SCORES, baseline=BASE_SCORES, failing=2))  # fmt: skip
    rayjobs.finish("qa-eval")
    code = await asyncio.wait_for(waiting, 30)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines() == [
        f"evaluation {NS}/qa created (local mode)",
        "evaluation qa Passed: exactMatch 0.9, tokenF1 0.8, validationLoss 1",
    ]
    assert "Running 1/3 samples" in err.splitlines()
    assert "Traceback" not in err

    code, out, _ = await cli(capsys, "eval", "get", "--local")
    header, row = out.splitlines()
    assert code == 0 and header.split() == ["NAME", "TARGET", "PHASE", "SAMPLES", "PASSED", "AGE"]
    assert row.split()[:5] == ["qa", "chat+hf://acme/qa-lora", "Passed", "3/3", "3/3"]

    code, out, _ = await cli(capsys, "eval", "get", "qa", "--local")
    assert code == 0 and out.startswith(f"Evaluation {NS}/qa\n  Phase: Passed")
    assert "  Baseline: chat\n" in out and "  Thresholds passed: 3/3" in out
    assert "  Passed=True ThresholdsMet: every threshold met" in out

    code, out, _ = await cli(capsys, "eval", "get", "qa", "--local", "-o", "json")
    obj = json.loads(out)
    assert code == 0 and obj["kind"] == "Evaluation" and obj["status"]["phase"] == "Passed"
    code, out, _ = await cli(capsys, "eval", "get", "--local", "-o", "yaml")
    assert code == 0 and [i["metadata"]["name"] for i in yaml.safe_load(out)["items"]] == ["qa"]

    plot = tmp_path / "qa.png"
    code, out, err = await cli(capsys, "eval", "show", "qa", "--local", "--plot", str(plot))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Evaluation {NS}/qa: Passed 3/3 samples"
    start = next(i for i, line in enumerate(lines) if line.startswith("METRIC"))
    table = lines[start:]
    assert table[0].split() == ["METRIC", "SCORE", "BASELINE", "DELTA", "THRESHOLD", "RESULT"]
    assert [r.split() for r in table[1:4]] == [
        ["exactMatch", "0.9", "0.3", "+0.6", ">=", "0.8", "pass"],
        ["tokenF1", "0.8", "0.5", "+0.3", "delta", ">=", "0.1", "pass"],
        ["validationLoss", "1", "1.4", "-0.4", "<=", "1.5", "pass"],
    ]
    failing = lines[lines.index("Failing samples:") + 1 :]
    assert failing[0].split() == ["LINE", "INPUT", "EXPECTED", "GOT"]
    assert [r.split() for r in failing[1:3]] == [["1", "Q0?", "Paris", "Lyon"],
                                                 ["2", "Q1?", "Paris", "Lyon"]]  # fmt: skip
    assert out.rstrip().endswith(f"plot written to {plot}")
    width, height = png_size(plot)
    assert 300 <= width <= 1200 and 200 <= height <= 600
    first_png = plot.read_bytes()

    # The same manifest again: a re-run (new runId), followed to its own end, other scores.
    waiting = await start_run("-f", str(path), "--local", "--wait", "--interval", "0.1")
    first_uid = (rayjob(clusters) or {})["metadata"]["uid"]
    await eventually(lambda: (rayjob(clusters) or {}).get("metadata", {}).get("uid")
                     not in (None, first_uid))  # fmt: skip
    await submitter_pod(rayjobs, clusters, "qa-eval")
    better = {"exactMatch": 1.0, "tokenF1": 0.95, "validationLoss": 0.4}
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result(target=better, baseline=BASE_SCORES))
    rayjobs.finish("qa-eval")
    code = await asyncio.wait_for(waiting, 30)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0].startswith(
        f"evaluation {NS}/qa exists: running it again (local mode) with spec.runId=cli-"
    )
    assert (
        out.splitlines()[1]
        == "evaluation qa Passed: exactMatch 1, tokenF1 0.95, validationLoss 0.4"
    )
    assert phase(clusters) == "Passed"
    code, _, err = await cli(capsys, "eval", "show", "qa", "--local", "--plot", str(plot))
    assert code == 0, err
    assert png_size(plot)[0] > 0 and plot.read_bytes() != first_png  # the bars moved


async def test_run_wait_fails_naming_each_missed_threshold(
    tmp_path: Path, clusters: Clusters, rayjobs: FakeRayJobs, operator: OperatorRun,
    home: Path, capsys: Any,
) -> None:  # fmt: skip
    path = manifest(tmp_path)
    capsys.readouterr()
    waiting = await start_run("-f", str(path), "--local", "--wait", "--interval", "0.1")
    await eventually(lambda: rayjob(clusters))
    await submitter_pod(rayjobs, clusters, "qa-eval")
    worse = {"exactMatch": 0.5, "tokenF1": 0.55, "validationLoss": 1.3}
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result(target=worse, baseline=BASE_SCORES))
    rayjobs.finish("qa-eval")
    code = await asyncio.wait_for(waiting, 30)
    _, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines()[-3:] == [
        "evaluation qa Failed: exactMatch 0.5, tokenF1 0.55, validationLoss 1.3",
        "  exactMatch 0.5 misses >= 0.8 (baseline 0.3, delta 0.2)",
        "  tokenF1 0.55 misses delta >= 0.1 (baseline 0.5, delta 0.05)",
    ]
    code, out, _ = await cli(capsys, "eval", "show", "qa", "--local")
    row = next(line for line in out.splitlines() if line.startswith("exactMatch"))
    assert code == 0 and row.split() == ["exactMatch", "0.5", "0.3", "+0.2", ">=", "0.8", "FAIL"]
    assert out.count("FAIL") == 2
    code, out, _ = await cli(capsys, "eval", "get", "--local")
    assert out.splitlines()[1].split()[2:5] == ["Failed", "3/3", "1/3"]


async def test_run_wait_ends_in_error_with_the_reason(
    tmp_path: Path, clusters: Clusters, rayjobs: FakeRayJobs, operator: OperatorRun,
    home: Path, capsys: Any,
) -> None:  # fmt: skip
    path = manifest(tmp_path)
    capsys.readouterr()
    waiting = await start_run("-f", str(path), "--local", "--wait", "--interval", "0.1")
    await eventually(lambda: rayjob(clusters))
    await submitter_pod(rayjobs, clusters, "qa-eval")
    rayjobs.append_log(clusters[AKS], NS, "qa-eval", "CUDA out of memory\n")
    rayjobs.finish("qa-eval", "FAILED")
    code = await asyncio.wait_for(waiting, 30)
    _, err = capsys.readouterr()
    assert code == 1 and phase(clusters) == "Error"
    last = err.splitlines()[-1]
    assert last.startswith("evaluation qa Error: ") and "Traceback" not in err
    evaluated = next(c for c in clusters.hub.emulator.stored(EVS, NS, "qa")["status"]["conditions"]
                     if c["type"] == "Evaluated")  # fmt: skip
    assert last == f"evaluation qa Error: {evaluated['reason']}: {evaluated['message']}"
    code, out, _ = await cli(capsys, "eval", "show", "qa", "--local")
    assert code == 0 and "No scores yet." in out and f"Error: {evaluated['reason']}" in out
    code, _, err = await cli(capsys, "eval", "show", "qa", "--local", "--plot", "x.png")
    assert code == 1 and err.strip() == "--plot: evaluation qa has no scores yet"


def test_the_followed_summary_says_queue_position_and_samples() -> None:
    from tramontane_cli.commands.eval import summary

    queued = {"status": {"phase": "Queued", "queuePosition": 2, "message": "tenant GPUs in use"}}
    assert summary(queued) == "Queued queue position 2 (tenant GPUs in use)"
    running = {"status": {"phase": "Running", "samples": 40, "done": 12}}
    assert summary(running) == "Running 12/40 samples"
    assert summary({}) == "Pending"


async def test_bad_input_is_refused_before_creating_anything(
    tmp_path: Path, clusters: Clusters, home: Path, capsys: Any,
) -> None:  # fmt: skip
    missing = tmp_path / "nope.yaml"
    code, _, err = await cli(capsys, "eval", "run", "-f", str(missing), "--local")
    assert code == 2 and err.strip() == f"{missing}: cannot read: No such file or directory"

    bad = manifest(tmp_path, "bad", lines=[GOOD, '{"messages": [}', GOOD])
    code, _, err = await cli(capsys, "eval", "run", "-f", str(bad), "--local")
    assert code == 1 and f"{(tmp_path / 'bad.jsonl').as_uri()}:2: " in err
    assert err.strip().endswith(
        f"{bad}: the evaluation's dataset is invalid (see above); not created"
    )

    # A line whose last message is not the assistant's expected answer: evaluation rules.
    unanswered = {"messages": [{"role": "user", "content": "Capital of France?"}]}
    noanswer = manifest(tmp_path, "noanswer", lines=[GOOD, GOOD, unanswered])
    code, _, err = await cli(capsys, "eval", "run", "-f", str(noanswer), "--local")
    assert code == 1 and f"{(tmp_path / 'noanswer.jsonl').as_uri()}:3: " in err

    wrong = manifest(tmp_path, "wrong", metrics=[{"name": "exactMatch", "min": 2, "max": 1}])
    line = wrong.read_text().splitlines().index("    min: 2") + 1
    code, _, err = await cli(capsys, "eval", "run", "-f", str(wrong), "--local")
    assert (
        code == 1 and err.strip() == f"{wrong}:{line}: spec.metrics[0].min: min must not exceed max"
    )

    config = tmp_path / "kc"
    config.write_text(yaml.safe_dump(kubeconfig(clusters)))
    good = manifest(tmp_path, "good")
    code, _, err = await cli(capsys, "eval", "run", "-f", str(good), "--kubeconfig", str(config))
    assert code == 1 and err.strip() == (
        f"{good}: spec.dataset.uri: {(tmp_path / 'good.jsonl').as_uri()}: file:// is only "
        "readable in local mode (--local); put it where the cluster can read it (az://, s3://, "
        "gs:// or pvc://)")  # fmt: skip

    code, _, err = await cli(capsys, "eval", "run", "-f", str(good), "--local", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err
    code, _, err = await cli(capsys, "eval", "get", "missing", "--local")
    assert code == 1 and err.strip() == f"Evaluation 'missing' not found in namespace {NS}"
    code, _, err = await cli(capsys, "eval", "show", "missing", "--local", "--plot", "x.png")
    assert code == 1 and err.strip() == f"Evaluation 'missing' not found in namespace {NS}"
    code, out, _ = await cli(capsys, "eval", "get", "--local")
    assert code == 0 and out.strip() == f"No evaluations found in namespace {NS}."
    assert clusters.hub.emulator.stored_all(EVS) == []  # nothing was created
    for text in capsys.readouterr():
        assert "Traceback" not in text


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tramontane_cli import evalplot
    from tramontane_cli.errors import CliError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    scores = [{"metric": "exactMatch", "score": 1.0, "threshold": ">= 1", "passed": True}]
    with pytest.raises(CliError) as raised:
        evalplot.write(str(tmp_path / "x.png"), "qa", scores)
    assert raised.value.code == 2 and raised.value.message == (
        "--plot: needs matplotlib, which is not installed: "
        "pip install 'tramontane[plot]' (the plot extra)"
    )
    assert not (tmp_path / "x.png").exists()
