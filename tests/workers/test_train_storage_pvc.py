"""The trainer's output store on a pvc:// URI: files land under the claim's mount
($TRAMONTANE_PVC_ROOT/<claim>) while every URI it hands out stays pvc://, so the adapter it
reports is served from the same claim by the ModelDeployment's pods."""

from __future__ import annotations

from pathlib import Path

import pytest

from tramontane_workers.train.storage import OutputStore


def test_a_pvc_output_is_written_on_the_claim_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAMONTANE_PVC_ROOT", str(tmp_path))
    store = OutputStore("pvc://out/tune/")
    store.write_json("progress.json", {"step": 3})
    assert (tmp_path / "out" / "tune" / "progress.json").read_text() == '{"step": 3}'
    assert store.read_json("progress.json") == {"step": 3}
    local = tmp_path / "adapter-local"
    local.mkdir()
    (local / "adapter_config.json").write_text("{}")
    assert store.upload_dir(local, "adapter") == "pvc://out/tune/adapter"
    assert (tmp_path / "out" / "tune" / "adapter" / "adapter_config.json").exists()
