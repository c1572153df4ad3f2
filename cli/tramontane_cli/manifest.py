"""One manifest a command reads as input (a FineTuneJob for `finetune estimate`, a ComputeCluster
for its pricing): loaded with line numbers, bounded, and validated into our API model with every
problem as `FILE:LINE: field: message` instead of pydantic's dump.

`load_model(path, Model)` returns the model or raises `ManifestError`, whose `code` is the exit
status (1: the file is wrong; 2: it cannot be read) and whose `problems` are the lines to print.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tramontane_api.v1alpha1 import API_VERSION
from tramontane_cli.args import EXIT_INVALID, EXIT_USAGE

MAX_BYTES: Final = 3 * 1024 * 1024  # the API server's default request size limit
MAX_NODES: Final = 100_000  # YAML nodes once aliases are expanded

M = TypeVar("M", bound=BaseModel)


class ManifestError(Exception):
    """A manifest that cannot be read (code 2) or is wrong (code 1); `problems` name the lines."""

    def __init__(self, code: int, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.code = code
        self.problems = problems


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ManifestError(EXIT_USAGE, [f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    if len(data) > MAX_BYTES:
        raise ManifestError(EXIT_INVALID, [f"{path}: larger than {MAX_BYTES} bytes"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            EXIT_INVALID, [f"{path}: not valid UTF-8 (at byte {exc.start + 1})"]
        ) from exc


def _check_nodes(path: str, root: yaml.Node) -> None:
    """Refuse duplicate keys and alias bombs before anything is constructed."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a recursive alias counts once
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        line = key.start_mark.line + 1
                        raise ManifestError(
                            EXIT_INVALID, [f"{path}:{line}: {key.value}: duplicate key"]
                        )
                    seen.add(key.value)
                total += size(key) + size(value)
                if total > MAX_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                if total > MAX_NODES:
                    break
        if total > MAX_NODES:
            line = node.start_mark.line + 1
            raise ManifestError(
                EXIT_INVALID,
                [f"{path}:{line}: more than {MAX_NODES} YAML nodes once aliases are expanded"],
            )
        sizes[id(node)] = total
        return total

    size(root)


def _line_of(root: yaml.Node, loc: tuple[int | str, ...]) -> int:
    """The line (1-based) of the deepest node along `loc` that exists in the document."""
    node = root
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if child is not None:
                key = next(k for k, v in node.value if v is child)
                line = key.start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def field_path(loc: tuple[int | str, ...]) -> str:
    """('spec', 'trainingFiles', 0, 'uri') -> 'spec.trainingFiles[0].uri'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def pydantic_message(item: Any) -> str:
    """Pydantic's message without its 'Value error, ' prefix."""
    message = str(item["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def load_model(path: str, model: type[M], kind: str) -> M:
    """The single `kind` object in the YAML file at `path`, validated into `model`."""
    text = _read(path)
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(EXIT_INVALID, [f"{path}{where}: invalid YAML: {problem}"]) from exc
    nodes = [n for n in nodes if n is not None]
    if len(nodes) != 1:
        raise ManifestError(
            EXIT_INVALID, [f"{path}: expected one {kind} object, got {len(nodes)} documents"]
        )
    (root,) = nodes
    _check_nodes(path, root)
    try:
        doc = yaml.SafeLoader("").construct_document(root)
    except yaml.YAMLError as exc:  # e.g. an unhashable key, a bad timestamp
        line = root.start_mark.line + 1
        raise ManifestError(EXIT_INVALID, [f"{path}:{line}: invalid YAML: {exc}"]) from exc
    if not isinstance(doc, dict):
        raise ManifestError(EXIT_INVALID, [f"{path}:1: expected a {kind} object (a mapping)"])
    got_kind, got_version = doc.get("kind"), doc.get("apiVersion")
    if got_kind != kind:
        line = _line_of(root, ("kind",))
        raise ManifestError(
            EXIT_INVALID, [f"{path}:{line}: kind: expected {kind}, got {got_kind!r}"]
        )
    if got_version != API_VERSION:
        line = _line_of(root, ("apiVersion",))
        raise ManifestError(
            EXIT_INVALID,
            [f"{path}:{line}: apiVersion: expected {API_VERSION}, got {got_version!r}"],
        )
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            loc = tuple(item["loc"])
            where = field_path(loc) or "(top level)"
            problems.append(f"{path}:{_line_of(root, loc)}: {where}: {pydantic_message(item)}")
        raise ManifestError(EXIT_INVALID, problems) from exc
