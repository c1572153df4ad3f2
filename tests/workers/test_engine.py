"""The reference engine: continuous batching, seeded sampling, cancellation, LoRA adapters."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tramontane_workers.engines.base import ForcedRequest, GenerationRequest, SamplingParams
from tramontane_workers.engines.reference import TransformersEngine
from tramontane_workers.errors import AdapterUnavailable, EngineUnavailable

PROMPT_A = [1, 3, 12782, 4]
PROMPT_B = [1, 3, 1000, 1001, 1002, 1003, 1004, 1005, 4]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    yield TransformersEngine(tiny_model_dir, max_batch_size=4)


async def _run(engine: TransformersEngine, request: GenerationRequest) -> list[int]:
    tokens: list[int] = []
    async for step in engine.generate(request):
        tokens += step.token_ids
    return tokens


@contextlib.asynccontextmanager
async def peak_running(engine: TransformersEngine) -> AsyncIterator[list[int]]:
    """While the body runs, track the most sequences decoding at once (in the yielded [peak])."""
    peak = [0]

    async def watch() -> None:
        while True:
            peak[0] = max(peak[0], engine.stats().running)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        yield peak
    finally:
        watcher.cancel()


async def test_batched_equals_sequential(engine: TransformersEngine) -> None:
    alone_a = await _run(engine, GenerationRequest("a", PROMPT_A, GREEDY))
    alone_b = await _run(engine, GenerationRequest("b", PROMPT_B, GREEDY))

    async def later(delay: float, request: GenerationRequest) -> list[int]:
        await asyncio.sleep(delay)  # joins a batch already decoding
        return await _run(engine, request)

    async with peak_running(engine) as peak:
        results = await asyncio.gather(
            _run(engine, GenerationRequest("a1", PROMPT_A, GREEDY)),
            later(0.01, GenerationRequest("b1", PROMPT_B, GREEDY)),
            later(0.02, GenerationRequest("a2", PROMPT_A, GREEDY)),
            _run(engine, GenerationRequest("b2", PROMPT_B, GREEDY)),
            _run(engine, GenerationRequest("a3", PROMPT_A, GREEDY)),  # 5 > max_batch_size: waits
        )
    assert list(results) == [alone_a, alone_b, alone_a, alone_b, alone_a]
    assert peak[0] >= 2  # decoded together, not one at a time
    assert peak[0] <= engine.max_batch_size
    assert len(alone_a) == 16


async def test_seeded_sampling_is_repeatable(engine: TransformersEngine) -> None:
    def sampled(seed: int) -> GenerationRequest:
        params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=seed)
        return GenerationRequest(f"s{seed}", PROMPT_A, params)

    first = await _run(engine, sampled(5))
    # same seed while another sequence shares the batch: same tokens
    again, _ = await asyncio.gather(
        _run(engine, sampled(5)), _run(engine, GenerationRequest("x", PROMPT_B, GREEDY))
    )
    assert again == first
    assert await _run(engine, sampled(6)) != first


async def test_stop_token_ends_with_stop(engine: TransformersEngine) -> None:
    greedy = await _run(engine, GenerationRequest("g", PROMPT_A, GREEDY))
    params = SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=frozenset({greedy[2]}))
    steps = [s async for s in engine.generate(GenerationRequest("st", PROMPT_A, params))]
    assert [t for s in steps for t in s.token_ids] == greedy[: greedy.index(greedy[2]) + 1]
    assert steps[-1].finish_reason == "stop"


async def test_closing_the_stream_frees_the_slot(engine: TransformersEngine) -> None:
    long = SamplingParams(max_tokens=1500, temperature=0.0)
    stream = engine.generate(GenerationRequest("long", PROMPT_A, long))
    await anext(stream)
    await anext(stream)
    assert engine.stats().running == 1
    await stream.aclose()
    for _ in range(200):
        if engine.stats().running == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().running == 0
    assert len(await _run(engine, GenerationRequest("after", PROMPT_A, GREEDY))) == 16


async def test_adapters_mix_in_one_batch(
    engine: TransformersEngine, tiny_adapters: dict[str, Path]
) -> None:
    await engine.add_adapter("alpha", tiny_adapters["alpha"])
    await engine.add_adapter("beta", tiny_adapters["beta"])
    requests = [
        GenerationRequest("base", PROMPT_A, GREEDY),
        GenerationRequest("al", PROMPT_A, GREEDY, adapter="alpha"),
        GenerationRequest("be", PROMPT_A, GREEDY, adapter="beta"),
    ]
    alone = [await _run(engine, r) for r in requests]
    mixed = await asyncio.gather(*(_run(engine, r) for r in requests))
    assert list(mixed) == alone
    assert len({tuple(t) for t in alone}) == 3  # each adapter changes the output
    await engine.remove_adapter("alpha")
    for _ in range(100):
        if "alpha" not in engine.loaded_adapters():
            break
        await asyncio.sleep(0.01)
    assert engine.loaded_adapters() == {"beta"}
    for _ in range(100):  # the engine is idle: the peft weights go without another request
        if "alpha" not in engine.model.peft_config:
            break
        await asyncio.sleep(0.01)
    assert set(engine.model.peft_config) == {"beta"}
    with pytest.raises(AdapterUnavailable, match="'alpha' is not loaded"):
        await _run(engine, requests[1])


async def test_bad_adapters_are_refused(
    engine: TransformersEngine, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(AdapterUnavailable, match=r"no adapter_config\.json"):
        await engine.add_adapter("empty", tmp_path)
    with pytest.raises(AdapterUnavailable, match="no_such_proj"):
        await engine.add_adapter("broken", tiny_adapters["broken"])
    assert "broken" not in engine.loaded_adapters()
    assert len(await _run(engine, GenerationRequest("ok", PROMPT_A, GREEDY))) == 16


def test_mistral_format_needs_vllm(tmp_path: Path) -> None:
    (tmp_path / "consolidated.safetensors").write_bytes(b"")
    (tmp_path / "params.json").write_text(json.dumps({"dim": 64}))
    with pytest.raises(EngineUnavailable, match="engine: vllm"):
        TransformersEngine(tmp_path)


def test_vllm_engine_refuses_clearly_without_gpu(tiny_model_dir: Path) -> None:
    from tramontane_workers.engines.vllm_engine import VLLMEngine, vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is None:
        pytest.skip("vLLM and a GPU are present; tests/gpu covers this machine")
    with pytest.raises(EngineUnavailable, match="engine vllm: "):
        VLLMEngine(
            model_dir=tiny_model_dir,
            checkpoint_format="hf",
            served_model_name="tiny",
            dtype="auto",
            max_model_len=None,
            tensor_parallel_size=1,
            max_loras=2,
        )


async def test_evicted_adapter_serves_in_flight_work_then_goes(
    engine: TransformersEngine, tiny_adapters: dict[str, Path]
) -> None:
    await engine.add_adapter("gamma", tiny_adapters["gamma"])
    long = GenerationRequest("g1", PROMPT_A, SamplingParams(max_tokens=400), adapter="gamma")
    stream = engine.generate(long)
    await anext(stream)
    await engine.remove_adapter("gamma")  # evicted while a sequence still uses it
    assert "gamma" not in engine.loaded_adapters()
    # a request that resolved the adapter just before the eviction still runs
    late = await _run(engine, GenerationRequest("g2", PROMPT_A, GREEDY, adapter="gamma"))
    assert len(late) == 16
    assert "gamma" in engine.model.peft_config  # not deleted under running sequences
    await stream.aclose()
    for _ in range(200):
        if "gamma" not in engine.model.peft_config:
            break
        await asyncio.sleep(0.01)
    assert "gamma" not in engine.model.peft_config


def test_vllm_engine_args_follow_the_checkpoint_format(tmp_path: Path) -> None:
    from tramontane_workers.engines.vllm_engine import engine_args

    common = {
        "served_model_name": "m",
        "dtype": "auto",
        "max_model_len": 4096,
        "tensor_parallel_size": 2,
        "max_loras": 3,
    }
    mistral = engine_args(tmp_path, checkpoint_format="mistral", **common)  # type: ignore[arg-type]
    assert (mistral["config_format"], mistral["load_format"]) == ("mistral", "mistral")
    assert mistral["tokenizer_mode"] == "mistral"
    assert (mistral["enable_lora"], mistral["max_loras"]) == (True, 3)
    assert (mistral["tensor_parallel_size"], mistral["max_model_len"]) == (2, 4096)
    hf = engine_args(tmp_path, checkpoint_format="hf", **common)  # type: ignore[arg-type]
    assert "config_format" not in hf and "load_format" not in hf
    assert hf["tokenizer_mode"] == "mistral"  # the tokenizer is always mistral-common's


def test_spec_format_must_match_the_checkpoint(tiny_model_dir: Path) -> None:
    from tramontane_workers.contract.serve_config import EngineConfig
    from tramontane_workers.engines.factory import build_engine

    config = EngineConfig(
        engine="transformers",
        model_uri=f"file://{tiny_model_dir}",
        served_model_name="tiny",
        format="mistral",
    )
    with pytest.raises(EngineUnavailable, match="format: the spec says 'mistral'"):
        build_engine(config)


async def test_teacher_forcing_scores_the_greedy_answer_as_its_own_argmax(
    engine: TransformersEngine, tiny_adapters: dict[str, Path]
) -> None:
    """Scoring the engine's own greedy output: every token is the argmax (hits all True), and
    the log-probabilities are those of one plain forward pass; per adapter, in one batch."""
    import torch

    await engine.add_adapter("gamma", tiny_adapters["gamma"])
    base = await _run(engine, GenerationRequest("b", PROMPT_B, GREEDY))
    tuned = await _run(engine, GenerationRequest("g", PROMPT_B, GREEDY, adapter="gamma"))
    assert base != tuned
    scores = await engine.score(
        [
            ForcedRequest(PROMPT_B, base),
            ForcedRequest(PROMPT_A, [5, 6, 7]),  # shorter row: right padding must not matter
            ForcedRequest(PROMPT_B, tuned, adapter="gamma"),
        ]
    )
    assert scores[0].argmax_hits == [True] * len(base)
    assert scores[2].argmax_hits == [True] * len(tuned)
    alone = (await engine.score([ForcedRequest(PROMPT_A, [5, 6, 7])]))[0]
    assert scores[1].logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    with torch.no_grad():  # the same numbers from the base weights directly
        ids = torch.tensor([PROMPT_B + base])
        with engine.model.disable_adapter():
            logits = engine.model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    direct = [float(logprobs[len(PROMPT_B) - 1 + i, t]) for i, t in enumerate(base)]
    assert scores[0].logprobs == pytest.approx(direct, abs=1e-4)
    assert all(lp < 0 for lp in direct)
    with pytest.raises(AdapterUnavailable):
        await engine.score([ForcedRequest(PROMPT_A, [5], adapter="nope")])
