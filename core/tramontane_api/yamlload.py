"""Load a manifest stream the way an API server bounds a request, keeping line numbers.

`load_documents` parses a multi-document YAML text into `Document`s (the object, the line it
starts on, and the line of every field path) and refuses, with the line where it stops:
- a text over `MAX_BYTES`: 3 MiB, the API server's request-body limit (kube-apiserver
  `MaxRequestBodyBytes`; etcd's own default request limit is smaller still, 1.5 MiB);
- more than `MAX_ALIASES` aliases in a document, an alias to the node that encloses it (a
  recursive structure), or a document whose nodes, with every alias expanded, exceed
  `MAX_NODES` (a "billion laughs" is refused after a few hundred nodes, not after gigabytes);
- nesting deeper than `MAX_DEPTH`;
- a mapping with the same key twice (kubectl refuses it too: "key already set in map").

Events come from libyaml when it is present; composition is ours, so every bound holds
before any object is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from .schema import format_path

MAX_BYTES = 3 * 1024 * 1024
MAX_NODES = 20_000
MAX_ALIASES = 100
MAX_DEPTH = 64


class _PureParser(Reader, Scanner, Parser):
    """The pure-Python event source, for a PyYAML built without libyaml."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)


# libyaml's scanner and parser are ~10x faster than the pure-Python ones.
_Parser: type = getattr(getattr(yaml, "cyaml", None), "CParser", _PureParser)


class ManifestError(Exception):
    """A text that cannot be loaded; `line` is 1-based, 0 when unknown."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class Document:
    """One document of a stream: its object, first line, and the line of each field path."""

    index: int
    line: int
    data: Any
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, path: str) -> int:
        """The line of `path`, else of its nearest enclosing field, else of the document."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[: max(cut, 0)]
        return self.line


class _Refused(ComposerError):
    """A bound of this module, as opposed to a YAML syntax error."""


class _BoundedLoader(Composer, _Parser, SafeConstructor, Resolver):  # type: ignore[misc]
    """PyYAML's safe loader with the bounds above checked while composing."""

    def __init__(self, text: str) -> None:
        _Parser.__init__(self, text)  # type: ignore[misc]
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._reset()

    def _reset(self) -> None:
        self._nodes = 0
        self._aliases = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, once it is complete

    def compose_document(self) -> Node | None:
        self._reset()
        return super().compose_document()

    def _grow(self, count: int, mark: Any) -> None:
        self._nodes += count
        if self._nodes > MAX_NODES:
            raise _Refused(
                None,
                None,
                f"document too large: more than {MAX_NODES} nodes with aliases expanded",
                mark,
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self._sizes:
                    raise _Refused(
                        None,
                        None,
                        f"alias *{event.anchor} refers to its own enclosing node",
                        event.start_mark,
                    )
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _Refused(
                        None,
                        None,
                        f"more than {MAX_ALIASES} aliases in a document",
                        event.start_mark,
                    )
                self._grow(self._sizes[id(target)], event.start_mark)
            return super().compose_node(parent, index)
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        before = self._nodes
        self._grow(1, mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the constructor reports it
            if duplicate:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (already set in this mapping)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _field_lines(root: Node) -> dict[str, int]:
    """The line of every field path under `root` (the key's line for a mapping entry)."""
    lines: dict[str, int] = {}
    visited: set[int] = set()
    stack: list[tuple[Node, list[Any]]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:  # an alias: its fields were listed where it was defined
            continue
        visited.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                child = [*path, key_node.value]
                lines[format_path(child)] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                child = [*path, i]
                lines[format_path(child)] = item.start_mark.line + 1
                stack.append((item, child))
    return lines


def _line_of(exc: yaml.YAMLError) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return int(mark.line) + 1 if mark is not None else 0


def decode_bounded(data: bytes) -> str:
    """The text of a manifest read as at most `MAX_BYTES + 1` bytes. Past the limit the file is
    refused for its size by `load_documents`, wherever the read cut a character; below it,
    bytes that are not UTF-8 raise `UnicodeDecodeError` (a file that cannot be read)."""
    if len(data) > MAX_BYTES:
        return data.decode("utf-8", errors="replace")
    return data.decode("utf-8")


def load_documents(text: str) -> list[Document]:
    """Every document of `text`, empty ones included; `ManifestError` on the first refusal."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_BYTES:
        raise ManifestError(
            0,
            f"{size} bytes is over the {MAX_BYTES}-byte (3 MiB) limit of an API server "
            "request; split the file",
        )
    loader = _BoundedLoader(text)
    documents: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node() said there is one
                break
            data = loader.construct_document(node)
            documents.append(
                Document(
                    index=len(documents) + 1,
                    line=node.start_mark.line + 1,
                    data=data,
                    lines=_field_lines(node),
                )
            )
    except _Refused as exc:
        raise ManifestError(_line_of(exc), f"refused: {exc.problem}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(_line_of(exc), f"invalid YAML: {problem}") from None
    except RecursionError:  # pragma: no cover - bounded by MAX_DEPTH
        raise ManifestError(0, f"invalid YAML: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    return documents
