"""Fixtures for the worker tier: one tiny Mistral checkpoint per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny Mistral checkpoint (2 layers, hidden 64, v3 vocabulary), written once."""
    pytest.importorskip("transformers")
    from tramontane_workers.models.tiny import write_tiny_mistral

    return write_tiny_mistral(tmp_path_factory.mktemp("tiny") / "model")
