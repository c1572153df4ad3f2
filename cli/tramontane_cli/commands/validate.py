"""`tramontane validate FILE...`: check manifests of our kinds before `kubectl apply`.

Prints each problem on stderr as `FILE:LINE: field.path: message` (the line of the field when
the YAML parser knows it, else of its document) and each document of another API it skipped
on stdout. Exits 0 when every file is valid, 1 on invalid input, 2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tramontane_cli.args import EXIT_CODES_EPILOG, EXIT_INVALID, EXIT_OK, EXIT_USAGE

EPILOG = (
    f"{EXIT_CODES_EPILOG}. Documents are bounded like an API server request: 3 MiB per file, "
    "a limited number of YAML aliases, nodes and nesting levels."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="Validate ModelDeployment/FineTuneJob/Tenant/ComputeCluster manifests.",
        description="Check manifests against the API models, the generated CRD schemas and "
        "their CEL rules. Documents of other APIs (a Secret, a Namespace) are listed as "
        "skipped; a document of one of our kinds with a wrong or missing apiVersion is a "
        "problem.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="YAML file, or - for stdin"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="Print problems only (no skipped, no summary)."
    )
    parser.set_defaults(func=_run)


def _read(path: Path) -> str:
    """The text of `path` (or stdin for `-`), at most one byte over the size limit."""
    from tramontane_api.yamlload import MAX_BYTES, decode_bounded

    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
    else:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    return decode_bounded(data)


def _read_error(name: str, exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"{name}: cannot read: not UTF-8 text (byte {exc.start})"
    if isinstance(exc, IsADirectoryError):
        return f"{name}: cannot read: is a directory"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: cannot read: {exc.strerror}"
    return f"{name}: cannot read: {exc}"


def _run(args: argparse.Namespace) -> int:
    from tramontane_api.validate import check_text

    texts: list[tuple[str, str]] = []
    for path in args.files:
        name = str(path)
        try:
            texts.append((name, _read(path)))
        except (OSError, UnicodeDecodeError) as exc:
            print(_read_error(name, exc), file=sys.stderr)
            return EXIT_USAGE
    status = EXIT_OK
    checked_total = problems_total = 0
    for name, text in texts:
        report = check_text(text)
        checked_total += report.checked
        problems_total += len(report.problems)
        if not args.quiet:
            for skipped in report.skipped:
                print(skipped.format(name))
        for item in report.problems:
            print(item.format(name), file=sys.stderr)
        if report.problems:
            status = EXIT_INVALID
    if not args.quiet:
        print(
            f"{checked_total} document(s) checked, {problems_total} problem(s)",
            file=sys.stderr,
        )
    return status
