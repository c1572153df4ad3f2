"""The commands of a Markdown page's ```bash blocks, as a shell would run them, for tests.

A small model of what the walk-throughs use, and nothing more: `\\`-continued lines joined,
comments dropped, `<<'EOF'` here-documents attached to their command, `for X in a b; do ...
done` loops unrolled, and `$VAR` / `${VAR}` expanded from `export VAR=...` lines (a value made
by command substitution, `"$(...)"`, comes from the caller's `computed` mapping instead, so a
test decides what `az` would have printed). Words are split with POSIX rules (`shlex`), so
quoting means what it means to bash. A variable that is never set is an error: a doc step
naming an undefined variable fails its test.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
FOR_LOOP = re.compile(r"^for (\w+) in (.+); do$")


@dataclass
class Command:
    """One simple command: its words after expansion, and its here-document (or None)."""

    words: list[str]
    stdin: str | None = None
    line: str = ""  # the source text, joined onto one line, before expansion

    def flags(self, name: str) -> list[str]:
        """Every value of `--name VALUE` or `--name=VALUE` (short flags: `-f`)."""
        out = []
        for i, word in enumerate(self.words):
            if word == name and i + 1 < len(self.words):
                out.append(self.words[i + 1])
            elif word.startswith(name + "="):
                out.append(word[len(name) + 1 :])
        return out

    def flag(self, name: str) -> str | None:
        found = self.flags(name)
        return found[-1] if found else None


@dataclass
class Script:
    commands: list[Command] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)

    def starting(self, *prefix: str) -> list[Command]:
        n = len(prefix)
        return [c for c in self.commands if tuple(c.words[:n]) == prefix]


def blocks(markdown: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(markdown) if lang == language]


def _logical_lines(block: str) -> Iterator[tuple[str, str | None]]:
    """(line, here-document body) with continuations joined and comments dropped."""
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        text = lines[i]
        i += 1
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        while text.endswith("\\") and i < len(lines):
            text = text[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        body = None
        marker = HEREDOC.search(text)
        if marker:
            collected = []
            while i < len(lines) and lines[i].strip() != marker.group(1):
                collected.append(lines[i])
                i += 1
            i += 1  # the terminator
            body = "\n".join(collected) + "\n"
            text = text[: marker.start()].rstrip()
        yield text.strip(), body


def expand(text: str, variables: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise KeyError(f"${name} is used before it is set: {text}")
        return variables[name]

    return VARIABLE.sub(one, text)


def parse(markdown: str, computed: Mapping[str, str]) -> Script:
    """Every command of the page's ```bash blocks, in order, expanded."""
    script = Script()
    pending: list[tuple[str, str | None]] = []
    loop: tuple[str, list[str]] | None = None
    for block in blocks(markdown, "bash"):
        for text, body in _logical_lines(block):
            head = FOR_LOOP.match(text)
            if head:
                values = shlex.split(expand(head.group(2), script.variables))
                loop, pending = (head.group(1), values), []
                continue
            if text == "done" and loop is not None:
                name, values = loop
                loop = None
                for value in values:
                    scoped = {**script.variables, name: value}
                    for line, stdin in pending:
                        _run(line, stdin, scoped, computed, script)
                continue
            if loop is not None:
                pending.append((text, body))
                continue
            _run(text, body, script.variables, computed, script)
    return script


def _run(
    text: str,
    stdin: str | None,
    variables: Mapping[str, str],
    computed: Mapping[str, str],
    script: Script,
) -> None:
    assigned = ASSIGNMENT.match(text)
    if assigned:
        name, value = assigned.groups()
        if "$(" in value:
            if name not in computed:
                raise KeyError(f"{name} is computed by a command: give the test a value for it")
            script.variables[name] = computed[name]
        else:
            (script.variables[name],) = shlex.split(expand(value, variables))
        return
    script.commands.append(Command(shlex.split(expand(text, variables)), stdin, text))
