"""`tramontane dataset validate FILE...`: check Mistral chat JSONL before any GPU is spent.

Prints one `FILE:LINE: path: message` per bad line as it streams, then a summary per file
(lines, conversations, tokens with the v3 tokenizer, bad lines). Exit status: 0 all good,
1 some line is bad, 2 some file could not be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tramontane_workers.contract.datasets import (
    DEFAULT_MAX_ERRORS,
    DatasetSummary,
    DatasetUnreadable,
    LineError,
    validate_uri,
)

EXIT_BAD_LINES = 1
EXIT_UNREADABLE = 2
AUTO_POOL_BYTES = 32 * 1024 * 1024


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dataset", help="work with fine-tuning datasets")
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION")
    actions.required = True
    validate = actions.add_parser(
        "validate",
        help="validate Mistral chat JSONL files (FILE:LINE: message per bad line)",
    )
    validate.add_argument(
        "files", nargs="+", metavar="FILE", help="path or URI (file://, s3://...)"
    )
    validate.add_argument(
        "--max-errors",
        type=int,
        default=0,
        help="print at most this many bad lines per file (0: all of them)",
    )
    validate.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="processes to validate with (0: one per CPU for local files over 32 MB, else 1)",
    )
    validate.add_argument("--quiet", action="store_true", help="print only the summaries")
    validate.set_defaults(func=run_validate)


def format_summary(summary: DatasetSummary) -> str:
    verdict = "ok" if summary.ok else f"{summary.bad_lines} bad line(s)"
    return (
        f"{summary.source}: {summary.lines} lines, {summary.conversations} conversations, "
        f"{summary.tokens} tokens ({summary.trainable_tokens} trained on): {verdict}"
    )


def processes_for(source: str, jobs: int) -> int:
    """Explicit --jobs wins; otherwise a pool only pays off (~1 s to start) on big local files."""
    if jobs > 0:
        return jobs
    path = Path(source.removeprefix("file://"))
    try:
        big = path.stat().st_size > AUTO_POOL_BYTES
    except OSError:
        big = False
    return (os.cpu_count() or 1) if big else 1


def run_validate(args: argparse.Namespace) -> int:
    status = 0
    for source in args.files:
        printed = 0

        def show(error: LineError, source: str = source) -> None:
            nonlocal printed
            if args.quiet or (args.max_errors and printed >= args.max_errors):
                return
            printed += 1
            print(f"{source}:{error.line}: {error.describe()}")

        try:
            summary = validate_uri(
                source,
                max_errors=DEFAULT_MAX_ERRORS,
                on_error=show,
                processes=processes_for(source, args.jobs),
            )
        except DatasetUnreadable as exc:
            print(f"{source}: cannot read: {exc}", file=sys.stderr)
            status = EXIT_UNREADABLE
            continue
        print(format_summary(summary))
        if not summary.ok and status == 0:
            status = EXIT_BAD_LINES
    return status
