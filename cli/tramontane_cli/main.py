"""Entry point of the `tramontane` console script.

Each subcommand lives in its own module under `tramontane_cli.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable returning the
exit code. Modules are imported lazily by name so that `tramontane crds ...` never pays for
torch or ray.
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
    "tramontane_cli.commands.serve",
    "tramontane_cli.commands.operator",
    "tramontane_cli.commands.local",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tramontane",
        description="Tramontane: a Kubernetes-native control plane for Mistral models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def run() -> None:
    """Console-script wrapper: exit with the subcommand's status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
