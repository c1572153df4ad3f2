"""The evaluator end to end: `python -m tramontane_workers.evaluate` on the tiny Mistral with
an adapter the trainer really trained on a small Q&A set, against the base model as baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.workers.test_train import _config, _write_qa

from tramontane_workers.contract.eval_config import (
    RESULT_FILE,
    EvalConfig,
    EvalResult,
    entrypoint,
    last_result,
)
from tramontane_workers.contract.train_config import ADAPTER_DIR

ROOT = Path(__file__).resolve().parents[2]
TOOL_LINE = {
    "messages": [
        {"role": "user", "content": "What is the weather in Nice?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "abcdefghi", "function": {"name": "weather", "arguments": '{"city":"Nice"}'}}
            ],
        },
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
}


@pytest.fixture(scope="module")
def qa_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter trained (bare trainer loop, no Ray) until greedy decoding recites QA."""
    from tramontane_workers.train.loop import WorkerEnv, train

    root = tmp_path_factory.mktemp("qa-adapter")
    data, out = _write_qa(root / "qa.jsonl"), root / "out"
    progress = train(_config(tiny_model_dir, data, out), WorkerEnv())
    assert progress.state == "succeeded"
    return out / ADAPTER_DIR


def _scores(scores: list[object]) -> dict[str, tuple[float | None, int]]:
    return {s.metric: (s.score, s.samples) for s in scores}  # type: ignore[attr-defined]


