"""The compact result of validating a FineTuneJob's datasets, and the entry point writing it.

`DatasetsReport` is what the operator turns into the job's `Validated` condition and estimate,
whether it validated the files itself or a validation Job did it in the cluster that mounts
their claims: totals (lines, bad lines, and the training files' conversations and tokens), the
training files without any conversation (by index), the first bad lines with their URI and
1-based number, and `unreadable` when a file could not be read.

    python -m tramontane_workers.contract.datasets_report \\
        --training URI [URI ...] [--validation URI ...] [--max-seq-len N]
        [--max-file-bytes N] [--evaluation] [--output /dev/termination-log]

runs the same streaming validation as `tramontane dataset validate`, reading at most
`--max-file-bytes` of each file (`DEFAULT_MAX_FILE_BYTES`; a larger file is reported as one
more bad line naming the limit, so a validation is bounded in size as its Job is in time), and
writes the report as
one JSON object that always fits in `--max-bytes` (4096 by default: the kubelet's limit on a
termination message): messages are shortened, then the last errors dropped (counted in
`more_errors`), never leaving invalid JSON. `--evaluation` checks an Evaluation's dataset
(the same rules; lines may also carry `response_format`). It exits 0 whenever a report was
written, valid data or not; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final

from pydantic import BaseModel, Field

from tramontane_workers.contract.datasets import DatasetSummary, DatasetUnreadable, validate_uri

TERMINATION_MESSAGE_BYTES: Final = 4096
# The most bytes read of one dataset file: larger files fail validation, naming this limit.
DEFAULT_MAX_FILE_BYTES: Final = 8 * 1024**3
DEFAULT_MAX_ERRORS: Final = 10
MESSAGE_CHARS: Final = 240  # one error's message, once the report must shrink


class ReportedError(BaseModel):
    uri: str
    line: int = Field(ge=1)
    path: str = ""
    message: str

    def describe(self) -> str:
        """`URI:LINE: path: message`, the CLI's format."""
        where = f"{self.path}: " if self.path else ""
        return f"{self.uri}:{self.line}: {where}{self.message}"


class DatasetsReport(BaseModel):
    """Validation of every training and validation file of one job."""

    ok: bool
    lines: int = 0
    bad_lines: int = 0
    conversations: int = Field(default=0, description="in the training files")
    tokens: int = Field(default=0, description="in the training files")
    trainable_tokens: int = Field(default=0, description="in the training files")
    truncated: int = Field(
        default=0,
        description="training conversations longer than the job's sequence length (cut)",
    )
    empty_training: list[int] = Field(
        default_factory=list, description="indexes of training files without a conversation"
    )
    errors: list[ReportedError] = Field(default_factory=list)
    more_errors: int = Field(default=0, description="errors left out to keep the report small")
    unreadable: str | None = None

    @classmethod
    def of(
        cls, training: Sequence[DatasetSummary], validation: Sequence[DatasetSummary]
    ) -> DatasetsReport:
        summaries = [*training, *validation]
        bad = sum(s.bad_lines for s in summaries)
        empty = [i for i, s in enumerate(training) if s.conversations == 0]
        return cls(
            ok=bad == 0 and not empty,
            lines=sum(s.lines for s in summaries),
            bad_lines=bad,
            conversations=sum(s.conversations for s in training),
            tokens=sum(s.tokens for s in training),
            trainable_tokens=sum(s.trainable_tokens for s in training),
            truncated=sum(s.truncated for s in training),
            empty_training=empty,
            errors=[
                ReportedError(uri=s.source, line=e.line, path=e.path, message=e.message)
                for s in summaries
                for e in s.errors
            ],
        )

    @classmethod
    def failed_to_read(cls, reason: str) -> DatasetsReport:
        return cls(ok=False, unreadable=reason)

    def to_json(self, max_bytes: int = TERMINATION_MESSAGE_BYTES) -> str:
        """The report as compact JSON of at most `max_bytes` UTF-8 bytes."""
        text = self.model_dump_json(exclude_defaults=True)
        if _size(text) <= max_bytes:
            return text
        short = self.model_copy(
            update={
                "errors": [
                    e.model_copy(update={"message": _shorten(e.message, MESSAGE_CHARS)})
                    for e in self.errors
                ],
                "unreadable": _shorten(self.unreadable, 1024) if self.unreadable else None,
            }
        )
        while True:
            text = short.model_dump_json(exclude_defaults=True)
            if _size(text) <= max_bytes or not short.errors:
                break
            short = short.model_copy(
                update={"errors": short.errors[:-1], "more_errors": short.more_errors + 1}
            )
        if _size(text) > max_bytes:  # only URIs could be this long: keep the numbers
            short = short.model_copy(update={"unreadable": _shorten(short.unreadable, 200)})
            text = short.model_dump_json(exclude_defaults=True)
        return text


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _shorten(text: str | None, chars: int) -> str | None:
    if text is None or len(text) <= chars:
        return text
    return text[: chars - 1] + "…"


