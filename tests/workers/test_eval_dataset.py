"""Evaluation datasets: the training rules, `response_format`, line numbers, no model loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tramontane_workers.contract.datasets import check_line
from tramontane_workers.contract.datasets_rules import Violation, check_record
from tramontane_workers.contract.eval_config import EvalConfig, entrypoint, last_result
from tramontane_workers.evaluate.__main__ import main
from tramontane_workers.evaluate.dataset import DatasetInvalid, load_samples

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True},
}


def qa(question: str = "Q?", answer: str = "A", **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        **extra,
    }


def write(path: Path, *lines: Any) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return path


def test_response_format_is_for_evaluation_datasets_only() -> None:
    record = qa(response_format=SCHEMA_FORMAT)
    assert check_record(record, evaluation=True) is None
    refused = check_record(record)  # a training line: the fine-tuning format has no such key
    assert refused is not None and refused.path == "response_format"
    assert "unknown field" in refused.message
    assert isinstance(check_line(json.dumps(record).encode()), Violation)


@pytest.mark.parametrize(
    ("response_format", "path", "fragment"),
    [
        ("json", "response_format", "must be an object"),
        ({"type": "yaml"}, "response_format.type", "must be one of text, json_object"),
        ({"type": "json_schema"}, "response_format.json_schema", "must be an object"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
            "response_format.json_schema.schema",
            "must be a JSON schema object",
        ),
    ],
)
def test_bad_response_formats_name_the_field(
    response_format: Any, path: str, fragment: str
) -> None:
    violation = check_record(qa(response_format=response_format), evaluation=True)
    assert violation is not None
    assert (violation.path, fragment in violation.message) == (path, True)


def test_samples_split_prompt_and_expected_answer(tmp_path: Path) -> None:
    call = {"id": "abcdefghi", "function": {"name": "weather", "arguments": {"city": "Nice"}}}
    tool = {"type": "function", "function": {"name": "weather", "parameters": {}}}
    data = write(
        tmp_path / "d.jsonl",
        qa("Capital of France?", "Paris", response_format=SCHEMA_FORMAT),
        "",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "tool_calls": [call]},
            ],
            "tools": [tool],
        },
    )
    text, tool_sample = load_samples(data.as_uri())
    assert (text.line, text.expected_text, text.input) == (1, "Paris", "Capital of France?")
    assert text.schema == {"type": "object"}
    assert [m.role for m in text.request.messages] == ["user"]  # the answer is not in the prompt
    assert text.request.temperature == 0.0  # greedy
    assert tool_sample.line == 3  # the blank line 2 is skipped, not renumbered
    assert tool_sample.expects_tool_call and tool_sample.expected_text is None
    assert tool_sample.expected_calls[0].name == "weather"
    assert tool_sample.input == "Weather?"
    assert [m.role for m in tool_sample.request.messages] == ["system", "user"]
    assert load_samples(data.as_uri(), max_samples=1) == [text]


def test_bad_lines_are_listed_with_their_numbers(tmp_path: Path) -> None:
    data = write(
        tmp_path / "d.jsonl",
        qa(),
        {"messages": [{"role": "user", "content": "Q?"}]},  # no expected answer
        "{not json",
        qa(),
        qa(extra="x"),
    )
    with pytest.raises(DatasetInvalid) as caught:
        load_samples(data.as_uri())
    message = str(caught.value)
    assert "3 bad line(s)" in message
    assert "line 2: messages[0].role: the last message must be from the assistant" in message
    assert "line 3: invalid JSON" in message
    assert "line 5: extra: unknown field" in message
    assert [e.line for e in caught.value.errors] == [2, 3, 5]


def _broken_model(tiny_model_dir: Path, root: Path) -> Path:
    """The tiny checkpoint's config and tokenizer, with weights no loader could read."""
    model = root / "broken-model"
    model.mkdir()
    for name in ("config.json", "tokenizer.model.v3"):
        shutil.copy(tiny_model_dir / name, model / name)
    (model / "model.safetensors").write_bytes(b"not weights")
    return model


def test_dataset_errors_fail_before_any_model_is_loaded(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _broken_model(tiny_model_dir, tmp_path)
    # line 2 passes the training rules but not serving's: a prompt cannot end with an answer
    data = write(
        tmp_path / "d.jsonl",
        qa(),
        {
            "messages": [
                {"role": "user", "content": "Q?"},
                {"role": "assistant", "content": "A"},
                {"role": "assistant", "content": "B"},
            ]
        },
    )
    config = EvalConfig(
        dataset_uri=data.as_uri(),
        target={"label": "t", "base_model_uri": model.as_uri()},
        metrics=["exactMatch"],
        output_uri=(tmp_path / "out").as_uri(),
    )
    assert main(["--config-b64", entrypoint(config).split()[-1]]) == 1
    result = last_result(capsys.readouterr().out)
    assert result is not None and result.state == "failed" and result.message is not None
    assert "DatasetInvalid" in result.message and "line 2: messages" in result.message
    assert "Safetensor" not in result.message  # the weights were never opened
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert written["state"] == "failed"
    # the same config with a good dataset does reach the broken weights: the check is real
    write(tmp_path / "d.jsonl", qa())
    assert main(["--config-b64", entrypoint(config).split()[-1]]) == 1
    reached = last_result(capsys.readouterr().out)
    assert reached is not None and reached.message is not None
    assert "SafetensorError" in reached.message, reached.message


def test_the_entrypoint_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", {"messages": [{"role": "user", "content": "Q?"}]})
    config = EvalConfig(
        dataset_uri=data.as_uri(),
        target={"label": "t", "base_model_uri": "file:///nonexistent/model"},
        metrics=["exactMatch", "validationLoss"],
    )
    env = {"PYTHONPATH": "core:operator:router:workers:cli:local:.", "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, *entrypoint(config).split()[1:]]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    result = last_result(done.stdout)
    assert result is not None and result.state == "failed"
    assert result.message is not None and "line 1: messages[0].role" in result.message
    usage = subprocess.run(
        [sys.executable, "-m", "tramontane_workers.evaluate", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert usage.returncode == 0 and "--config-b64" in usage.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tramontane_workers.evaluate", "--config-b64", "e30="],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid config" in bad.stderr
