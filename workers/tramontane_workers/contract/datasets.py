"""Streaming validation of Mistral chat fine-tuning datasets (JSONL), shared by CLI and job.

`validate_uri(uri)` is what the operator's `Validating` phase and `tramontane dataset validate`
call: it reads the file line by line (memory stays flat whatever its size; a single line is
capped at `MAX_LINE_BYTES`), reports at most one `LineError` per bad line with its 1-based
number and field path, and returns a `DatasetSummary` (lines, conversations, tokens with the
real v3 tokenizer, bad lines, the first errors); an `on_error` callback sees every bad line
as it is found. `processes > 1` spreads batches of lines over a process pool, in order.
`iter_checked` yields each line's tokens and loss mask, for the trainer.

`open_uri` is the only I/O seam: `file://` URIs and plain paths are opened directly,
`pvc://<claim>/<path>` at `$TRAMONTANE_PVC_ROOT/<claim>/<path>` (default root `/mnt/pvc`, where
the operator mounts each claim); other schemes (s3://, gs://, abfs://...) go through fsspec when
it is installed.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field

from tramontane_workers.contract.datasets_rules import Violation, check_record
from tramontane_workers.contract.datasets_tokens import Encoded, encode_record
from tramontane_workers.contract.pvc import pvc_path

MAX_LINE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_ERRORS = 20
BATCH_LINES = 1000  # lines per task when validating in a process pool
INVALID_JSON = "invalid JSON"
LONE_BRACKET = "the line holds only"
# Consecutive lines that are not JSON objects after which a file is taken for pretty-printed JSON.
PRETTY_PRINTED_RUN = 3
PRETTY_PRINTED_HINT = (
    "this looks like pretty-printed JSON: JSONL holds one complete JSON object per line "
    "(convert with `jq -c '.[]'` for an array or `jq -c .` for a stream); "
    "further lines that are not JSON objects (or are objects without 'messages') are counted "
    "but not listed"
)
# Magic bytes of compressed files someone may hand over instead of the JSONL inside.
COMPRESSED_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
    (b"PK\x03\x04", "zip", "unzip"),
    (b"BZh", "bzip2", "bunzip2"),
)


class DatasetUnreadable(OSError):
    """The dataset cannot be opened or read (missing file, unknown scheme, I/O error)."""


class DatasetTooLarge(Exception):
    """More than `limit` bytes of one file were read (`validate_stream`'s `max_bytes`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


def too_large_message(limit: int) -> str:
    """The error reported on the line after the last one read when a file exceeds `limit`."""
    return (
        f"the file is larger than {limit} bytes, the most validated per file: "
        "split it into several files"
    )


class LineError(BaseModel):
    """One bad line: its 1-based number, the field path (may be empty) and the broken rule."""

    model_config = ConfigDict(frozen=True)

    line: int = Field(ge=1)
    path: str = ""
    message: str

    def describe(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DatasetSummary(BaseModel):
    """What validation found in one dataset; `errors` holds at most the first max_errors."""

    source: str
    lines: int = 0
    conversations: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    bad_lines: int = 0
    errors: list[LineError] = Field(default_factory=list)
    longest: int = Field(default=0, description="tokens of the longest conversation")
    max_seq_len: int | None = Field(default=None, description="the length `truncated` counts at")
    truncated: int = Field(default=0, description="conversations longer than max_seq_len tokens")

    @property
    def ok(self) -> bool:
        return self.bad_lines == 0


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What validation keeps of one line: token counts, or its error (neither: blank line)."""

    line: int
    tokens: int = 0
    trainable: int = 0
    error: LineError | None = None
    blank: bool = False


def decode_line(raw: bytes) -> Any | Violation:
    """The JSON value of one raw JSONL line, or why it is not one (UTF-8, JSON syntax)."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return Violation("", f"not valid UTF-8 ({exc.reason} at byte {exc.start + 1})")
    if text.strip() in ("{", "["):
        return Violation("", f"{INVALID_JSON}: {LONE_BRACKET} {text.strip()!r}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = "at the end of the line" if exc.pos >= len(text) else f"at column {exc.colno}"
        return Violation("", f"{INVALID_JSON}: {exc.msg} {where}")


def check_line(raw: bytes, evaluation: bool = False) -> Encoded | Violation:
    """Decode, check and tokenize one raw JSONL line (pure apart from the cached tokenizer).
    `evaluation`: a line of an evaluation dataset (which may carry `response_format`)."""
    record = decode_line(raw)
    if isinstance(record, Violation):
        return record
    violation = check_record(record, evaluation=evaluation)
    if violation is not None:
        return violation
    return encode_record(record)


def _split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme == "pvc":
        return "file", pvc_path(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # 1 letter: a Windows drive
        path = unquote(parsed.path) if parsed.scheme == "file" else uri
        return "file", path
    return parsed.scheme, uri


@contextmanager
def open_uri(uri: str) -> Iterator[IO[bytes]]:
    """Open a dataset for binary reading: a path, a file:// URI, or any fsspec URI."""
    scheme, target = _split_uri(uri)
    try:
        if scheme == "file":
            handle: IO[bytes] = open(target, "rb")  # noqa: SIM115 - closed below
        else:
            try:
                import fsspec
            except ImportError as exc:
                raise DatasetUnreadable(f"{uri}: reading {scheme}:// needs fsspec") from exc
            handle = fsspec.open(target, "rb").open()
    except DatasetUnreadable:
        raise
    except (OSError, ValueError, ImportError) as exc:  # ImportError: no fsspec back-end
        raise DatasetUnreadable(f"{uri}: {exc}") from exc
    with handle:
        yield handle


def raw_lines(
    stream: IO[bytes], max_bytes: int | None = None
) -> Iterator[tuple[int, bytes | None]]:
    """(number, bytes) per line; bytes is None for a line longer than MAX_LINE_BYTES.
    DatasetTooLarge once more than `max_bytes` were read (None: no bound)."""
    number = 0
    read = 0

    def counted(chunk: bytes) -> bytes:
        nonlocal read
        read += len(chunk)
        if max_bytes is not None and read > max_bytes:
            raise DatasetTooLarge(max_bytes)
        return chunk

    while True:
        chunk = counted(stream.readline(MAX_LINE_BYTES + 1))
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # skip the rest of the giant line
                chunk = counted(stream.readline(MAX_LINE_BYTES))
            yield number, None
        else:
            yield number, chunk


def check_raw(raw: bytes | None, evaluation: bool = False) -> Encoded | Violation | None:
    """`check_line` for what `raw_lines` yields: None for a blank line."""
    if raw is None:
        return Violation("", f"line longer than {MAX_LINE_BYTES} bytes")
    if not raw.strip():
        return None
    return check_line(raw, evaluation)


def iter_checked(stream: IO[bytes]) -> Iterator[tuple[int, Encoded | Violation | None]]:
    """Every line's number and result, in order (the trainer reads datasets through this)."""
    for number, raw in raw_lines(stream):
        yield number, check_raw(raw)


def _outcome(number: int, result: Encoded | Violation | None) -> LineOutcome:
    if result is None:
        return LineOutcome(number, blank=True)
    if isinstance(result, Violation):
        return LineOutcome(
            number, error=LineError(line=number, path=result.path, message=result.message)
        )
    return LineOutcome(number, tokens=len(result.tokens), trainable=result.trainable)


def _check_batch(
    batch: list[tuple[int, bytes | None]], evaluation: bool = False
) -> list[LineOutcome]:
    """Runs in a pool process: only counts and errors travel back, never token lists."""
    return [_outcome(number, check_raw(raw, evaluation)) for number, raw in batch]


def _batches(stream: IO[bytes], max_bytes: int | None) -> Iterator[list[tuple[int, bytes | None]]]:
    batch: list[tuple[int, bytes | None]] = []
    for item in raw_lines(stream, max_bytes):
        batch.append(item)
        if len(batch) == BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch


def iter_outcomes(
    stream: IO[bytes], processes: int = 1, max_bytes: int | None = None, evaluation: bool = False
) -> Iterator[LineOutcome]:
    """Line outcomes in order; with processes > 1 batches are checked in a process pool, with
    at most two batches per process in flight so memory stays bounded. DatasetTooLarge once
    more than `max_bytes` were read."""
    if processes <= 1:
        for number, raw in raw_lines(stream, max_bytes):
            yield _outcome(number, check_raw(raw, evaluation))
        return
    context = multiprocessing.get_context("spawn")  # safe beside threads (operator, Ray)
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        pending: deque[Future[list[LineOutcome]]] = deque()
        for batch in _batches(stream, max_bytes):
            pending.append(pool.submit(_check_batch, batch, evaluation))
            if len(pending) >= 2 * processes:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def compressed_format(head: bytes) -> tuple[str, str] | None:
    """(format, decompressor) when `head` starts like a compressed file, else None."""
    for magic, name, tool in COMPRESSED_MAGIC:
        if head.startswith(magic):
            return name, tool
    return None


def _head(stream: IO[bytes]) -> bytes:
    """The first bytes of `stream` without consuming them (b"" where it cannot tell)."""
    peek = getattr(stream, "peek", None)
    if callable(peek):
        head: bytes = peek(4)[:4]
        return head
    if stream.seekable():
        position = stream.tell()
        head = stream.read(4)
        stream.seek(position)
        return head
    return b""


def _is_line_shape_error(error: LineError) -> bool:
    """Not JSON, or JSON that is not an object: what the lines of pretty-printed JSON give."""
    return error.path == "" and error.message.startswith((INVALID_JSON, "a line must be"))


def _is_fragment_error(error: LineError) -> bool:
    """A top-level unknown field: what an inner object of pretty-printed JSON gives."""
    return (
        "." not in error.path
        and "[" not in error.path
        and error.message.startswith("unknown field")
    )


def validate_stream(
    stream: IO[bytes],
    source: str,
    *,
    max_errors: int = DEFAULT_MAX_ERRORS,
    on_error: Callable[[LineError], None] | None = None,
    processes: int = 1,
    max_seq_len: int | None = None,
    max_bytes: int | None = None,
    evaluation: bool = False,
) -> DatasetSummary:
    """Validate an open binary stream; `on_error` sees every bad line, the summary the first few.

    A compressed file is one error on line 1. Once the file looks like pretty-printed JSON
    (line 1 is a lone `{` or `[`, or `PRETTY_PRINTED_RUN` lines in a row are not JSON objects)
    one hint is reported and further such lines are only counted. With `max_seq_len`,
    conversations longer than that many tokens are counted in `truncated`. With `max_bytes`,
    reading stops after that many bytes: one more bad line says the file is too large.
    `evaluation`: an evaluation dataset's rules (lines may carry `response_format`).
    """
    summary = DatasetSummary(source=source, max_seq_len=max_seq_len)

    def report(error: LineError) -> None:
        if len(summary.errors) < max_errors:
            summary.errors.append(error)
        if on_error is not None:
            on_error(error)

    compressed = compressed_format(_head(stream))
    if compressed is not None:
        name, tool = compressed
        summary.lines = summary.bad_lines = 1
        report(
            LineError(
                line=1,
                message=f"the file is {name}-compressed: decompress it first ({tool})",
            )
        )
        return summary
    try:
        _check_lines(stream, summary, report, processes, max_bytes, evaluation)
    except DatasetTooLarge as exc:
        summary.bad_lines += 1
        report(LineError(line=summary.lines + 1, message=too_large_message(exc.limit)))
    return summary


def _check_lines(
    stream: IO[bytes],
    summary: DatasetSummary,
    report: Callable[[LineError], None],
    processes: int,
    max_bytes: int | None,
    evaluation: bool = False,
) -> None:
    """Count every line of `stream` into `summary`, reporting bad ones (`validate_stream`)."""
    max_seq_len = summary.max_seq_len
    hinted = False
    run: list[LineError] = []  # the current run of line-shape errors, not yet reported
    for outcome in iter_outcomes(stream, processes, max_bytes, evaluation):
        summary.lines = outcome.line
        error = outcome.error
        if error is None:
            if outcome.blank:
                continue
            for pending in run:
                report(pending)
            run = []
            summary.conversations += 1
            summary.tokens += outcome.tokens
            summary.trainable_tokens += outcome.trainable
            summary.longest = max(summary.longest, outcome.tokens)
            if max_seq_len is not None and outcome.tokens > max_seq_len:
                summary.truncated += 1
            continue
        summary.bad_lines += 1
        if hinted and _is_fragment_error(error):
            continue  # a fragment of pretty-printed JSON that happens to parse
        if not _is_line_shape_error(error):
            for pending in run:
                report(pending)
            run = []
            report(error)
            continue
        if hinted:
            continue  # counted above, not listed
        run.append(error)
        if LONE_BRACKET in error.message or len(run) >= PRETTY_PRINTED_RUN:
            hinted = True
            report(LineError(line=run[0].line, message=PRETTY_PRINTED_HINT))
            run = []
    for pending in run:
        report(pending)


def validate_uri(
    uri: str,
    *,
    max_errors: int = DEFAULT_MAX_ERRORS,
    on_error: Callable[[LineError], None] | None = None,
    processes: int = 1,
    max_seq_len: int | None = None,
    max_bytes: int | None = None,
    evaluation: bool = False,
) -> DatasetSummary:
    """Validate the dataset at `uri`; raises DatasetUnreadable if it cannot be read. With
    `max_bytes`, at most that many bytes are read (a larger file is one more bad line);
    `evaluation`: by an evaluation dataset's rules."""
    with open_uri(uri) as stream:
        try:
            return validate_stream(
                stream,
                uri,
                max_errors=max_errors,
                on_error=on_error,
                processes=processes,
                max_seq_len=max_seq_len,
                max_bytes=max_bytes,
                evaluation=evaluation,
            )
        except OSError as exc:
            raise DatasetUnreadable(f"{uri}: {exc}") from exc
