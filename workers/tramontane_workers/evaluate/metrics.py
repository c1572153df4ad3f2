"""The evaluation metrics, as pure functions of (answer, expected); no torch, no model.

Per-sample functions return a number in [0, 1]; `mean_or_none` averages them and gives None
when no sample applies (the metric is then reported with `score: null`, never as 0). The
definitions are the contract's (`contract/eval_config.py`); the text ones follow SQuAD's
official evaluation script: `normalize_answer`, and `compute_f1` (v2.0, which also defines
the empty-answer cases).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

_PUNCTUATION = frozenset(string.punctuation)  # SQuAD removes ASCII punctuation only
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@dataclass(frozen=True)
class Call:
    """One tool call reduced to what is compared: the function name and parsed arguments."""

    name: str
    arguments: Any


def exact_match(answer: str, expected: str) -> float:
    """1.0 when the texts are equal once surrounding whitespace is stripped."""
    return float(answer.strip() == expected.strip())


def normalize(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalized_match(answer: str, expected: str) -> float:
    return float(normalize(answer) == normalize(expected))


def token_f1(answer: str, expected: str) -> float:
    """SQuAD token F1 of the normalised texts. Two empty texts agree (1.0); one empty: 0.0."""
    got, want = normalize(answer).split(), normalize(expected).split()
    if not got or not want:
        return float(got == want)
    same = sum((Counter(got) & Counter(want)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(got), same / len(want)
    return 2 * precision * recall / (precision + recall)


def parse_arguments(arguments: Any) -> Any:
    """Tool-call arguments as a JSON value: an object as is, a string parsed (kept as the raw
    string when it is not JSON, so it can only equal the very same string)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def calls_match(got: Sequence[Call], expected: Sequence[Call]) -> float:
    """1.0 when the same functions are called in the same order with equal arguments."""
    if len(got) != len(expected):
        return 0.0
    return float(
        all(
            g.name == e.name and parse_arguments(g.arguments) == parse_arguments(e.arguments)
            for g, e in zip(got, expected, strict=True)
        )
    )


def json_schema_valid(answer: str, schema: dict[str, Any]) -> float:
    """1.0 when `answer` parses as JSON and validates against `schema` (draft 7 unless the
    schema's `$schema` names another draft)."""
    try:
        document = json.loads(answer)
    except json.JSONDecodeError:
        return 0.0
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft7Validator
    )
    return float(validator_class(schema).is_valid(document))


def mean_or_none(values: Iterable[float]) -> tuple[float | None, int]:
    """(mean, count); (None, 0) for no values."""
    items = list(values)
    if not items:
        return None, 0
    return sum(items) / len(items), len(items)


def token_loss_and_accuracy(
    logprobs: Sequence[Sequence[float]], hits: Sequence[Sequence[bool]]
) -> tuple[float | None, float | None, int]:
    """(validationLoss, meanTokenAccuracy, samples) over every expected-answer token of every
    sample, token-weighted as a fine-tuning run's validation loss is: the mean negative
    log-probability, and the share of tokens that were the argmax. None without tokens."""
    tokens = sum(len(row) for row in logprobs)
    if tokens == 0:
        return None, None, 0
    loss = -sum(sum(row) for row in logprobs) / tokens
    accuracy = sum(sum(row) for row in hits) / tokens
    return loss, accuracy, sum(1 for row in logprobs if row)
