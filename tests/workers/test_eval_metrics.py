"""Evaluation metrics against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from tramontane_workers.chat.assemble import ParsedToolCall
from tramontane_workers.chat.service import Answer
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.engines.base import ForcedScores
from tramontane_workers.evaluate import metrics as m
from tramontane_workers.evaluate.dataset import to_sample
from tramontane_workers.evaluate.scoring import failing_samples, score_target


def test_exact_match_strips_surrounding_whitespace_only() -> None:
    assert m.exact_match("  Paris\n", "Paris") == 1.0
    assert m.exact_match("paris", "Paris") == 0.0  # case counts
    assert m.exact_match("Paris.", "Paris") == 0.0  # punctuation counts
    assert m.exact_match("", "") == 1.0
    assert m.exact_match("", "Paris") == 0.0


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),  # lower, "!" dropped, "the" dropped, spaces
        ("an apple, a pear", "apple pear"),  # "," dropped, both articles dropped
        ("Theatre", "theatre"),  # "the" inside a word stays (word boundary)
        ("¿Qué?", "¿qué"),  # SQuAD drops ASCII punctuation only: "?" goes, "¿" stays
        ("Ça   va", "ça va"),
        ("", ""),
    ],
)
def test_normalize_is_squads(text: str, normalised: str) -> None:
    assert m.normalize(text) == normalised


def test_normalized_match() -> None:
    assert m.normalized_match("The Beatles.", "beatles") == 1.0
    assert m.normalized_match("Beatles", "Rolling Stones") == 0.0


def test_token_f1_hand_computed() -> None:
    # answer "the cat sat on the mat" -> [cat, sat, on, mat] (4 tokens)
    # expected "a cat on a mat today" -> [cat, on, mat, today] (4 tokens)
    # common: cat, on, mat = 3 -> precision 3/4, recall 3/4 -> F1 = 0.75
    assert m.token_f1("the cat sat on the mat", "a cat on a mat today") == pytest.approx(0.75)
    # answer "paris paris" -> [paris, paris]; expected "paris" -> [paris]
    # common (multiset): min(2, 1) = 1 -> precision 1/2, recall 1/1 -> F1 = 2*(1/2*1)/(3/2) = 2/3
    assert m.token_f1("Paris Paris", "Paris") == pytest.approx(2 / 3)
    assert m.token_f1("London", "Paris") == 0.0  # nothing in common
    assert m.token_f1("", "") == 1.0  # both empty: agree (SQuAD v2.0)
    assert m.token_f1("", "Paris") == 0.0  # one empty: 0
    assert m.token_f1("The", "a") == 1.0  # both normalise to nothing
    # unicode: "café crème" vs "Café noir" -> [café, crème] vs [café, noir]: 1 common
    # precision 1/2, recall 1/2 -> F1 = 0.5
    assert m.token_f1("café crème", "Café noir") == pytest.approx(0.5)


def test_calls_match_compares_arguments_as_json() -> None:
    expected = [m.Call("weather", {"city": "Paris", "days": 2})]
    # a string holding the same object, keys in another order, other spacing: equal
    assert m.calls_match([m.Call("weather", '{"days":2,  "city":"Paris"}')], expected) == 1.0
    assert m.calls_match([m.Call("weather", {"city": "Paris", "days": 3})], expected) == 0.0
    assert m.calls_match([m.Call("forecast", {"city": "Paris", "days": 2})], expected) == 0.0
    assert m.calls_match([], expected) == 0.0  # no call at all
    two = [m.Call("a", {}), m.Call("b", {})]
    assert m.calls_match(list(reversed(two)), two) == 0.0  # order counts
    assert m.calls_match([m.Call("a", "not json")], [m.Call("a", {})]) == 0.0


def test_json_schema_valid() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert m.json_schema_valid('{"a": 1}', schema) == 1.0
    assert m.json_schema_valid('{"a": "1"}', schema) == 0.0  # wrong type
    assert m.json_schema_valid("{}", schema) == 0.0  # missing required
    assert m.json_schema_valid('{"a": 1', schema) == 0.0  # not JSON (cut answer)
    assert m.json_schema_valid("", schema) == 0.0


def test_mean_or_none_and_token_loss() -> None:
    assert m.mean_or_none([]) == (None, 0)
    assert m.mean_or_none([1.0, 0.0, 0.5]) == (pytest.approx(0.5), 3)
    # token-weighted: sample 1 has 2 tokens (logprobs ln 0.5, ln 0.25), sample 2 one (ln 1 = 0)
    # loss = -(ln 0.5 + ln 0.25 + 0) / 3 = (0.6931 + 1.3863) / 3 = 0.6931 (= ln 2)
    # accuracy = hits (1 + 0 + 1) / 3 tokens = 2/3
    loss, accuracy, samples = m.token_loss_and_accuracy(
        [[math.log(0.5), math.log(0.25)], [0.0]], [[True, False], [True]]
    )
    assert loss == pytest.approx(math.log(2))
    assert accuracy == pytest.approx(2 / 3)
    assert samples == 2
    assert m.token_loss_and_accuracy([], []) == (None, None, 0)


def _record(last: dict[str, object], **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "Question?"}, last], **extra}


WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {}}}
CALL = {"id": "abcdefghi", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}


def _answer(text: str = "", calls: tuple[ParsedToolCall, ...] = ()) -> Answer:
    return Answer(text, calls, "stop", pb.Usage())


def test_scores_apply_to_their_samples_only() -> None:
    text = to_sample(1, _record({"role": "assistant", "content": "Paris"}), seed=0)
    tool = to_sample(2, _record({"role": "assistant", "tool_calls": [CALL]}, tools=[WEATHER]), 0)
    answers = [
        _answer("Paris"),
        _answer(calls=(ParsedToolCall("x", "weather", '{"city": "Paris"}'),)),
    ]
    forced = [ForcedScores([math.log(0.5)], [True]), ForcedScores([math.log(0.5)], [False])]
    metrics = ["exactMatch", "toolCallAccuracy", "jsonSchemaValid", "validationLoss"]
    scores = {
        s.metric: (s.score, s.samples)
        for s in score_target(metrics, [text, tool], answers, forced)  # type: ignore[arg-type]
    }
    assert scores["exactMatch"] == (1.0, 1)  # the text sample only
    assert scores["toolCallAccuracy"] == (1.0, 1)  # the tool sample only (string args parsed)
    assert scores["jsonSchemaValid"] == (None, 0)  # no sample has a response_format
    assert scores["validationLoss"] == (pytest.approx(math.log(2)), 2)


def test_a_text_answer_to_a_tool_call_fails_and_is_listed() -> None:
    tool = to_sample(3, _record({"role": "assistant", "tool_calls": [CALL]}, tools=[WEATHER]), 0)
    text = to_sample(4, _record({"role": "assistant", "content": "Paris"}), seed=0)
    answers = [_answer("It is sunny"), _answer("paris")]
    scores = score_target(
        ["toolCallAccuracy", "exactMatch", "normalizedMatch"], [tool, text], answers, None
    )
    assert [(s.score, s.samples) for s in scores] == [(0.0, 1), (0.0, 1), (1.0, 1)]
    failing = failing_samples([tool, text], answers, limit=5)
    assert [(f.line, f.input, f.got) for f in failing] == [
        (3, "Question?", "It is sunny"),
        (4, "Question?", "paris"),
    ]
    assert failing[0].expected == '[{"name": "weather", "arguments": {"city": "Paris"}}]'
    assert failing_samples([tool, text], answers, limit=1)[0].line == 3  # the first N
