"""Entry point of the `tramontane` console script, also installed as `kubectl-tramontane` so
that `kubectl tramontane ARGS` runs it (kubectl's plugin mechanism: same main, same flags).

Each subcommand lives in its own module under `tramontane_cli.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable returning the
exit code. Modules are imported lazily by name, and only the one the command line names
(all of them for `--help` or an unknown command): `tramontane crds ...` never pays for
torch, ray or the tokenizers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# Subcommand modules, in the order `tramontane --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "tramontane_cli.commands.crds",
    "tramontane_cli.commands.validate",
    "tramontane_cli.commands.dataset",
    "tramontane_cli.commands.finetune",
    "tramontane_cli.commands.eval",
    "tramontane_cli.commands.serve",
    "tramontane_cli.commands.operator",
    "tramontane_cli.commands.router",
    "tramontane_cli.commands.local",
    "tramontane_cli.commands.get",
    "tramontane_cli.commands.chat",
    "tramontane_cli.commands.usage",
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: with only its subcommand when it names one, else all."""
    parser = argparse.ArgumentParser(
        prog="tramontane",
        description="Tramontane: a Kubernetes-native control plane for Mistral models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _modules_for(argv):
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def _modules_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    first = next((a for a in argv or () if not a.startswith("-")), None)
    named = tuple(m for m in COMMAND_MODULES if m.rsplit(".", 1)[1] == first)
    return named or COMMAND_MODULES


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def run() -> None:
    """Console-script wrapper: exit with the subcommand's status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
