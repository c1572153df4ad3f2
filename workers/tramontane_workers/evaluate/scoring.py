"""Answers (and teacher-forced scores) of one target -> `MetricScore`s and failing samples.

Which samples each metric applies to:
- exactMatch, normalizedMatch, tokenF1: samples whose expected answer is text; an answer that
  came back as tool calls is compared as empty text;
- toolCallAccuracy: samples whose expected answer is a tool call; a text answer scores 0;
- jsonSchemaValid: samples with a `response_format` of type json_schema;
- validationLoss, meanTokenAccuracy: every sample, token-weighted (`metrics.
  token_loss_and_accuracy`).
A metric no sample applies to is reported with score None and samples 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tramontane_workers.chat.service import Answer
from tramontane_workers.contract.eval_config import FailingSample, MetricName, MetricScore
from tramontane_workers.engines.base import ForcedScores
from tramontane_workers.evaluate import metrics as m
from tramontane_workers.evaluate.dataset import Sample, shorten

SHOWN_CHARS = 300  # expected / got in a failing sample (the status stays small)

GENERATION_METRICS: frozenset[MetricName] = frozenset(
    {"exactMatch", "normalizedMatch", "tokenF1", "toolCallAccuracy", "jsonSchemaValid"}
)
FORCED_METRICS: frozenset[MetricName] = frozenset({"validationLoss", "meanTokenAccuracy"})
_TEXT_METRICS = {
    "exactMatch": m.exact_match,
    "normalizedMatch": m.normalized_match,
    "tokenF1": m.token_f1,
}


def answer_calls(answer: Answer) -> tuple[m.Call, ...]:
    return tuple(m.Call(c.name, c.arguments) for c in answer.tool_calls)


def _calls_text(calls: Sequence[m.Call]) -> str:
    shown = [{"name": c.name, "arguments": m.parse_arguments(c.arguments)} for c in calls]
    return json.dumps(shown, ensure_ascii=False)


def shown_answer(answer: Answer) -> str:
    """An answer as text: its content, or its tool calls as a JSON list."""
    return _calls_text(answer_calls(answer)) if answer.tool_calls else answer.text


def _score(metric: MetricName, sample: Sample, answer: Answer) -> float | None:
    """One sample's score for a generation metric; None when the metric does not apply."""
    if metric in _TEXT_METRICS:
        if sample.expected_text is None:
            return None
        got = "" if answer.tool_calls else answer.text
        return _TEXT_METRICS[metric](got, sample.expected_text)
    if metric == "toolCallAccuracy":
        if not sample.expects_tool_call:
            return None
        return m.calls_match(answer_calls(answer), sample.expected_calls)
    if metric == "jsonSchemaValid":
        if sample.schema is None:
            return None
        return m.json_schema_valid(answer.text, sample.schema)
    raise ValueError(f"{metric} is not a generation metric")


def score_target(
    wanted: Sequence[MetricName],
    samples: Sequence[Sample],
    answers: Sequence[Answer] | None,
    forced: Sequence[ForcedScores] | None,
) -> list[MetricScore]:
    """One `MetricScore` per wanted metric, in the order asked."""
    scores: list[MetricScore] = []
    loss, accuracy, scored = None, None, 0
    if forced is not None:
        loss, accuracy, scored = m.token_loss_and_accuracy(
            [f.logprobs for f in forced], [f.argmax_hits for f in forced]
        )
    for metric in wanted:
        if metric in FORCED_METRICS:
            value = loss if metric == "validationLoss" else accuracy
            scores.append(MetricScore(metric=metric, score=value, samples=scored))
            continue
        per_sample = [_score(metric, s, a) for s, a in zip(samples, answers or (), strict=True)]
        mean, count = m.mean_or_none(v for v in per_sample if v is not None)
        scores.append(MetricScore(metric=metric, score=mean, samples=count))
    return scores


def failing_samples(
    samples: Sequence[Sample], answers: Sequence[Answer], limit: int
) -> list[FailingSample]:
    """The first `limit` samples (in line order) whose answer is not the expected one: not an
    exact match for text, not the same calls for a tool call."""
    failing: list[FailingSample] = []
    for sample, answer in zip(samples, answers, strict=True):
        if len(failing) >= limit:
            break
        if sample.expected_text is not None:
            ok = not answer.tool_calls and m.exact_match(answer.text, sample.expected_text) == 1
            expected = sample.expected_text
        else:
            ok = m.calls_match(answer_calls(answer), sample.expected_calls) == 1
            expected = _calls_text(sample.expected_calls)
        if not ok:
            failing.append(
                FailingSample(
                    line=sample.line,
                    input=sample.input,
                    expected=shorten(expected, SHOWN_CHARS),
                    got=shorten(shown_answer(answer), SHOWN_CHARS),
                )
            )
    return failing
