"""One manifest a command reads as input (a FineTuneJob for `finetune estimate`, a ComputeCluster
for its pricing), validated into our API model with every problem as `FILE:LINE: field: message`
instead of pydantic's dump.

Reading is `tramontane validate`'s: `tramontane_api.yamlload` bounds the text like an API server
request (size, nodes with aliases expanded, aliases, depth, duplicate keys) and knows the line
of every field; pydantic errors become field paths through `tramontane_api.validate`. What is
left here: one document of the expected kind and apiVersion, into the expected model.

`load_model(path, Model, kind)` returns the model or raises `ManifestError`, whose `code` is the
exit status (1: the file is wrong; 2: it cannot be read) and whose `problems` are the lines to
print.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from tramontane_api import yamlload
from tramontane_api.v1alpha1 import API_VERSION
from tramontane_cli.args import EXIT_INVALID, EXIT_USAGE

M = TypeVar("M", bound=BaseModel)


class ManifestError(Exception):
    """A manifest that cannot be read (code 2) or is wrong (code 1); `problems` name the lines."""

    def __init__(self, code: int, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.code = code
        self.problems = problems


def _wrong(path: str, line: int, message: str) -> ManifestError:
    where = f":{line}" if line else ""
    return ManifestError(EXIT_INVALID, [f"{path}{where}: {message}"])


def _read(path: str) -> str:
    """The text at `path`, at most one byte over the size limit `load_documents` enforces."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(yamlload.MAX_BYTES + 1)
    except OSError as exc:
        raise ManifestError(EXIT_USAGE, [f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        return yamlload.decode_bounded(data)
    except UnicodeDecodeError as exc:
        raise _wrong(path, 0, f"not valid UTF-8 (at byte {exc.start + 1})") from exc


def load_model(path: str, model: type[M], kind: str) -> M:
    """The single `kind` object in the YAML file at `path`, validated into `model`."""
    text = _read(path)
    try:
        documents = yamlload.load_documents(text)
    except yamlload.ManifestError as exc:
        raise _wrong(path, exc.line, exc.message) from exc
    documents = [d for d in documents if d.data is not None]
    if len(documents) != 1:
        raise _wrong(path, 0, f"expected one {kind} object, got {len(documents)} documents")
    (document,) = documents
    doc = document.data
    if not isinstance(doc, dict):
        raise _wrong(path, document.line, f"expected a {kind} object (a mapping)")
    got_kind, got_version = doc.get("kind"), doc.get("apiVersion")
    if got_kind != kind:
        line = document.line_of("kind")
        raise _wrong(path, line, f"kind: expected {kind}, got {got_kind!r}")
    if got_version != API_VERSION:
        line = document.line_of("apiVersion")
        raise _wrong(path, line, f"apiVersion: expected {API_VERSION}, got {got_version!r}")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        from tramontane_api.validate import pydantic_problems  # only on this path: it loads CEL

        problems = [
            f"{path}:{document.line_of(p.path)}: {p.path or '(top level)'}: {p.message}"
            for p in pydantic_problems(exc)
        ]
        raise ManifestError(EXIT_INVALID, problems) from exc


def checked_model(path: str, model: type[M], kind: str) -> M:
    """`load_model`, then the CRD schema and its CEL rules, as `tramontane validate` checks
    them (each problem `FILE:LINE: field: message`)."""
    obj = load_model(path, model, kind)
    from tramontane_api.validate import check_text  # loads CEL: only once the file parsed
    from tramontane_api.yamlload import decode_bounded

    with open(path, "rb") as handle:
        report = check_text(decode_bounded(handle.read()))
    if report.problems:
        raise ManifestError(EXIT_INVALID, [p.format(path) for p in report.problems])
    return obj
