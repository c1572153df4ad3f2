"""`tramontane dataset validate FILE...`: check Mistral chat JSONL before any GPU is spent.

Prints one `FILE:LINE: path: message` per bad line on stderr as it streams (a compressed file
or pretty-printed JSON gets one message, not one per line), then a summary per file on stdout
(lines, conversations, tokens with the v3 tokenizer, bad lines). A file without any
conversation is an error; with `--max-seq-len N`, conversations longer than N tokens are
counted in a warning. Exit status: 0 all good, 1 some file is bad, 2 usage error or some file
could not be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tramontane_cli.args import (
    EXIT_CODES_EPILOG,
    EXIT_INVALID,
    EXIT_USAGE,
    non_negative_int,
    positive_int,
)
from tramontane_workers.contract.datasets import (
    DEFAULT_MAX_ERRORS,
    DatasetSummary,
    DatasetUnreadable,
    LineError,
    validate_uri,
)

EXIT_BAD_LINES = EXIT_INVALID
EXIT_UNREADABLE = EXIT_USAGE
AUTO_POOL_BYTES = 32 * 1024 * 1024


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dataset", help="work with fine-tuning datasets")
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION")
    actions.required = True
    validate = actions.add_parser(
        "validate",
        help="validate Mistral chat JSONL files (FILE:LINE: message per bad line)",
        epilog=EXIT_CODES_EPILOG,
    )
    validate.add_argument(
        "files", nargs="+", metavar="FILE", help="path or URI (file://, s3://...)"
    )
    validate.add_argument(
        "--max-errors",
        type=non_negative_int,
        default=0,
        help="print at most this many bad lines per file (0: all of them)",
    )
    validate.add_argument(
        "--jobs",
        type=non_negative_int,
        default=0,
        help="processes to validate with (0: one per CPU for local files over 32 MB, else 1)",
    )
    validate.add_argument(
        "--max-seq-len",
        type=positive_int,
        metavar="N",
        help="warn about conversations longer than N tokens (the trainer would cut them)",
    )
    validate.add_argument("--quiet", action="store_true", help="print only the summaries")
    validate.set_defaults(func=run_validate)


def format_summary(summary: DatasetSummary) -> str:
    verdict = "ok" if summary.ok else f"{summary.bad_lines} bad line(s)"
    if summary.ok and summary.conversations == 0:
        verdict = "no conversations"
    return (
        f"{summary.source}: {summary.lines} lines, {summary.conversations} conversations, "
        f"{summary.tokens} tokens ({summary.trainable_tokens} trained on): {verdict}"
    )


def print_dataset_problems(summary: DatasetSummary, *, list_errors: bool) -> bool:
    """Print on stderr what is wrong with a dataset as a whole (and its first bad lines when
    `list_errors`), plus the truncation warning; True when the dataset is invalid."""
    if list_errors:
        for error in summary.errors:
            print(f"{summary.source}:{error.line}: {error.describe()}", file=sys.stderr)
        if summary.bad_lines > len(summary.errors):
            more = summary.bad_lines - len(summary.errors)
            print(f"{summary.source}: ... and {more} more bad line(s)", file=sys.stderr)
    empty = summary.ok and summary.conversations == 0
    if empty:
        print(
            f"{summary.source}: no conversations (the file is empty or holds only blank lines)",
            file=sys.stderr,
        )
    if summary.truncated:
        print(
            f"{summary.source}: warning: {summary.truncated} of {summary.conversations} "
            f"conversation(s) are longer than {summary.max_seq_len} tokens and would be cut "
            f"(longest: {summary.longest} tokens)",
            file=sys.stderr,
        )
    return empty or not summary.ok


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
            print(f"{source}:{error.line}: {error.describe()}", file=sys.stderr)

        try:
            summary = validate_uri(
                source,
                max_errors=DEFAULT_MAX_ERRORS,
                on_error=show,
                processes=processes_for(source, args.jobs),
                max_seq_len=args.max_seq_len,
            )
        except DatasetUnreadable as exc:
            print(f"{source}: cannot read: {exc}", file=sys.stderr)
            status = EXIT_UNREADABLE
            continue
        invalid = print_dataset_problems(summary, list_errors=False)
        print(format_summary(summary))
        if invalid and status == 0:
            status = EXIT_BAD_LINES
    return status
