"""Generate valid Mistral chat JSONL of a given size, for benchmarks and large-file tests.

The lines vary (plain answers, weight-0 turns, tool round trips) so validation takes every
branch it takes on real data. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
_WORDS = (
    "the", "mistral", "wind", "blows", "cold", "and", "dry", "from",
    "the", "north", "across", "the", "gulf", "of", "lion",
)  # fmt: skip


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def synthetic_record(rng: random.Random, index: int) -> dict[str, Any]:
    """One valid conversation; every third carries a tool round trip, every fifth a weight 0."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": _sentence(rng, 12)}]
    if index % 5 == 0:
        messages += [
            {"role": "assistant", "content": _sentence(rng, 8), "weight": 0},
            {"role": "user", "content": _sentence(rng, 6)},
        ]
    if index % 3 == 0:
        call_id = f"{index % 10**9:09d}"
        call = {"name": "get_weather", "arguments": json.dumps({"city": rng.choice(_WORDS)})}
        messages += [
            {"role": "assistant", "tool_calls": [{"id": call_id, "function": call}]},
            {"role": "tool", "tool_call_id": call_id, "content": '{"sky": "clear"}'},
        ]
    messages.append({"role": "assistant", "content": _sentence(rng, 20)})
    record: dict[str, Any] = {"messages": messages}
    if index % 3 == 0:
        record["tools"] = _TOOLS
    return record


def write_synthetic_dataset(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write at least `size_bytes` of valid JSONL to `path`; return the number of lines."""
    rng = random.Random(seed)
    written = lines = 0
    with path.open("w", encoding="utf-8") as out:
        while written < size_bytes:
            line = json.dumps(synthetic_record(rng, lines)) + "\n"
            out.write(line)
            written += len(line.encode())
            lines += 1
    return lines
