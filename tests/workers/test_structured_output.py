"""response_format json_object / json_schema: constrained decoding in the reference engine.

The tiny model has random weights, so unconstrained it emits garbage: every JSON answer here is
the grammar's doing. The test schema is bounded (short strings, small integers, whitespace
bounded by the grammar), so its answers close well within `max_tokens` whatever the seed;
json_object's strings are unbounded, so a random model closes them only by chance and those
tests accept "length" for some seeds while requiring every closed answer to parse.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import xgrammar as xgr
from tests.workers.test_engine import peak_running

from tramontane_workers.chat.encode import ChatCodec
from tramontane_workers.chat.service import ChatService
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.engines.base import GenerationRequest, SamplingParams
from tramontane_workers.engines.grammar import JsonGrammars, grammar_vocabulary
from tramontane_workers.engines.reference import TransformersEngine
from tramontane_workers.engines.vllm_engine import (
    structured_output_api,
    structured_output_kwargs,
)
from tramontane_workers.errors import EngineUnavailable, InvalidRequest
from tramontane_workers.models.loading import find_tokenizer
from tramontane_workers.models.tiny import bundled_v3_tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "age", "member", "tags"],
}
PERSON_FORMAT = pb.ResponseFormat(
    type="json_schema",
    json_schema=pb.JsonSchema(name="person", schema=json.dumps(PERSON), strict=True),
)
JSON_OBJECT = pb.ResponseFormat(type="json_object")
V3, TEKKEN = "mistral_instruct_tokenizer_240323.model.v3", "tekken_240911.json"
ROOMY = 400  # far above what PERSON needs (~60 tokens): "length" would be a bug


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    yield TransformersEngine(tiny_model_dir, max_batch_size=4)


@pytest.fixture(scope="module")
def service(engine: TransformersEngine, tiny_model_dir: Path) -> ChatService:
    codec = ChatCodec(find_tokenizer(tiny_model_dir), max_model_len=engine.max_model_len)
    return ChatService(engine, codec)


def _request(fmt: pb.ResponseFormat | None, seed: int, max_tokens: int) -> pb.ChatRequest:
    return pb.ChatRequest(
        model="tiny",
        messages=[pb.Message(role="user", content="Describe a person as JSON.")],
        max_tokens=max_tokens,
        random_seed=seed,
        temperature=1.0,
        response_format=fmt,
    )


async def _streamed(service: ChatService, request: pb.ChatRequest) -> tuple[str, str]:
    text, finish = "", ""
    async for chunk in service.stream(request):
        text += chunk.choices[0].delta.content
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


async def test_json_object_answers_parse_for_several_seeds(
    service: ChatService, tiny_model_dir: Path
) -> None:
    answers = await asyncio.gather(
        *(service.complete(_request(JSON_OBJECT, seed, 32)) for seed in range(24))
    )
    # json_object is "a JSON object or array", as mistral-common renders it for grammars
    any_json = '{"anyOf": [{"type": "object"}, {"type": "array"}]}'
    oracle = JsonGrammars(service.codec.raw, vocab_size=service.codec.raw.n_words)
    closed = []
    for answer in answers:
        choice = answer.choices[0]
        text = choice.message.content
        assert oracle.matcher(any_json).accept_string(text), text  # cut or not: JSON so far
        if choice.finish_reason == "stop":
            closed.append(json.loads(text))
        else:
            assert (choice.finish_reason, answer.usage.completion_tokens) == ("length", 32)
    assert closed and all(isinstance(value, dict | list) for value in closed)
    free = await service.complete(_request(None, 0, 32))
    with pytest.raises(json.JSONDecodeError):  # what the model says unconstrained
        json.loads(free.choices[0].message.content)
    assert not oracle.matcher(any_json).accept_string(free.choices[0].message.content)


async def test_json_schema_answers_validate_and_stream_equals_unary(service: ChatService) -> None:
    for seed in range(4):
        request = _request(PERSON_FORMAT, seed, ROOMY)
        unary = await service.complete(request)
        choice = unary.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
        assert unary.usage.completion_tokens < ROOMY
        assert await _streamed(service, request) == (choice.message.content, "stop")


async def test_json_object_stream_equals_unary(service: ChatService) -> None:
    for seed in (0, 4):  # here: one answer cut at max_tokens, one that closes
        request = _request(JSON_OBJECT, seed, 32)
        unary = (await service.complete(request)).choices[0]
        assert await _streamed(service, request) == (unary.message.content, unary.finish_reason)


async def test_max_tokens_cuts_a_json_answer_with_length(service: ChatService) -> None:
    answer = await service.complete(_request(PERSON_FORMAT, 0, 4))
    choice = answer.choices[0]
    assert (choice.finish_reason, answer.usage.completion_tokens) == ("length", 4)
    assert choice.message.content.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice.message.content)


async def test_constrained_and_free_requests_share_a_batch(engine: TransformersEngine) -> None:
    prompt = [1, 3, 12782, 4]
    schema = json.dumps(PERSON)
    constrained = GenerationRequest(
        "json",
        prompt,
        SamplingParams(max_tokens=ROOMY, temperature=1.0, seed=3, json_schema=schema),
    )
    free = GenerationRequest("free", prompt, SamplingParams(max_tokens=40, temperature=1.0, seed=3))

    async def run(request: GenerationRequest) -> tuple[list[int], str | None]:
        tokens: list[int] = []
        finish = None
        async for step in engine.generate(request):
            tokens += step.token_ids
            finish = step.finish_reason
        return tokens, finish

    alone = [await run(constrained), await run(free)]
    async with peak_running(engine) as peak:
        together = await asyncio.gather(run(constrained), run(free))
    assert peak[0] == 2  # decoded in one batch
    assert list(together) == alone  # masking one row leaves the other row alone
    assert alone[0][1] == "stop" and alone[1][1] == "length"


async def test_schema_xgrammar_cannot_compile_is_invalid_request(service: ChatService) -> None:
    lookbehind = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)y"}}}
    fmt = pb.ResponseFormat(
        type="json_schema",
        json_schema=pb.JsonSchema(name="bad", schema=json.dumps(lookbehind), strict=True),
    )
    with pytest.raises(
        InvalidRequest, match=r"^response_format\.json_schema: not supported .*: Regex .*Lookbehind"
    ):
        await service.complete(_request(fmt, 0, 8))
    answer = await service.complete(_request(None, 0, 2))  # the engine still serves
    assert answer.usage.completion_tokens == 2


@functools.cache
def _tokenizer(name: str) -> tuple[Any, JsonGrammars]:
    """A tokenizer bundled with mistral-common and its grammars (loading tekken takes ~2 s)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = bundled_v3_tokenizer().parent / name
    raw = MistralTokenizer.from_file(str(path)).instruct_tokenizer.tokenizer
    return raw, JsonGrammars(raw, vocab_size=raw.n_words)