def validate_files(
    training: Sequence[str],
    validation: Sequence[str],
    max_errors: int = DEFAULT_MAX_ERRORS,
    max_seq_len: int | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    evaluation: bool = False,
) -> DatasetsReport:
    """Validate every file; a file that cannot be read makes an `unreadable` report.
    With `max_seq_len`, training conversations longer than it are counted in `truncated`.
    At most `max_file_bytes` of each file are read: a larger one is a bad line naming it.
    `evaluation`: the files are evaluation datasets (lines may carry `response_format`)."""
    errors, limit, ev = max_errors, max_file_bytes, evaluation
    try:
        return DatasetsReport.of(
            [
                validate_uri(
                    uri, max_errors=errors, max_seq_len=max_seq_len, max_bytes=limit, evaluation=ev
                )
                for uri in training
            ],
            [
                validate_uri(uri, max_errors=errors, max_bytes=limit, evaluation=ev)
                for uri in validation
            ],
        )
    except DatasetUnreadable as exc:
        return DatasetsReport.failed_to_read(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tramontane_workers.contract.datasets_report",
        description="Validate a FineTuneJob's datasets and write a compact JSON report.",
    )
    parser.add_argument("--training", nargs="+", required=True, metavar="URI")
    parser.add_argument("--validation", nargs="*", default=[], metavar="URI")
    parser.add_argument("--output", default="-", help="file to write the report to (- : stdout)")
    parser.add_argument("--max-errors", type=int, default=DEFAULT_MAX_ERRORS)
    parser.add_argument("--max-bytes", type=int, default=TERMINATION_MESSAGE_BYTES)
    parser.add_argument(
        "--max-seq-len", type=int, default=None, help="count conversations longer than this"
    )
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=DEFAULT_MAX_FILE_BYTES,
        help="the most bytes read of one file; a larger file fails validation",
    )
    parser.add_argument(
        "--evaluation",
        action="store_true",
        help="the files are evaluation datasets (an Evaluation's): lines may carry response_format",
    )
    args = parser.parse_args(argv)
    if args.max_errors < 0 or args.max_bytes < 512:
        parser.error("--max-errors must be >= 0 and --max-bytes >= 512")
    if args.max_file_bytes < 1:
        parser.error("--max-file-bytes must be a positive integer")
    if args.max_seq_len is not None and args.max_seq_len < 1:
        parser.error("--max-seq-len must be a positive integer")
    report = validate_files(
        args.training,
        args.validation,
        args.max_errors,
        args.max_seq_len,
        args.max_file_bytes,
        evaluation=args.evaluation,
    )
    text = report.to_json(args.max_bytes)
    if args.output == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
        sys.stdout.write(text + "\n")  # also in the pod's log
    return 0


if __name__ == "__main__":
    sys.exit(main())
