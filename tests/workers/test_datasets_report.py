"""The validation Job's entry point: pvc:// datasets read under $TRAMONTANE_PVC_ROOT, a compact
report with totals and the first bad lines, `unreadable` for a missing file, and a report that
always fits the kubelet's 4096-byte termination message as valid JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tramontane_workers.contract.datasets_report import (
    DatasetsReport,
    ReportedError,
    main,
    validate_files,
)
from tramontane_workers.contract.pvc import PVC_ROOT_ENV, pvc_path

GOOD = {"messages": [{"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris"}]}  # fmt: skip
BAD_ROLE = {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory standing for the pod's /mnt/pvc: one sub-directory per claim."""
    root = tmp_path / "pvc"
    (root / "data").mkdir(parents=True)
    monkeypatch.setenv(PVC_ROOT_ENV, str(root))
    return root


def write(path: Path, lines: list[Any]) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def test_pvc_uris_resolve_under_the_claim_root(claims: Path) -> None:
    assert pvc_path("pvc://data/sets/a%20b.jsonl") == str(claims / "data" / "sets" / "a b.jsonl")


def test_a_good_pvc_dataset_reports_totals(claims: Path) -> None:
    write(claims / "data" / "train.jsonl", [GOOD] * 3)
    write(claims / "data" / "valid.jsonl", [GOOD])
    report = validate_files(["pvc://data/train.jsonl"], ["pvc://data/valid.jsonl"])
    assert report.ok and report.unreadable is None and report.errors == []
    assert (report.lines, report.conversations, report.bad_lines) == (4, 3, 0)
    assert report.tokens > 0 and 0 < report.trainable_tokens < report.tokens


def test_bad_lines_are_reported_with_their_numbers(claims: Path) -> None:
    write(claims / "data" / "train.jsonl", [GOOD, BAD_ROLE, GOOD, "{not json"])
    report = validate_files(["pvc://data/train.jsonl"], [])
    assert not report.ok and report.bad_lines == 2 and report.lines == 4
    described = [e.describe() for e in report.errors]
    assert [e.line for e in report.errors] == [2, 4]
    assert described[0].startswith("pvc://data/train.jsonl:2: messages[0].role: ")
    assert described[1].startswith("pvc://data/train.jsonl:4: invalid JSON")


def test_conversations_longer_than_the_sequence_length_are_counted(claims: Path) -> None:
    write(claims / "data" / "train.jsonl", [GOOD, GOOD])
    report = validate_files(["pvc://data/train.jsonl"], [], max_seq_len=5)
    assert report.ok and report.truncated == 2
    assert validate_files(["pvc://data/train.jsonl"], [], max_seq_len=4096).truncated == 0


def test_an_empty_training_file_is_named_by_index(claims: Path) -> None:
    write(claims / "data" / "train.jsonl", [GOOD])
    (claims / "data" / "empty.jsonl").write_text("\n")
    report = validate_files(["pvc://data/train.jsonl", "pvc://data/empty.jsonl"], [])
    assert not report.ok and report.empty_training == [1] and report.bad_lines == 0


def test_a_missing_file_is_unreadable_not_a_crash(claims: Path) -> None:
    report = validate_files(["pvc://data/missing.jsonl"], [])
    assert not report.ok and report.unreadable is not None
    assert "pvc://data/missing.jsonl" in report.unreadable


def test_the_report_always_fits_a_termination_message() -> None:
    errors = [
        ReportedError(uri="pvc://data/" + "x" * 300 + ".jsonl", line=n, message="é" * 2000)
        for n in range(1, 50)
    ]
    report = DatasetsReport(ok=False, lines=10_000, bad_lines=49, errors=errors)
    text = report.to_json()
    assert len(text.encode()) <= 4096
    parsed = DatasetsReport.model_validate_json(text)
    assert parsed.bad_lines == 49 and 0 < len(parsed.errors) < 49
    assert len(parsed.errors) + parsed.more_errors == 49
    assert [e.line for e in parsed.errors] == list(range(1, len(parsed.errors) + 1))
    huge = DatasetsReport.failed_to_read("pvc://data/" + "y" * 10_000)
    assert len(huge.to_json().encode()) <= 4096
    assert DatasetsReport.model_validate_json(huge.to_json()).unreadable


def test_main_writes_the_report_file(claims: Path, tmp_path: Path) -> None:
    write(claims / "data" / "train.jsonl", [GOOD, BAD_ROLE])
    out = tmp_path / "termination-log"
    assert main(["--training", "pvc://data/train.jsonl", "--output", str(out)]) == 0
    report = DatasetsReport.model_validate_json(out.read_text())
    assert not report.ok and [e.line for e in report.errors] == [2]


def test_the_module_runs_as_an_entry_point(claims: Path) -> None:
    write(claims / "data" / "train.jsonl", [GOOD] * 2)
    done = subprocess.run(
        [sys.executable, "-m", "tramontane_workers.contract.datasets_report",
         "--training", "pvc://data/train.jsonl"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = DatasetsReport.model_validate_json(done.stdout)
    assert report.ok and report.conversations == 2


def test_a_file_larger_than_the_bound_fails_naming_the_limit(claims: Path) -> None:
    write(claims / "data" / "big.jsonl", [GOOD] * 50)
    one_line = len(json.dumps(GOOD)) + 1
    report = validate_files(["pvc://data/big.jsonl"], [], max_file_bytes=3 * one_line)
    assert not report.ok and report.unreadable is None and report.bad_lines == 1
    assert (report.lines, report.conversations) == (3, 3)  # read up to the limit, no further
    (error,) = report.errors
    assert error.line == 4 and f"larger than {3 * one_line} bytes" in error.message
    assert validate_files(["pvc://data/big.jsonl"], [], max_file_bytes=50 * one_line).ok


def test_the_entry_point_takes_the_bound(claims: Path, tmp_path: Path) -> None:
    write(claims / "data" / "big.jsonl", [GOOD] * 20)
    out = tmp_path / "report.json"
    argv = ["--training", "pvc://data/big.jsonl", "--max-file-bytes", "100", "--output", str(out)]
    assert main(argv) == 0
    report = DatasetsReport.model_validate_json(out.read_text())
    assert report.bad_lines == 1 and "larger than 100 bytes" in report.errors[0].message
    with pytest.raises(SystemExit):
        main(["--training", "pvc://data/big.jsonl", "--max-file-bytes", "0"])


def test_an_evaluation_dataset_may_carry_response_format_a_training_one_may_not(
    tmp_path: Path,
) -> None:
    line = {
        "messages": [{"role": "user", "content": "Give JSON"}, {"role": "assistant", "content": "{}"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    }  # fmt: skip
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(line) + "\n")
    assert validate_files([path.as_uri()], [], evaluation=True).ok
    refused = validate_files([path.as_uri()], [])
    assert not refused.ok and refused.errors[0].path == "response_format"
    out = tmp_path / "report.json"
    assert main(["--evaluation", "--training", path.as_uri(), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["ok"] is True
