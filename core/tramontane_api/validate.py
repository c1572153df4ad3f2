"""Validate manifests of our kinds: the pydantic model, the generated schema, the CEL rules.

`validate_object` checks one object (optionally as an update of an old one);
`validate_text` checks a multi-document YAML stream and reports problems per document.
Objects of other API groups in the same file (Namespaces, Secrets, ...) are left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml
from pydantic import ValidationError

from .crdgen import crd_for
from .schema import Problem, SchemaValidator, format_path
from .v1alpha1 import API_VERSION, GROUP, KINDS_BY_NAME, Resource
from .v1alpha1.common import PATTERN_HINTS


@dataclass(frozen=True)
class DocumentProblem:
    """A problem in document `doc` (1-based) of a YAML stream."""

    doc: int
    problem: Problem


@cache
def schema_validator(kind: str) -> SchemaValidator:
    return SchemaValidator.from_crd(crd_for(KINDS_BY_NAME[kind]))


def _pydantic_problems(error: ValidationError) -> list[Problem]:
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
            message = item["msg"]
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
        return [Problem("apiVersion", f"expected {API_VERSION!r}, got {api_version!r}")]
    try:
        typed = parse(obj)
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            problems = _pydantic_problems(exc)
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
    api_version = obj.get("apiVersion") if isinstance(obj, Mapping) else None
    return isinstance(api_version, str) and api_version.split("/")[0] == GROUP


def validate_text(text: str) -> tuple[int, list[DocumentProblem]]:
    """Validate a YAML stream; returns (documents of our group checked, problems)."""
    checked = 0
    problems: list[DocumentProblem] = []
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return 0, [DocumentProblem(0, Problem("", f"{where}invalid YAML: {problem}"))]
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            problems.append(DocumentProblem(index, Problem("", "document is not a mapping")))
            continue
        if not is_ours(doc):
            continue
        checked += 1
        problems.extend(DocumentProblem(index, p) for p in validate_object(doc))
    return checked, problems
