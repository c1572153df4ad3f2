"""`tramontane crds`: generate, drift-check or print the CRDs from the pydantic models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tramontane_api import crdgen
from tramontane_api.v1alpha1 import KINDS

DEFAULT_TARGETS = ("crds", "charts/tramontane/crds")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("crds", help="Generate or print the CustomResourceDefinitions.")
    sub = parser.add_subparsers(dest="crds_command", metavar="ACTION")
    sub.required = True

    gen = sub.add_parser("generate", help="Write crds/ and the chart's copy from the models.")
    gen.add_argument("--root", type=Path, default=Path("."), help="Repository root (default: .)")
    gen.add_argument(
        "--check",
        action="store_true",
        help="Write nothing; exit 1 if any generated file is missing or differs.",
    )
    gen.set_defaults(func=_generate)

    show = sub.add_parser("print", help="Print every CRD as one YAML stream (for kubectl apply).")
    show.set_defaults(func=_print)


def _generate(args: argparse.Namespace) -> int:
    root: Path = args.root
    if not (root / "pyproject.toml").exists():
        print(
            f"error: {root.resolve()} is not the repository root (no pyproject.toml)",
            file=sys.stderr,
        )
        return 2
    targets = [root / t for t in DEFAULT_TARGETS]
    drift = crdgen.generate(targets, check=args.check)
    if args.check:
        for path in drift:
            print(f"{path}: out of date; run `tramontane crds generate`", file=sys.stderr)
        return 1 if drift else 0
    for path in drift:
        print(f"wrote {path}")
    return 0


def _print(args: argparse.Namespace) -> int:
    sys.stdout.write("---\n".join(crdgen.render(k) for k in KINDS))
    return 0
