"""The rules a Mistral chat fine-tuning line must follow, as pure checks with field paths.

One line of a dataset is `{"messages": [...], "tools": [...]}`. `check_record` walks the
decoded object in document order and returns the *first* violation as a `Violation` with a
field path such as `messages[2].tool_calls[0].id`, or None. The rules (issue 5):

- a line holds `messages` (a non-empty list) and optionally `tools`; nothing else;
- roles are system / user / assistant / tool; the first message is system or user; the last
  is assistant; roles follow mistral-common's allowed transitions;
- system, user and tool messages carry text content (a string or a list of text chunks);
- an assistant message carries content or tool calls (one of the two: the v3 tokenizer cannot
  encode both); its optional `weight` is 0 or 1;
- a tool-call id is 9 ASCII letters or digits, unique in the conversation; every called
  function is defined in `tools`; every tool message answers a pending call of the assistant
  message just before it, and every call is answered before the next user or assistant turn
  (calls in the final assistant message need no answer: that is how tool use is taught);
- a tool call's `arguments` is a JSON object, or a string that parses to one.

Evaluation datasets (`check_record(..., evaluation=True)`) follow the same rules and may also
carry a `response_format` as in Mistral's chat API (`{"type": "json_schema", "json_schema":
{"name": ..., "schema": {...}}}`, or type text / json_object): the answer format the evaluator
requests, which `jsonSchemaValid` scores. Training lines may not: the fine-tuning format has no
such key. mistral-common's `ResponseFormat` checks the schema itself afterwards.

These checks exist only to name the field precisely; mistral-common's own models and
`MistralRequestValidatorV3` run afterwards (see `datasets_tokens`) as the reference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TOOL_CALL_ID = re.compile(r"[a-zA-Z0-9]{9}")
ROLES = ("system", "user", "assistant", "tool")
TOP_LEVEL_KEYS = ("messages", "tools")
EVAL_TOP_LEVEL_KEYS = (*TOP_LEVEL_KEYS, "response_format")
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
# mistral-common's allowed role transitions (MistralRequestValidator._validate_message_order).
_NEXT_ROLES: dict[str, frozenset[str]] = {
    "system": frozenset({"system", "user", "assistant"}),
    "user": frozenset({"system", "user", "assistant"}),
    "assistant": frozenset({"assistant", "user", "tool"}),
    "tool": frozenset({"assistant", "user", "tool"}),
}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: where (a field path, empty for the whole line) and what."""

    path: str
    message: str


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _check_text_content(content: Any, path: str, required: bool) -> Violation | None:
    """Content is a string or a list of `{"type": "text", "text": str}` chunks."""
    if content is None:
        return Violation(path, "is required") if required else None
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return Violation(
            path, f"must be a string or a list of text chunks, got {_type_name(content)}"
        )
    for i, chunk in enumerate(content):
        where = f"{path}[{i}]"
        if not isinstance(chunk, dict):
            return Violation(where, f"must be an object, got {_type_name(chunk)}")
        if chunk.get("type") != "text":
            return Violation(
                f"{where}.type", f"only text chunks are supported, got {chunk.get('type')!r}"
            )
        if not isinstance(chunk.get("text"), str):
            return Violation(f"{where}.text", "must be a string")
    return None