def test_trained_adapter_scores_where_the_base_model_does_not(
    tiny_model_dir: Path, qa_adapter: Path, tmp_path: Path
) -> None:
    dataset = _write_qa(tmp_path / "eval.jsonl")
    with dataset.open("a") as out:
        out.write(json.dumps(TOOL_LINE) + "\n")  # line 4: a tool call neither model makes
    config = EvalConfig(
        name="qa",
        dataset_uri=dataset.as_uri(),
        target={
            "label": "tiny:qa",
            "base_model_uri": tiny_model_dir.as_uri(),
            "adapter_uri": qa_adapter.as_uri(),
        },
        baseline={"label": "base", "base_model_uri": tiny_model_dir.as_uri()},
        metrics=[
            "exactMatch",
            "normalizedMatch",
            "tokenF1",
            "toolCallAccuracy",
            "jsonSchemaValid",
            "validationLoss",
            "meanTokenAccuracy",
        ],
        max_tokens=8,
        batch_size=4,
        output_uri=(tmp_path / "out").as_uri(),
    )
    env = {"PYTHONPATH": "core:operator:router:workers:cli:local:.", "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, *entrypoint(config).split()[1:]]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    result = last_result(done.stdout)
    assert result is not None, done.stdout[-2000:]
    assert (result.state, result.samples, result.done) == ("succeeded", 4, 8)  # 4 x 2 models
    assert result.samples_per_second is not None and result.samples_per_second > 0
    target, baseline = _scores(result.target), _scores(result.baseline)
    assert list(target) == list(config.metrics) == list(baseline)
    # the adapter recites the three answers; the base model's random weights do not
    assert target["exactMatch"] == (1.0, 3) and baseline["exactMatch"] == (0.0, 3)
    assert target["normalizedMatch"] == (1.0, 3) and target["tokenF1"] == (1.0, 3)
    assert target["toolCallAccuracy"] == (0.0, 1) == baseline["toolCallAccuracy"]
    assert target["jsonSchemaValid"] == (None, 0)  # no line has a response_format
    # loss and accuracy cover all four expected answers (the tool call's tokens included, which
    # the adapter never learnt: test_validation_loss_is_the_trainers checks the values)
    assert target["validationLoss"][1] == 4 == baseline["meanTokenAccuracy"][1]
    assert (target["meanTokenAccuracy"][0] or 0) > (baseline["meanTokenAccuracy"][0] or 0)

    (failing,) = result.failing_samples  # the target's only miss: the tool call
    assert (failing.line, failing.input) == (4, "What is the weather in Nice?")
    assert json.loads(failing.expected) == [{"name": "weather", "arguments": {"city": "Nice"}}]
    assert failing.got and failing.got != failing.expected

    lines = [line for line in done.stdout.splitlines() if line.startswith("TRAMONTANE_EVAL ")]
    assert len(lines) >= 3  # a running update before the final one
    first = last_result(lines[0])
    assert first is not None and (first.state, first.done) == ("running", 0)
    written = EvalResult.model_validate_json((tmp_path / "out" / RESULT_FILE).read_text())
    assert written == result


async def test_validation_loss_is_the_trainers(
    tiny_model_dir: Path, qa_adapter: Path, tmp_path: Path
) -> None:
    """On the trainer's own validation set the evaluator's validationLoss is the loss the
    trainer reported at its last step (same definition: token-weighted cross-entropy of the
    assistant answers), and the memorised answers are all argmax tokens."""
    from tramontane_workers.contract.train_config import ADAPTER_MANIFEST
    from tramontane_workers.evaluate.runner import Reporter, evaluate

    manifest = json.loads((qa_adapter / ADAPTER_MANIFEST).read_text())
    config = EvalConfig(
        dataset_uri=_write_qa(tmp_path / "qa.jsonl").as_uri(),
        target={
            "label": "tiny:qa",
            "base_model_uri": tiny_model_dir.as_uri(),
            "adapter_uri": qa_adapter.as_uri(),
        },
        metrics=["validationLoss", "meanTokenAccuracy"],
    )
    lines: list[str] = []
    result = await evaluate(config, Reporter(emit=lines.append))
    scores = _scores(result.target)
    assert scores["validationLoss"][0] == pytest.approx(manifest["final_valid_loss"], rel=1e-3)
    assert scores["meanTokenAccuracy"] == (1.0, 3)
    assert (result.state, result.done, result.failing_samples) == ("succeeded", 3, [])
    assert last_result("\n".join(lines)) == result


async def test_a_baseline_on_another_base_model_gets_its_own_engine(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tramontane_workers.evaluate.runner import Reporter, evaluate
    from tramontane_workers.models.tiny import write_tiny_mistral

    other = write_tiny_mistral(tmp_path / "other", seed=7)  # same shape, other weights
    config = EvalConfig(
        dataset_uri=_write_qa(tmp_path / "qa.jsonl").as_uri(),
        target={"label": "tiny", "base_model_uri": tiny_model_dir.as_uri()},
        baseline={"label": "other", "base_model_uri": other.as_uri()},
        metrics=["exactMatch", "validationLoss"],
        max_tokens=2,
    )
    result = await evaluate(config, Reporter(emit=lambda line: None))
    target, baseline = _scores(result.target), _scores(result.baseline)
    assert target["exactMatch"] == (0.0, 3) == baseline["exactMatch"]
    assert target["validationLoss"][0] != baseline["validationLoss"][0]  # other weights ran
    assert result.done == 6


def test_use_gpu_without_vllm_fails_with_the_reason(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tramontane_workers.engines.vllm_engine import vllm_unavailable_reason
    from tramontane_workers.evaluate.__main__ import main

    reason = vllm_unavailable_reason()
    if reason is None:
        pytest.skip("vLLM and a GPU are here: tests/gpu covers that path")
    config = EvalConfig(
        dataset_uri=_write_qa(tmp_path / "qa.jsonl").as_uri(),
        target={"label": "tiny", "base_model_uri": tiny_model_dir.as_uri()},
        metrics=["exactMatch"],
        use_gpu=True,
    )
    assert main(["--config-b64", entrypoint(config).split()[-1]]) == 1
    result = last_result(capsys.readouterr().out)
    assert result is not None and result.state == "failed"
    assert result.message == f"EngineUnavailable: {reason}"


async def test_json_schema_lines_are_answered_constrained_and_validated(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A line's response_format reaches the engine as serving's: strict json_schema is the
    grammar (the random model's answer validates), non-strict is any JSON object (which does
    not satisfy this schema's required key): jsonSchemaValid = (1 + 0) / 2."""
    from tramontane_workers.evaluate.runner import Reporter, evaluate

    def line(schema: dict[str, object], strict: bool, answer: str) -> str:
        return json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Answer in JSON."},
                    {"role": "assistant", "content": answer},
                ],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "reply", "schema": schema, "strict": strict},
                },
            }
        )

    ok = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    rare = {"type": "object", "required": ["zzz_required"]}
    data = tmp_path / "json.jsonl"
    data.write_text(
        line(ok, True, '{"ok": true}') + "\n" + line(rare, False, '{"zzz_required": 1}')
    )
    config = EvalConfig(
        dataset_uri=data.as_uri(),
        target={"label": "tiny", "base_model_uri": tiny_model_dir.as_uri()},
        metrics=["jsonSchemaValid", "exactMatch"],
        max_tokens=120,
    )
    result = await evaluate(config, Reporter(emit=lambda text: None))
    scores = _scores(result.target)
    assert scores["jsonSchemaValid"] == (0.5, 2)
    assert scores["exactMatch"][1] == 2
    (strict,) = [f for f in result.failing_samples if f.line == 1]  # not '{"ok": true}' exactly
    strict_answer = json.loads(strict.got)  # but valid JSON of the schema
    assert isinstance(strict_answer, dict) and isinstance(strict_answer["ok"], bool)
