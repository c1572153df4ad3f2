"""The CLI imports only the subcommand it runs: `tramontane crds ...` needs no tokenizer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tramontane_cli.main import COMMAND_MODULES, build_parser

HEAVY = ("mistral_common", "torch", "ray", "kopf")


def test_crds_print_imports_no_heavy_package() -> None:
    code = (
        "import sys; from tramontane_cli.main import build_parser;"
        "build_parser(['crds', 'print']).parse_args(['crds', 'print']);"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_and_unknown_commands_still_list_every_subcommand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser(["no-such-command"]).parse_args(["no-such-command"])
    err = capsys.readouterr().err
    for module in COMMAND_MODULES:
        assert module.rsplit(".", 1)[1] in err
