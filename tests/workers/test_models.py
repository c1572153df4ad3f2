"""The tiny checkpoint and model loading: URIs, format detection, clear errors."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import pytest

from tramontane_workers.models.loading import (
    ModelLoadError,
    detect_format,
    find_tokenizer,
    materialize,
    parse_model_uri,
)
from tramontane_workers.models.tiny import TOKENIZER_FILENAME, write_tiny_mistral


def test_tiny_checkpoint_is_a_real_hf_mistral(tiny_model_dir: Path) -> None:
    from transformers import MistralForCausalLM

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "mistral"
    assert config["vocab_size"] == 32768
    assert detect_format(tiny_model_dir) == "hf"
    assert find_tokenizer(tiny_model_dir).name == TOKENIZER_FILENAME
    model = MistralForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in model.parameters()) > 4_000_000


def test_tiny_weights_are_seeded(tmp_path: Path, tiny_model_dir: Path) -> None:
    def digest(p: Path) -> str:
        return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()

    same = write_tiny_mistral(tmp_path / "same", seed=0)
    other = write_tiny_mistral(tmp_path / "other", seed=1)
    assert digest(same) == digest(tiny_model_dir)
    assert digest(other) != digest(tiny_model_dir)


def test_tiny_rejects_bad_hidden_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        write_tiny_mistral(tmp_path, hidden_size=30)


def test_detect_mistral_format_and_unknown(tmp_path: Path) -> None:
    (tmp_path / "consolidated.safetensors").write_bytes(b"")
    (tmp_path / "params.json").write_text("{}")
    assert detect_format(tmp_path) == "mistral"
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"unrecognised format.*weights\.bin"):
        detect_format(odd)


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("http://x/y", "unsupported scheme"),
        ("file://relative/p", "absolute path"),
        ("hf://justname", "<org>/<name>"),
        ("s3://", "names no path"),
    ],
)
def test_bad_uris(uri: str, needle: str) -> None:
    with pytest.raises(ModelLoadError, match=needle):
        parse_model_uri(uri)


def test_hf_uri_revision() -> None:
    parsed = parse_model_uri("hf://mistralai/Mistral-7B-v0.3@main")
    assert (parsed.location, parsed.revision) == ("mistralai/Mistral-7B-v0.3", "main")


def test_materialize_file_and_pvc(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert materialize(f"file://{tiny_model_dir}") == tiny_model_dir
    claim = tmp_path / "models-claim" / "tiny"
    claim.mkdir(parents=True)
    monkeypatch.setenv("TRAMONTANE_PVC_ROOT", str(tmp_path))
    assert materialize("pvc://models-claim/tiny") == claim
    with pytest.raises(ModelLoadError, match="not a directory"):
        materialize("pvc://models-claim/missing")


def test_hf_is_offline_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="local Hugging Face cache"):
        materialize("hf://nobody/nothing-here")


@pytest.mark.parametrize(
    ("uri", "module", "extra"),
    [("az://container/model", "adlfs", "azure"), ("s3://bucket/model", "s3fs", "aws"),
     ("gs://bucket/model", "gcsfs", "gcp")],
)  # fmt: skip
def test_object_store_without_backend_names_the_extra(
    uri: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever back-ends this machine has: each is made missing (an import of it fails, and
    fsspec's registry has not imported it yet), and the error names the extra to install."""
    pytest.importorskip("fsspec")
    registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is not)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    monkeypatch.setattr(registry, "_registry", {})  # forget the implementations imported
    with pytest.raises(ModelLoadError, match=rf"tramontane\[{extra}\]"):
        materialize(uri)


def test_object_store_via_fsspec_memory_layout(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gs:// etc. go through fsspec; exercise the copy with fsspec's local filesystem."""
    from tramontane_workers.models import loading

    monkeypatch.setenv("TRAMONTANE_MODEL_CACHE", str(tmp_path / "cache"))
    parsed = loading.ModelUri("file", str(tiny_model_dir))
    local = loading._from_object_store(f"file://{tiny_model_dir}", parsed)
    assert detect_format(local) == "hf"
    assert (local / "model.safetensors").stat().st_size == (
        tiny_model_dir / "model.safetensors"
    ).stat().st_size


def test_hf_uri_resolves_from_the_local_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hugging Face cache laid out as huggingface_hub writes it; nothing is downloaded."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--mistralai--tiny"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", TOKENIZER_FILENAME):
        (snapshot / name).symlink_to(tiny_model_dir / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = materialize("hf://mistralai/tiny")
    assert path == snapshot
    assert detect_format(path) == "hf"
    assert materialize(f"hf://mistralai/tiny@{revision}") == snapshot
