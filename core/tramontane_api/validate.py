"""Validate manifests of our kinds: the pydantic model, the generated schema, the CEL rules.

`validate_object` checks one object (optionally as an update of an old one);
`check_text` checks a multi-document YAML stream (loaded within an API server's request bounds,
see `yamlload`) and reports each problem at its line. A document whose kind is one of ours is
checked whatever its apiVersion says (a wrong or missing one is a problem); documents of other
APIs (Namespaces, Secrets, ...) are reported as skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import ValidationError

from .crdgen import crd_for
from .schema import Problem, SchemaValidator, format_path
from .v1alpha1 import API_VERSION, GROUP, KINDS_BY_NAME, Resource
from .v1alpha1.common import PATTERN_HINTS
from .yamlload import ManifestError, load_documents


@dataclass(frozen=True)
class DocumentProblem:
    """A problem in document `doc` (1-based; 0 for the whole text) at `line` (1-based)."""

    doc: int
    problem: Problem
    line: int = 0

    def format(self, name: str) -> str:
        """`FILE:LINE: field.path: message`, the line of the field when the parser knows it."""
        return f"{name}:{self.line}: {self.problem}"


@dataclass(frozen=True)
class Skipped:
    """A document of another API (a Secret, a Namespace): left to the API server."""

    doc: int
    line: int
    api_version: str
    kind: str
    name: str

    def format(self, name: str) -> str:
        what = f"{self.api_version or '?'} {self.kind or '?'}"
        return f"{name}:{self.line}: skipped {what} {self.name!r}: not a {GROUP} kind"


@dataclass
class TextReport:
    """What `check_text` found: documents of our kinds checked, problems, documents skipped."""

    checked: int = 0
    problems: list[DocumentProblem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@cache
def schema_validator(kind: str) -> SchemaValidator:
    return SchemaValidator.from_crd(crd_for(KINDS_BY_NAME[kind]))


def pydantic_message(item: Mapping[str, Any]) -> str:
    """Pydantic's message for one error, without its 'Value error, ' prefix."""
    message = str(item["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def pydantic_problems(error: ValidationError) -> list[Problem]:
    """Each error of `error` as a `Problem` at its field path (camelCase, as written)."""
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        prefix = ""
        if loc and loc[-1] == "[key]":  # a bad dictionary key: report it at the dictionary
            prefix = f"key {loc[-2]!r}: "
            loc = loc[:-2]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "string_pattern_mismatch":
            pattern = str((item.get("ctx") or {}).get("pattern", ""))
            message = PATTERN_HINTS.get(pattern, item["msg"])
        elif item["type"] in ("literal_error", "enum"):
            message = f"{item['msg']}, got {item.get('input')!r}"
        else:
            message = pydantic_message(item)
        problems.append(Problem(format_path(loc), prefix + message))
    return problems


def parse(obj: Mapping[str, Any]) -> Resource:
    """The typed object; raises `ValueError` naming the kind when it is not ours."""
    kind = obj.get("kind")
    model = KINDS_BY_NAME.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"kind: unknown kind {kind!r} (expected one of {sorted(KINDS_BY_NAME)})")
    return model.model_validate(obj)


def validate_object(obj: Any, old: Mapping[str, Any] | None = None) -> list[Problem]:
    """Every problem with one object of our API; an empty list when it is valid."""
    if not isinstance(obj, Mapping):
        return [Problem("", f"expected a mapping, got {type(obj).__name__}")]
    api_version = obj.get("apiVersion")
    if api_version != API_VERSION:
        kind = obj.get("kind")
        what = f" for kind {kind}" if isinstance(kind, str) and kind in KINDS_BY_NAME else ""
        got = "it is missing" if api_version is None else f"got {api_version!r}"
        return [Problem("apiVersion", f"expected {API_VERSION}{what}; {got}")]
    try:
        typed = parse(obj)
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            problems = pydantic_problems(exc)
        else:
            return [Problem("kind", str(exc).removeprefix("kind: "))]
    else:
        problems = []
    validator = schema_validator(str(obj["kind"]))
    seen = {p.path for p in problems}
    problems += [p for p in validator.structural_problems(obj) if p.path not in seen]
    if problems:
        return sorted(set(problems))
    # CEL rules see the object as the API server stores it: with defaults applied.
    defaulted = typed.model_dump(by_alias=True, exclude_none=True, mode="json")
    old_defaulted = None
    if old is not None:
        old_defaulted = parse(old).model_dump(by_alias=True, exclude_none=True, mode="json")
    return validator.rule_problems(defaulted, old_defaulted)


def is_ours(obj: Any) -> bool:
    """Whether `obj` claims to be of our API: by its group, or by one of our kind names."""
    if not isinstance(obj, Mapping):
        return False
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if isinstance(kind, str) and kind in KINDS_BY_NAME:
        return True
    return isinstance(api_version, str) and api_version.split("/")[0] == GROUP


def check_text(text: str) -> TextReport:
    """Validate a YAML stream of manifests, bounded like an API server request.

    Each problem carries the line of the field it names (or of its nearest enclosing field,
    or of the document). A text that holds no object at all is a problem ("no objects")."""
    report = TextReport()
    try:
        documents = load_documents(text)
    except ManifestError as exc:
        report.problems.append(DocumentProblem(0, Problem("", exc.message), exc.line))
        return report
    objects = 0
    for document in documents:
        doc = document.data
        if doc is None:
            continue
        objects += 1
        if not isinstance(doc, Mapping):
            problem = Problem("", f"document is not a mapping (got {type(doc).__name__})")
            report.problems.append(DocumentProblem(document.index, problem, document.line))
            continue
        if not is_ours(doc):
            metadata = doc.get("metadata")
            name = metadata.get("name") if isinstance(metadata, Mapping) else None
            report.skipped.append(
                Skipped(
                    document.index,
                    document.line,
                    str(doc.get("apiVersion") or ""),
                    str(doc.get("kind") or ""),
                    str(name or ""),
                )
            )
            continue
        report.checked += 1
        report.problems.extend(
            DocumentProblem(document.index, p, document.line_of(p.path))
            for p in validate_object(doc)
        )
    if objects == 0:
        report.problems.append(
            DocumentProblem(0, Problem("", "no objects (the file is empty or only comments)"), 1)
        )
    return report


def validate_text(text: str) -> tuple[int, list[DocumentProblem]]:
    """Validate a YAML stream; returns (documents of our kinds checked, problems)."""
    report = check_text(text)
    return report.checked, report.problems
