"""The operator's local-file seam (local mode): the base model's size as it reads it, or why it
cannot; and it never reads a URI that is not a local file, whoever calls it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.test_builders_rayjob import make_job

from tramontane_operator.handlers.finetunejob_io import (
    model_params,
    read_progress,
    validate_datasets,
)
from tramontane_operator.reconcile.finetunejob_trust import NOT_READ_BY_OPERATOR

MISTRAL_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 32768,
}


def test_a_readable_config_json_gives_the_parameter_count(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_7B))
    for uri in (tmp_path.as_uri(), str(tmp_path), f"{tmp_path.as_uri()}/"):
        read = model_params(uri)
        assert (read.params, read.error) == (7_248_023_552, None), uri


def test_a_directory_without_config_json_says_so(tmp_path: Path) -> None:
    read = model_params(tmp_path.as_uri())
    assert read.params is None and read.uri == tmp_path.as_uri()
    assert read.error == f"{tmp_path.as_uri()}/config.json: not found"


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ("{not json", "config.json: Expecting property name"),
        ("[1, 2]", "config.json: not a JSON object"),
        (json.dumps({**MISTRAL_7B, "hidden_size": "big"}), "hidden_size must be an integer"),
        (json.dumps({**MISTRAL_7B, "num_attention_heads": 0}), "config.json: "),
    ],
)
def test_a_broken_config_json_says_what_is_wrong(tmp_path: Path, config: str, error: str) -> None:
    (tmp_path / "config.json").write_text(config)
    read = model_params(tmp_path.as_uri())
    assert read.params is None and read.error is not None and error in read.error


def test_models_that_are_not_local_files_are_not_read_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
    for uri in (
        "hf://mistralai/Mistral-7B-Instruct-v0.3",
        "pvc://models/mistral-7b",
        "s3://bucket/model",
        "nosuchscheme://bucket/model",
    ):
        read = model_params(uri)
        assert (read.uri, read.params, read.error) == (uri, None, NOT_READ_BY_OPERATOR), uri


def test_progress_and_datasets_are_read_only_from_local_files(tmp_path: Path) -> None:
    (tmp_path / "progress.json").write_text(
        '{"step": 3, "total_steps": 9, "updated": "2026-01-01T00:00:00Z"}'
    )
    read = read_progress(tmp_path.as_uri())
    assert read is not None and read.step == 3
    assert read_progress(str(tmp_path)) is not None
    assert read_progress("s3://bucket/out") is None and read_progress("pvc://out/x") is None
    with pytest.raises(ValueError, match=r"not read by the operator: s3://data/train\.jsonl"):
        validate_datasets(make_job())  # s3:// datasets: the member cluster validates them
