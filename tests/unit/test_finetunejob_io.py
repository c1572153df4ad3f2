"""The base model's size as the operator's storage seam reads it, or why it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tramontane_operator.handlers.finetunejob_io import model_params

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


def test_hub_and_claim_models_are_not_read_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
    hub = model_params("hf://mistralai/Mistral-7B-Instruct-v0.3")
    assert hub.params is None and hub.error == "the operator does not fetch hf:// models"
    claim = model_params("pvc://models/mistral-7b")
    assert claim.params is None and claim.error == "pvc:// claims are not mounted in the operator"


def test_an_unknown_scheme_or_missing_backend_is_a_reason_not_a_crash() -> None:
    read = model_params("nosuchscheme://bucket/model")
    assert read.params is None and read.error is not None
    assert read.error.startswith("nosuchscheme://bucket/model/config.json: ")
