"""Online checks, the pure parts: the API's validation of `onlineCheck`, the breach decision
on an answer, the probe's request, and which canaries are probed (`Canaries.online_checks`,
`Canaries.veto`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tramontane_api.v1alpha1.modeldeployment import OnlineCheck, RolloutAnalysis
from tramontane_api.validate import validate_object
from tramontane_router.canary import Canaries
from tramontane_router.probes import judge, request_for, verdict
from tramontane_router.table import Version, Versions

APP = "acme-ml.chat"
STABLE = Version("support@aaaa0000", "aaaa0000", 90, "Stable")
CANARY = Version("support@bbbb0000", "bbbb0000", 10, "Canary")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples/modeldeployment-mistral-7b-aks.yaml"
USER = [{"role": "user", "content": "What is the capital of France?"}]


def analysis(**check: Any) -> RolloutAnalysis:
    return RolloutAnalysis.model_validate(
        {"onlineCheck": {"messages": USER, "expect": "Paris", **check}}
    )


def test_defaults_and_wire_names() -> None:
    check = analysis().online_check
    assert check is not None
    assert (check.interval_seconds, check.max_tokens) == (10, 32)
    assert RolloutAnalysis().online_check is None  # optional
    wire = analysis(intervalSeconds=5).model_dump(by_alias=True, exclude_none=True)
    assert wire["onlineCheck"]["intervalSeconds"] == 5


@pytest.mark.parametrize(
    ("check", "field", "words"),
    [
        ({"expect": "(Paris"}, "onlineCheck.expect", "not a valid regular expression"),
        ({"expect": "x" * 257}, "expect", "at most 256"),
        ({"expect": ""}, "expect", "at least 1"),
        (
            {"messages": [{"role": "system", "content": "hi"}]},
            "onlineCheck.messages",
            "at least one message must have role user",
        ),
        ({"messages": []}, "messages", "at least 1"),
        ({"intervalSeconds": 0}, "intervalSeconds", "greater than or equal to 1"),
        ({"intervalSeconds": 3601}, "intervalSeconds", "less than or equal to 3600"),
        ({"maxTokens": 1025}, "maxTokens", "less than or equal to 1024"),
    ],
)
def test_invalid_checks_are_refused_naming_the_field(
    check: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as err:
        analysis(**check)
    text = str(err.value)
    assert field in text and words in text


def test_admission_refuses_a_bad_expect_at_its_path() -> None:
    """What the webhook and `tramontane validate` answer (the CRD cannot compile a regex)."""
    md = yaml.safe_load(EXAMPLE.read_text())
    assert validate_object(md) == []
    check = md["spec"]["adapters"][0]["rollout"]["analysis"]["onlineCheck"]
    check["expect"] = "(Paris"
    (problem,) = [str(p) for p in validate_object(md)]
    assert problem.startswith(
        "spec.adapters[0].rollout.analysis.onlineCheck.expect: '(Paris' is not a valid "
        "regular expression (missing ), unterminated subpattern"
    )


def test_the_breach_decision_searches_the_answer() -> None:
    assert judge("The capital is Paris.", "Paris") is None  # search, not fullmatch
    assert judge("paris", "(?i)^paris$") is None
    assert judge("Lyon", "Paris") == "online check: answer 'Lyon' does not match /Paris/"
    long = judge("x" * 500, "Paris")
    assert long is not None and len(long) < 120 and "..." in long


def test_the_probe_request_is_greedy_and_capped() -> None:
    check = OnlineCheck.model_validate(
        {
            "messages": [{"role": "system", "content": "One word."}, *USER],
            "expect": "Paris",
            "maxTokens": 4,
        }
    )
    request = request_for(check)
    assert request.HasField("temperature") and request.temperature == 0.0
    assert request.max_tokens == 4
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "One word."), ("user", USER[0]["content"])]  # fmt: skip


def test_only_unvetoed_canaries_with_a_check_are_probed_and_a_veto_is_sticky() -> None:
    canaries = Canaries()
    with_check = Versions("support", "acme-ml", "chat", (CANARY, STABLE), analysis())
    canaries.watch([with_check])
    assert canaries.online_checks() == [(APP, with_check, CANARY)]
    assert canaries.veto(APP, CANARY.served_as, "online check: answer 'Lyon' does not match")
    assert canaries.online_checks() == []
    assert canaries.report()[("acme-ml", "chat", CANARY.served_as)].breach.startswith(
        "online check: answer 'Lyon'"
    )
    assert not canaries.veto(APP, CANARY.served_as, "again")  # the first reason stays
    assert not canaries.veto(APP, STABLE.served_as, "not a canary")
    # A rollout without a check is not probed.
    plain = Canaries()
    plain.watch([Versions("support", "acme-ml", "chat", (CANARY, STABLE), RolloutAnalysis())])
    assert plain.online_checks() == []


async def test_a_pattern_that_backtracks_without_end_does_not_stall_the_router() -> None:
    assert await verdict("The capital is Paris.", "Paris") is None
    assert await verdict("Lyon", "Paris") == judge("Lyon", "Paris")
    # (a+)+$ on a run of a's ending in b backtracks ~2^22 times: the loop does not wait for it.
    slow = await verdict("a" * 22 + "b", "(a+)+$", timeout_s=0.01)
    assert slow == "online check: matching the answer against /(a+)+$/ took over 0.01s"
