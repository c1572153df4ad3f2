"""`tramontane validate FILE...`: check manifests of our kinds before `kubectl apply`.

Prints `FILE:DOC: field.path: message` per problem (DOC is the 1-based document number in a
multi-document file) and exits 1 if there is any, 2 if a file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="Validate ModelDeployment/FineTuneJob/Tenant/ComputeCluster manifests.",
        description="Check manifests against the API models, the generated CRD schemas and "
        "their CEL rules. Documents of other API groups are skipped.",
    )
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="YAML file, or - for stdin"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="Print problems only.")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tramontane_api.validate import validate_text

    status = 0
    checked_total = problems_total = 0
    for path in args.files:
        name = str(path)
        try:
            text = sys.stdin.read() if name == "-" else path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{name}: cannot read: {exc}", file=sys.stderr)
            status = 2
            continue
        checked, problems = validate_text(text)
        checked_total += checked
        problems_total += len(problems)
        for item in problems:
            print(f"{name}:{item.doc}: {item.problem}")
        if problems and status == 0:
            status = 1
    if not args.quiet:
        print(
            f"{checked_total} document(s) checked, {problems_total} problem(s)",
            file=sys.stderr,
        )
    return status
