"""vLLM engine smoke test (GPU): skipped, with the reason, where vLLM or a GPU is missing.

Runs the tiny Mistral (hidden 256 so the head size suits vLLM's attention kernels) with a
seeded LoRA adapter through `VLLMEngine` and the shared chat layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tramontane_workers.engines.vllm_engine import vllm_unavailable_reason

pytestmark = pytest.mark.gpu
_REASON = vllm_unavailable_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tramontane_workers.models.tiny import write_tiny_lora, write_tiny_mistral

    root = tmp_path_factory.mktemp("vllm")
    model = write_tiny_mistral(root / "model", hidden_size=256)
    return model, write_tiny_lora(model, root / "lora", seed=1)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module: vLLM's engine binds its output task to one loop."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(checkpoint: tuple[Path, Path], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    from tramontane_workers.engines.vllm_engine import VLLMEngine

    async def start() -> Any:
        return VLLMEngine(
            model_dir=checkpoint[0],
            checkpoint_format="hf",
            served_model_name="tiny",
            dtype="float32",
            max_model_len=512,
            tensor_parallel_size=1,
            max_loras=2,
            max_lora_rank=8,
        )

    engine = loop.run_until_complete(start())
    yield engine
    loop.run_until_complete(engine.shutdown())


@pytest.fixture(scope="module")
def chat(engine: Any, checkpoint: tuple[Path, Path]) -> Any:
    """The shared chat layer (mistral-common encoding, response formats) over the vLLM engine."""
    from tramontane_workers.chat.encode import ChatCodec
    from tramontane_workers.chat.service import ChatService
    from tramontane_workers.models.loading import find_tokenizer

    codec = ChatCodec(find_tokenizer(checkpoint[0]), max_model_len=engine.max_model_len)
    return ChatService(engine, codec)


def test_vllm_generates_and_adapter_changes_output(
    engine: Any, checkpoint: tuple[Path, Path], loop: asyncio.AbstractEventLoop
) -> None:
    from tramontane_workers.engines.base import GenerationRequest, SamplingParams

    async def run() -> tuple[list[int], list[int], list[int]]:
        params = SamplingParams(max_tokens=12, temperature=0.0)

        async def collect(adapter: str | None) -> list[int]:
            out: list[int] = []
            async for step in engine.generate(
                GenerationRequest(f"r-{adapter}", [1, 3, 12782, 4], params, adapter)
            ):
                out += step.token_ids
            return out

        base = await collect(None)
        await engine.add_adapter("alpha", checkpoint[1])
        alpha = await collect("alpha")
        both = await asyncio.gather(collect(None), collect("alpha"))
        return base, alpha, [*both[0], -1, *both[1]]

    base, alpha, both = loop.run_until_complete(run())
    assert len(base) == 12 and len(alpha) == 12
    assert base != alpha
    assert both == [*base, -1, *alpha]


def test_vllm_through_the_chat_layer(chat: Any, loop: asyncio.AbstractEventLoop) -> None:
    from tramontane_workers.contract import inference_pb2 as pb

    request = pb.ChatRequest(
        model="tiny",
        messages=[pb.Message(role="user", content="Hello")],
        max_tokens=10,
        random_seed=3,
        temperature=0.8,
    )

    async def run() -> tuple[pb.ChatResponse, str]:
        unary = await chat.complete(request)
        streamed = "".join([c.choices[0].delta.content async for c in chat.stream(request)])
        return unary, streamed

    unary, streamed = loop.run_until_complete(run())
    assert unary.usage.completion_tokens == 10
    assert streamed == unary.choices[0].message.content


def test_vllm_json_schema_output_validates(chat: Any, loop: asyncio.AbstractEventLoop) -> None:
    # vLLM's structured outputs must hold the random tiny model to the schema, as the
    # reference engine's xgrammar path does (tests/workers/test_structured_output.py).
    import json

    import jsonschema

    from tramontane_workers.contract import inference_pb2 as pb

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    request = pb.ChatRequest(
        model="tiny",
        messages=[pb.Message(role="user", content="Describe a person as JSON.")],
        max_tokens=200,
        random_seed=5,
        temperature=1.0,
        response_format=pb.ResponseFormat(
            type="json_schema",
            json_schema=pb.JsonSchema(name="person", schema=json.dumps(schema), strict=True),
        ),
    )
    response = loop.run_until_complete(chat.complete(request))
    assert response.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_vllm_teacher_forcing_scores_its_greedy_answer_as_argmax(
    engine: Any, checkpoint: tuple[Path, Path], loop: asyncio.AbstractEventLoop
) -> None:
    """`VLLMEngine.score` (the evaluator's loss / token accuracy): the engine's own greedy
    answer is the argmax at every position, with and without the adapter."""
    from tramontane_workers.engines.base import ForcedRequest, GenerationRequest, SamplingParams

    prompt = [1, 3, 12782, 4]

    async def run() -> list[tuple[int, list[bool], list[float]]]:
        await engine.add_adapter("score", checkpoint[1])
        results = []
        for i, adapter in enumerate((None, "score")):
            tokens: list[int] = []
            request = GenerationRequest(
                f"s{i}", prompt, SamplingParams(max_tokens=8, temperature=0.0), adapter
            )
            async for step in engine.generate(request):
                tokens += step.token_ids
            (scores,) = await engine.score([ForcedRequest(prompt, tokens, adapter)])
            results.append((len(tokens), scores.argmax_hits, scores.logprobs))
        return results

    for count, hits, logprobs in loop.run_until_complete(run()):
        assert hits == [True] * count
        assert len(logprobs) == count and all(lp <= 0 for lp in logprobs)
