"""Validate an object against a CRD's structural schema the way an API server does.

Three passes, each naming the field it rejects: the OpenAPI v3 schema (types, enums, bounds,
patterns, required fields, unknown fields), Kubernetes list semantics
(`x-kubernetes-list-type: map|set` uniqueness), and CEL `x-kubernetes-validations` rules
evaluated with cel-python (`self`, and `oldSelf` on updates for transition rules). Used by
`tramontane validate`, and by the operator tests to hold every object written to the API
emulator — ours and KubeRay's — to the same rules a real API server applies.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
import celpy.adapter
import jsonschema
from celpy.evaluation import CELEvalError


@dataclass(frozen=True, order=True)
class Problem:
    """One validation failure at a field path such as `spec.adapters[0].uri`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


_MISSING = object()


def format_path(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class SchemaValidator:
    """Validates objects against one CRD version's `openAPIV3Schema`."""

    def __init__(self, openapi_schema: Mapping[str, Any], strict_unknown_fields: bool = True):
        self.schema = dict(openapi_schema)
        self._json_schema = _to_json_schema(self.schema, strict_unknown_fields)
        self._validator = jsonschema.Draft4Validator(self._json_schema)

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any], version: str | None = None) -> SchemaValidator:
        versions = crd["spec"]["versions"]
        chosen = next((v for v in versions if version is None or v["name"] == version), None)
        if chosen is None:
            raise ValueError(f"CRD {crd['metadata']['name']} has no version {version!r}")
        return cls(chosen["schema"]["openAPIV3Schema"])

    def validate(
        self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None
    ) -> list[Problem]:
        """Every problem with `obj` (an update of `old` when given); empty when valid.

        As an API server does: schema defaults are applied first, then the schema is checked,
        then (only on a structurally valid object) the CEL rules."""
        obj = self.apply_defaults(obj)
        problems = self.structural_problems(obj)
        if problems:
            return problems
        return self.rule_problems(obj, None if old is None else self.apply_defaults(old))

    def apply_defaults(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `obj` with the schema's `default`s filled in, as the API server stores it."""
        out = copy.deepcopy(dict(obj))
        _default(self.schema, out)
        return out

    def structural_problems(self, obj: Mapping[str, Any]) -> list[Problem]:
        problems: list[Problem] = []
        for error in self._validator.iter_errors(obj):
            path = list(error.absolute_path)
            if error.validator == "additionalProperties" and isinstance(error.instance, dict):
                known = error.schema.get("properties", {})
                problems.extend(
                    Problem(format_path([*path, key]), "unknown field")
                    for key in error.instance
                    if key not in known
                )
            elif error.validator == "required" and isinstance(error.instance, dict):
                problems.extend(
                    Problem(format_path([*path, key]), "required field is missing")
                    for key in error.validator_value
                    if key not in error.instance
                )
            else:
                problems.append(Problem(format_path(path), _schema_message(error)))
        problems.extend(_list_problems(self.schema, obj, ()))
        return sorted(set(problems))

    def rule_problems(
        self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None
    ) -> list[Problem]:
        problems: list[Problem] = []
        _walk_rules(self.schema, obj, _MISSING if old is None else old, (), problems)
        return problems


def _default(schema: Mapping[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key in value:
                if key not in schema.get("properties", {}):
                    _default(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _default(schema["items"], item)


def _schema_message(error: jsonschema.ValidationError) -> str:
    return str(error.message)


def _to_json_schema(node: Any, strict: bool) -> Any:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema draft 4."""
    if isinstance(node, list):
        return [_to_json_schema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _to_json_schema(sub, strict) for name, sub in value.items()}
        elif not key.startswith("x-kubernetes-") and key not in ("nullable", "default", "format"):
            out[key] = _to_json_schema(value, strict)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if "pattern" in out:
            out["anyOf"][1]["pattern"] = out.pop("pattern")
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    is_object = node.get("type") == "object"
    if (
        strict
        and is_object
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and not node.get("x-kubernetes-embedded-resource")
    ):
        out["additionalProperties"] = False
    return out


def _list_problems(schema: Mapping[str, Any], value: Any, path: tuple[Any, ...]) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(value, Mapping):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = props.get(key) or (extra if isinstance(extra, Mapping) else None)
            if sub_schema is not None:
                problems.extend(_list_problems(sub_schema, sub, (*path, key)))
    elif isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: dict[Any, int] = {}
        for index, item in enumerate(value):
            if list_type == "set":
                marker: Any = repr(item)
            elif list_type == "map" and isinstance(item, Mapping):
                marker = tuple(repr(item.get(k)) for k in keys)
            else:
                marker = None
            if marker is not None:
                if marker in seen:
                    what = (
                        "value"
                        if list_type == "set"
                        else "key " + ", ".join(f"{k}={item.get(k)!r}" for k in keys)
                    )
                    problems.append(
                        Problem(
                            format_path((*path, index)),
                            f"duplicate {what} (also at [{seen[marker]}])",
                        )
                    )
                else:
                    seen[marker] = index
            if isinstance(schema.get("items"), Mapping):
                problems.extend(_list_problems(schema["items"], item, (*path, index)))
    return problems


@lru_cache(maxsize=1024)
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _is_transition_rule(rule: str) -> bool:
    return "oldSelf" in rule


def _walk_rules(
    schema: Mapping[str, Any], value: Any, old: Any, path: tuple[Any, ...], out: list[Problem]
) -> None:
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        transition = _is_transition_rule(rule)
        if transition and old is _MISSING:
            continue
        activation = {"self": celpy.adapter.json_to_cel(copy.deepcopy(value))}
        if transition:
            activation["oldSelf"] = celpy.adapter.json_to_cel(copy.deepcopy(old))
        where = format_path(path)
        field_path = entry.get("fieldPath")
        if field_path:
            where = f"{where}{field_path}" if where else field_path.lstrip(".")
        try:
            ok = _program(rule).evaluate(activation)
        except CELEvalError as exc:
            out.append(Problem(where, f"rule {rule!r} could not be evaluated: {exc.args[0]}"))
            continue
        if not bool(ok):
            out.append(Problem(where, entry.get("message") or f"failed rule: {rule}"))

    if isinstance(value, Mapping):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = props.get(key) or (extra if isinstance(extra, Mapping) else None)
            if sub_schema is None:
                continue
            old_sub = old.get(key, _MISSING) if isinstance(old, Mapping) else _MISSING
            _walk_rules(sub_schema, sub, old_sub, (*path, key), out)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            # Transition rules inside lists only apply to list-type map items matched by key
            # (as in Kubernetes); positional matching would invent "changes".
            _walk_rules(schema["items"], item, _MISSING, (*path, index), out)