def _check_tools(tools: Any) -> tuple[set[str], Violation | None]:
    """Return the defined function names, or the first malformed tool."""
    if not isinstance(tools, list):
        return set(), Violation("tools", f"must be an array, got {_type_name(tools)}")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            return names, Violation(where, f"must be an object, got {_type_name(tool)}")
        if tool.get("type", "function") != "function":
            return names, Violation(
                f"{where}.type", f"must be 'function', got {tool.get('type')!r}"
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            return names, Violation(f"{where}.function", "must be an object with a name")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            return names, Violation(f"{where}.function.name", "must be a non-empty string")
        if name in names:
            return names, Violation(f"{where}.function.name", f"function {name!r} is defined twice")
        if not isinstance(function.get("parameters", {}), dict):
            return names, Violation(f"{where}.function.parameters", "must be a JSON schema object")
        names.add(name)
    return names, None


def _check_arguments(where: str, arguments: Any) -> Violation | None:
    """Tool-call arguments are a JSON object, given as one or as a string that parses to one
    (mistral-finetune's validator refuses anything else)."""
    if isinstance(arguments, dict):
        return None
    if not isinstance(arguments, str):
        return Violation(
            where, f"must be a JSON object or a string holding one, got {_type_name(arguments)}"
        )
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        return Violation(
            where,
            f"must be a string holding a JSON object, got invalid JSON ({exc.msg} at "
            f"column {exc.colno})",
        )
    if not isinstance(parsed, dict):
        return Violation(
            where, f"must be a string holding a JSON object, got one holding {_type_name(parsed)}"
        )
    return None


class _Conversation:
    """Walks the messages once, remembering tool calls still waiting for an answer."""

    def __init__(self, functions: set[str]) -> None:
        self.functions = functions
        self.seen_ids: set[str] = set()
        self.pending: dict[str, int] = {}  # tool-call id -> index of the assistant message

    def message(self, i: int, msg: Any, previous: str | None, last: bool) -> Violation | None:
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            return Violation(where, f"must be an object, got {_type_name(msg)}")
        role = msg.get("role")
        if role not in ROLES:
            return Violation(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        if previous is None and role not in ("system", "user"):
            return Violation(
                f"{where}.role", f"a conversation starts with system or user, not {role}"
            )
        if previous is not None and role not in _NEXT_ROLES[previous]:
            return Violation(
                f"{where}.role", f"a {role} message cannot follow a {previous} message"
            )
        if role != "tool" and self.pending:
            ids = ", ".join(sorted(self.pending))
            origin = min(self.pending.values())
            return Violation(where, f"tool call(s) {ids} of messages[{origin}] have no tool answer")
        if last and role != "assistant":
            return Violation(
                f"{where}.role", f"the last message must be from the assistant, not {role}"
            )
        if role == "assistant":
            return self._assistant(i, msg)
        if role == "tool":
            return self._tool(i, msg)
        return _check_text_content(msg.get("content"), f"{where}.content", required=True)

    def _assistant(self, i: int, msg: dict[str, Any]) -> Violation | None:
        where = f"messages[{i}]"
        content, calls = msg.get("content"), msg.get("tool_calls")
        if content is not None:
            bad = _check_text_content(content, f"{where}.content", required=False)
            if bad is not None:
                return bad
        if calls is not None and not isinstance(calls, list):
            return Violation(f"{where}.tool_calls", f"must be an array, got {_type_name(calls)}")
        if not content and not calls:
            return Violation(where, "an assistant message needs content or tool_calls")
        if content and calls:
            return Violation(where, "an assistant message has content or tool_calls, not both")
        if "weight" in msg:
            weight = msg["weight"]
            if isinstance(weight, bool) or weight not in (0, 1):
                return Violation(f"{where}.weight", f"must be 0 or 1, got {weight!r}")
        for j, call in enumerate(calls or []):
            bad = self._call(f"{where}.tool_calls[{j}]", call)
            if bad is not None:
                return bad
            self.pending[call["id"]] = i
        return None

    def _call(self, where: str, call: Any) -> Violation | None:
        if not isinstance(call, dict):
            return Violation(where, f"must be an object, got {_type_name(call)}")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not TOOL_CALL_ID.fullmatch(call_id):
            return Violation(f"{where}.id", f"must be 9 letters or digits, got {call_id!r}")
        if call_id in self.seen_ids:
            return Violation(f"{where}.id", f"tool call id {call_id!r} is used twice")
        self.seen_ids.add(call_id)
        function = call.get("function")
        if not isinstance(function, dict):
            return Violation(f"{where}.function", "must be an object with name and arguments")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            return Violation(f"{where}.function.name", "must be a non-empty string")
        if name not in self.functions:
            return Violation(f"{where}.function.name", f"function {name!r} is not defined in tools")
        return _check_arguments(f"{where}.function.arguments", function.get("arguments"))

    def _tool(self, i: int, msg: dict[str, Any]) -> Violation | None:
        where = f"messages[{i}]"
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str):
            return Violation(f"{where}.tool_call_id", "is required and must be a string")
        if call_id not in self.pending:
            state = (
                "is already answered" if call_id in self.seen_ids else "matches no preceding call"
            )
            return Violation(f"{where}.tool_call_id", f"{call_id!r} {state}")
        del self.pending[call_id]
        return _check_text_content(msg.get("content"), f"{where}.content", required=True)


def _check_response_format(value: Any) -> Violation | None:
    """An object whose `type` is known; json_schema needs its `json_schema` object."""
    if not isinstance(value, dict):
        return Violation("response_format", f"must be an object, got {_type_name(value)}")
    kind = value.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        allowed = ", ".join(RESPONSE_FORMAT_TYPES)
        return Violation("response_format.type", f"must be one of {allowed}, got {kind!r}")
    spec = value.get("json_schema")
    if kind != "json_schema":
        return None
    if not isinstance(spec, dict):
        return Violation(
            "response_format.json_schema",
            f"must be an object with name and schema, got {_type_name(spec)}",
        )
    if not isinstance(spec.get("schema"), dict):
        return Violation(
            "response_format.json_schema.schema",
            f"must be a JSON schema object, got {_type_name(spec.get('schema'))}",
        )
    return None


def check_record(record: Any, *, evaluation: bool = False) -> Violation | None:
    """The first rule `record` (one decoded JSONL line) breaks, or None if it follows them all.

    `evaluation`: the line belongs to an evaluation dataset, which may carry `response_format`.
    """
    if not isinstance(record, dict):
        return Violation(
            "", f"a line must be a JSON object with 'messages', got {_type_name(record)}"
        )
    keys = EVAL_TOP_LEVEL_KEYS if evaluation else TOP_LEVEL_KEYS
    for key in record:
        if key not in keys:
            holds = "'messages' and optional 'tools'" + (
                " and 'response_format'" if evaluation else ""
            )
            return Violation(str(key), f"unknown field (a line holds {holds})")
    if "response_format" in record:
        bad = _check_response_format(record["response_format"])
        if bad is not None:
            return bad
    functions: set[str] = set()
    if "tools" in record and record["tools"] is not None:
        functions, bad = _check_tools(record["tools"])
        if bad is not None:
            return bad
    messages = record.get("messages")
    if messages is None:
        return Violation("messages", "is required")
    if not isinstance(messages, list):
        return Violation("messages", f"must be an array, got {_type_name(messages)}")
    if not messages:
        return Violation("messages", "must not be empty")
    walker = _Conversation(functions)
    previous: str | None = None
    for i, msg in enumerate(messages):
        bad = walker.message(i, msg, previous, last=i == len(messages) - 1)
        if bad is not None:
            return bad
        previous = msg["role"]
    return None
