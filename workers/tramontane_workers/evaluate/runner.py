"""One evaluation run: check and encode the dataset, then score the target and the baseline.

Order matters: the dataset is read, checked and encoded with each base model's tokenizer
before any model is loaded (a bad line fails the run in seconds, with its line number). Then
for the target, and then the baseline, the engine serving uses (`engines.factory.build_engine`:
vLLM on GPU, the transformers reference engine otherwise) generates every answer, greedy, with
up to `batch_size` sequences per batch, through the chat service's own answer assembly (stop
tokens, tool-call parsing); the adapter is loaded as serving loads one. Loss and token accuracy
come from `Engine.score` (teacher forcing) on the same engine, so the same weights. A baseline
on the same base model reuses the loaded engine.

Progress goes out through `emit` as `result_line`s (at most one a second, and the final one);
the final result is also written to `RESULT_FILE` under `output_uri` when set.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tramontane_workers.chat.encode import ChatCodec
from tramontane_workers.chat.service import Answer, ChatService
from tramontane_workers.contract.eval_config import (
    EvalConfig,
    EvalResult,
    EvalTarget,
    MetricScore,
    result_line,
)
from tramontane_workers.contract.serve_config import EngineConfig
from tramontane_workers.engines.base import Engine, ForcedRequest, ForcedScores
from tramontane_workers.engines.factory import build_engine, resolve_adapter_dir
from tramontane_workers.evaluate.dataset import (
    EncodedSample,
    encode_samples,
    load_samples,
    with_max_tokens,
)
from tramontane_workers.evaluate.scoring import (
    FORCED_METRICS,
    GENERATION_METRICS,
    failing_samples,
    score_target,
)
from tramontane_workers.models.loading import find_tokenizer, materialize

EMIT_EVERY_S = 1.0
DEFAULT_CONTEXT = 32768  # when neither the config nor the checkpoint says


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Reporter:
    """Holds the latest result and emits it (throttled, except when forced)."""

    emit: Callable[[str], None]
    result: EvalResult = field(default_factory=lambda: EvalResult(updated=now()))
    _last: float = 0.0

    def update(self, *, force: bool = False, **fields: object) -> None:
        self.result = self.result.model_copy(update={**fields, "updated": now()})
        if force or time.monotonic() - self._last >= EMIT_EVERY_S:
            self._last = time.monotonic()
            self.emit(result_line(self.result))

    def advance(self, count: int = 1) -> None:
        self.update(done=self.result.done + count)


def _context_hint(model_dir: Path, configured: int | None) -> int:
    """The context the engine will have, as far as the checkpoint says (checked again after
    the engine is up, which has the last word)."""
    config = model_dir / "config.json"
    limit = None
    if config.is_file():
        limit = json.loads(config.read_text()).get("max_position_embeddings")
    if isinstance(limit, int):
        return min(configured or limit, limit)
    return configured or DEFAULT_CONTEXT


def _prepare(config: EvalConfig) -> dict[str, list[EncodedSample]]:
    """Load, check and encode the dataset for each base model; no model is loaded."""
    samples = load_samples(config.dataset_uri, max_samples=config.max_samples, seed=config.seed)
    encoded: dict[str, list[EncodedSample]] = {}
    for target in (config.target, config.baseline):
        if target is None or target.base_model_uri in encoded:
            continue
        model_dir = materialize(target.base_model_uri)
        codec = ChatCodec(
            find_tokenizer(model_dir), max_model_len=_context_hint(model_dir, config.max_model_len)
        )
        encoded[target.base_model_uri] = encode_samples(config.dataset_uri, samples, codec)
    return encoded


@dataclass
class _Engines:
    """One engine at a time; a target on the same base model as the last one reuses it."""

    config: EvalConfig
    uri: str | None = None
    engine: Engine | None = None
    service: ChatService | None = None

    async def get(self, target: EvalTarget) -> tuple[Engine, ChatService]:
        if self.engine is None or self.service is None or self.uri != target.base_model_uri:
            await self.close()  # one model in memory at a time (one GPU holds one engine)
            engine_config = EngineConfig(
                engine="vllm" if self.config.use_gpu else "transformers",
                model_uri=target.base_model_uri,
                served_model_name=target.label,
                max_model_len=self.config.max_model_len,
            )
            engine, codec = build_engine(engine_config, max_batch_size=self.config.batch_size)
            self.uri, self.engine, self.service = (
                target.base_model_uri,
                engine,
                ChatService(engine, codec),
            )
        return self.engine, self.service

    async def close(self) -> None:
        engine, self.engine, self.service, self.uri = self.engine, None, None, None
        if engine is not None:
            await engine.shutdown()


async def _generate(
    service: ChatService,
    samples: list[EncodedSample],
    adapter: str | None,
    config: EvalConfig,
    context: int,
    reporter: Reporter,
) -> list[Answer]:
    """Every answer. All requests go to the engine at once: its scheduler is the one queue
    (`batch_size` sequences decode together on the reference engine), as in offline vLLM."""
    requests = [with_max_tokens(s, config.max_tokens, context) for s in samples]

    async def one(index: int) -> Answer:
        answer = await service.answer(requests[index], adapter)
        reporter.advance()
        return answer

    return list(await asyncio.gather(*(one(i) for i in range(len(requests)))))


async def _force(
    engine: Engine,
    samples: list[EncodedSample],
    adapter: str | None,
    config: EvalConfig,
    reporter: Reporter | None,
) -> list[ForcedScores]:
    """Teacher-forced scores of every expected answer, `batch_size` sequences at a time."""
    scores: list[ForcedScores] = []
    for start in range(0, len(samples), config.batch_size):
        batch = samples[start : start + config.batch_size]
        requests = [
            ForcedRequest(
                s.chat.prompt_tokens,
                s.answer_tokens[: max(0, engine.max_model_len - len(s.chat.prompt_tokens))],
                adapter,
            )
            for s in batch
        ]
        scores += await engine.score(requests)
        if reporter is not None:
            reporter.advance(len(batch))
    return scores


async def _evaluate_target(
    name: str,
    target: EvalTarget,
    engines: _Engines,
    samples: list[EncodedSample],
    config: EvalConfig,
    reporter: Reporter,
) -> tuple[list[MetricScore], list[Answer] | None, float]:
    """Scores, answers (None without generation metrics) and the seconds spent scoring (model
    and adapter loading excluded)."""
    engine, service = await engines.get(target)
    adapter = None
    if target.adapter_uri is not None:
        await engine.add_adapter(name, resolve_adapter_dir(target.adapter_uri))
        adapter = name
    started = time.monotonic()
    generate = any(m in GENERATION_METRICS for m in config.metrics)
    force = any(m in FORCED_METRICS for m in config.metrics)
    answers = None
    if generate:
        answers = await _generate(service, samples, adapter, config, engine.max_model_len, reporter)
    forced = None
    if force:
        forced = await _force(engine, samples, adapter, config, None if generate else reporter)
    seconds = time.monotonic() - started
    plain = [s.sample for s in samples]
    return score_target(config.metrics, plain, answers, forced), answers, seconds


async def evaluate(config: EvalConfig, reporter: Reporter) -> EvalResult:
    """Run the evaluation; exceptions propagate (the caller reports the failure)."""
    prepared = _prepare(config)
    count = len(next(iter(prepared.values())))
    reporter.update(force=True, state="running", samples=count, done=0)
    engines = _Engines(config)
    try:
        samples = prepared[config.target.base_model_uri]
        target, answers, elapsed = await _evaluate_target(
            "target", config.target, engines, samples, config, reporter
        )
        failing = (
            []
            if answers is None
            else failing_samples([s.sample for s in samples], answers, config.failing_samples)
        )
        reporter.update(force=True, target=target, failing_samples=failing)
        if config.baseline is not None:
            baseline, _, seconds = await _evaluate_target(
                "baseline",
                config.baseline,
                engines,
                prepared[config.baseline.base_model_uri],
                config,
                reporter,
            )
            elapsed += seconds
            reporter.update(baseline=baseline)
    finally:
        await engines.close()
    rate = round(reporter.result.done / elapsed, 3) if elapsed > 0 else None
    reporter.update(force=True, state="succeeded", samples_per_second=rate)
    return reporter.result