def _allowed(row: torch.Tensor, vocab_size: int) -> set[int]:
    """Token ids whose bit is set in one row of an xgrammar bitmask (int32 words)."""
    bits = (row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return {int(i) for i in bits.flatten()[:vocab_size].nonzero().flatten()}


@pytest.mark.parametrize("name", [V3, TEKKEN])
def test_control_tokens_are_never_allowed_in_json(name: str) -> None:
    raw, grammars = _tokenizer(name)
    vocab, vocab_type = grammar_vocabulary(raw)
    assert vocab_type == ("RAW" if name == TEKKEN else "BYTE_FALLBACK")
    control = [raw.get_special_token(t) for t in ("[INST]", "[TOOL_CALLS]", "[/INST]")]
    assert all(vocab[i] in ("", b"") for i in control)
    matcher = grammars.matcher('{"type": "object"}')
    assert matcher.accept_string('{"a": "')  # inside a string: almost anything goes
    bitmask = xgr.allocate_token_bitmask(1, grammars.vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    allowed = _allowed(bitmask[0], grammars.vocab_size)
    assert len(allowed) > raw.n_words // 2
    assert not allowed & {*control, raw.bos_id, raw.eos_id}


def test_grammars_are_compiled_once_per_schema() -> None:
    raw = _tokenizer(V3)[0]
    grammars = JsonGrammars(raw, vocab_size=raw.n_words)  # its own, empty cache
    grammars.matcher(json.dumps(PERSON))
    once = grammars.cache_bytes
    assert once > 0
    grammars.matcher(json.dumps(PERSON))  # a second request with the same schema
    assert grammars.cache_bytes == once
    grammars.matcher('{"type": "array"}')
    assert grammars.cache_bytes > once


def test_tekken_vocabulary_accepts_the_tokenizers_own_json() -> None:
    raw, grammars = _tokenizer(TEKKEN)
    matcher = grammars.matcher(json.dumps(PERSON))
    document = '{"name": "Ana", "age": 7, "member": true, "tags": ["a"]}'
    assert all(matcher.accept_token(t) for t in raw.encode(document, bos=False, eos=False))
    assert matcher.accept_token(raw.eos_id) and matcher.is_terminated()


def test_vllm_structured_output_params_from_our_request() -> None:
    newest = structured_output_api(["SamplingParams", "StructuredOutputsParams"])
    assert newest == ("structured_outputs", "StructuredOutputsParams")
    both = structured_output_api(["GuidedDecodingParams", "StructuredOutputsParams"])
    assert both == newest
    assert structured_output_api(["GuidedDecodingParams"]) == (
        "guided_decoding",
        "GuidedDecodingParams",
    )
    with pytest.raises(EngineUnavailable, match="structured output"):
        structured_output_api(["SamplingParams"])
    assert structured_output_kwargs(None) == {}
    assert structured_output_kwargs(json.dumps(PERSON)) == {"json": PERSON}
