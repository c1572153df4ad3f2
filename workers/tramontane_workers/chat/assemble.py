"""Generated tokens -> text deltas, stop strings and tool calls. Pure apart from `decode`.

Streaming and unary answers both come from this one assembler, so the concatenated stream is
the unary answer by construction. Text is detokenised incrementally (decoding a short window
with the previous tokens as context, holding back incomplete UTF-8); text that could still
become a stop string is held back until it cannot.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from tramontane_workers.engines.base import TokenStep

_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class ParsedToolCall:
    """One structured call the model made."""

    id: str
    name: str
    arguments: str  # JSON object text


@dataclass(frozen=True)
class Delta:
    """What one engine step adds to the answer."""

    text: str = ""
    tool_calls: tuple[ParsedToolCall, ...] = ()
    finish_reason: str | None = None


@dataclass
class CompletionAssembler:
    """Turns the engine's token steps into deltas; `done` once a finish reason is out."""

    decode: Callable[[list[int]], str]
    stop: tuple[str, ...] = ()
    tool_calls_id: int | None = None  # None: never parse tool calls
    forced_tool_call: bool = False
    seed: int | None = None
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    _tool_mode: bool = False
    _prefix_offset: int = 0
    _read_offset: int = 0
    _pending: str = ""

    def __post_init__(self) -> None:
        self._tool_mode = self.forced_tool_call

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    def feed(self, step: TokenStep) -> Delta:
        """Consume one engine step (any number of tokens); the delta may be empty.

        Tokens are taken one at a time, so where a stop string ends, and the usage reported,
        do not depend on how the engine grouped tokens into steps.
        """
        texts: list[str] = []
        last = len(step.token_ids) - 1
        for i, token in enumerate(step.token_ids):
            delta = self._feed_one(token, step.finish_reason if i == last else None)
            texts.append(delta.text)
            if self.done:
                return Delta("".join(texts), delta.tool_calls, delta.finish_reason)
        if step.finish_reason is not None and not self.done:  # a finish with no new token
            delta = self._finish(step.finish_reason, self._pending)
            texts.append(delta.text)
            return Delta("".join(texts), delta.tool_calls, delta.finish_reason)
        return Delta("".join(texts))

    def _feed_one(self, token: int, finish: str | None) -> Delta:
        if not self.tokens and token == self.tool_calls_id:
            self._tool_mode = True
            self._prefix_offset = self._read_offset = 1
        self.tokens.append(token)
        if self._tool_mode:
            return self._finish(finish, "") if finish else Delta()
        text = self._pending + self._new_text()
        for stop in self.stop:
            cut = text.find(stop)
            if cut >= 0:
                self.done = True
                return Delta(text[:cut], finish_reason="stop")
        if finish is not None:
            return self._finish(finish, text)
        held = _longest_stop_prefix(text, self.stop)
        self._pending = text[len(text) - held :] if held else ""
        return Delta(text[: len(text) - held])

    def _finish(self, reason: str, text: str) -> Delta:
        self.done = True
        self._pending = ""
        return self._finish_tools(reason) if self._tool_mode else Delta(text, finish_reason=reason)

    def _new_text(self) -> str:
        prefix = self.decode(self.tokens[self._prefix_offset : self._read_offset])
        full = self.decode(self.tokens[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""  # no new characters yet, or an incomplete UTF-8 sequence
        self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
        return full[len(prefix) :]

    def _finish_tools(self, reason: str) -> Delta:
        start = 1 if self.tokens and self.tokens[0] == self.tool_calls_id else 0
        text = self.decode(self.tokens[start:])
        calls = parse_tool_calls(text, random.Random(self.seed))
        if calls is None:  # not a well-formed call list: hand the text back unchanged
            return Delta(text, finish_reason=reason)
        return Delta(tool_calls=calls, finish_reason="tool_calls")


def parse_tool_calls(text: str, rng: random.Random) -> tuple[ParsedToolCall, ...] | None:
    """Parse `[{"name": ..., "arguments": {...}}, ...]`; None when `text` is not that."""
    try:
        payload = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list) or not payload:
        return None
    calls = []
    for item in payload:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        call_id = "".join(rng.choice(_ID_ALPHABET) for _ in range(9))
        calls.append(ParsedToolCall(call_id, item["name"], json.dumps(arguments)))
    return tuple(calls)


def _longest_stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best
