"""`tramontane local`: the embedded quickstart runs end to end (validate, render, serve, chat)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tramontane_cli.commands.local import QUICKSTART, load_deployment
from tramontane_cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "cli" / "tramontane_cli" / QUICKSTART


def test_embedded_quickstart_is_the_example() -> None:
    assert EMBEDDED.read_text() == (ROOT / "examples" / "quickstart-local.yaml").read_text()


def test_bad_manifest_is_reported_with_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "md.yaml"
    text = EMBEDDED.read_text().replace("maxReplicas: 1", "maxReplicas: 0")
    bad.write_text(text)
    assert main(["local", str(bad)]) == 1
    # FILE:LINE, the line of the field itself.
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "maxReplicas: 0" in row)
    assert f"{bad}:{line}: spec.scaling.maxReplicas:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no ModelDeployment"):
        load_deployment("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n", "ns.yaml")


def test_missing_model_is_not_invented(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = tmp_path / "md.yaml"
    md.write_text(
        EMBEDDED.read_text().replace("/tmp/tramontane/tiny-mistral", str(tmp_path / "none"))
    )
    assert main(["local", str(md)]) == 1
    assert "does not exist (--write-tiny" in capsys.readouterr().err


@pytest.mark.slow
def test_local_mode_serves_and_answers(
    ray_session: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = tmp_path / "md.yaml"
    model_dir = tmp_path / "tiny"
    md.write_text(EMBEDDED.read_text().replace("/tmp/tramontane/tiny-mistral", str(model_dir)))
    assert main(["local", str(md), "--write-tiny", "--max-tokens", "5", "--prompt", "Bonjour"]) == 0
    out = capsys.readouterr().out
    assert (model_dir / "config.json").exists()
    assert "user> Bonjour" in out
    usage = re.search(r"\[length\] prompt (\d+) \+ completion (\d+) tokens", out)
    assert usage is not None, out
    assert int(usage.group(2)) == 5 and int(usage.group(1)) > 3
