"""Fixtures for the worker tier: one tiny Mistral checkpoint and its LoRA adapters per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny Mistral checkpoint (2 layers, hidden 64, v3 vocabulary), written once."""
    pytest.importorskip("transformers")
    from tramontane_workers.models.tiny import write_tiny_mistral

    return write_tiny_mistral(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_adapters(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Seeded random LoRA adapters `alpha`, `beta`, `gamma`, and `broken` (targets no module)."""
    pytest.importorskip("peft")
    from tramontane_workers.models.tiny import write_tiny_lora

    root = tmp_path_factory.mktemp("adapters")
    adapters = {
        name: write_tiny_lora(tiny_model_dir, root / name, seed=seed)
        for seed, name in enumerate(("alpha", "beta", "gamma"), start=1)
    }
    broken = root / "broken"
    shutil.copytree(adapters["alpha"], broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (broken / "adapter_config.json").write_text(json.dumps(config))
    adapters["broken"] = broken
    return adapters
