"""Benchmark: evaluation throughput through the evaluator vs the engine's own batched generation.

Both paths answer the same samples (a Q&A JSONL dataset) with the same settings: the tiny
Mistral on the reference engine (CPU), greedy, `--max-tokens`, `--batch-size` sequences per
batch, in one process (same torch threads), in rounds that alternate the paths (and which runs
first); each path builds its own engine every round, so both start equally cold:
- engine:    the prompts encoded once with the model's codec, every `GenerationRequest`
             submitted at once to `TransformersEngine.generate` (its continuous batching), the
             tokens only counted: the baseline, what generation alone costs;
- evaluator: `tramontane_workers.evaluate.runner.evaluate` on the dataset (exactMatch,
             normalizedMatch, tokenF1): its own engine, the chat service's answer assembly
             (detokenisation, tool-call parsing), scoring, result lines. Its figure is the
             `samples_per_second` it reports (model loading excluded, as the engine's build is
             excluded from the baseline).
`eval_throughput_ratio` = evaluator samples/s over engine samples/s (median of per-round
ratios; target >= 0.9). Both paths decode the same tokens: greedy, and the engine's batching
does not change them (tests/workers/test_engine.py); `tokens_per_answer` says how many.

The issue's second figure comes in the same output: `rollback_s`, the time from a canary
adapter version's first failure to 0 % of its traffic at the router (target <= 10 s), with
`failed_requests` (target 0), measured by `bench/canary_rollback.py`'s router runs (one run
with --quick, three otherwise; `--no-rollback` leaves it out). The end-to-end operator figures
are that script's own.

    .venv/bin/python bench/eval_throughput.py --quick     # under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workers")]

from tramontane_workers.contract.eval_config import EvalConfig  # noqa: E402


def _dataset(path: Path, samples: int) -> Path:
    lines = []
    for i in range(samples):
        messages = [
            {"role": "user", "content": f"Tell me one thing about the wind, number {i}."},
            {"role": "assistant", "content": f"The wind number {i} blows from the north."},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


async def _engine_round(model_dir: Path, config: EvalConfig) -> tuple[float, list[list[int]]]:
    """Samples/s of the engine alone on the evaluator's own encoded prompts."""
    from tramontane_workers.chat.encode import ChatCodec
    from tramontane_workers.engines.base import GenerationRequest
    from tramontane_workers.engines.reference import TransformersEngine
    from tramontane_workers.evaluate.dataset import encode_samples, load_samples, with_max_tokens
    from tramontane_workers.models.loading import find_tokenizer

    engine = TransformersEngine(model_dir, max_batch_size=config.batch_size)
    codec = ChatCodec(find_tokenizer(model_dir), max_model_len=engine.max_model_len)
    samples = encode_samples(config.dataset_uri, load_samples(config.dataset_uri), codec)
    requests = [
        GenerationRequest(
            str(i),
            s.chat.prompt_tokens,
            with_max_tokens(s, config.max_tokens, engine.max_model_len).sampling,
        )
        for i, s in enumerate(samples)
    ]

    async def run(request: GenerationRequest) -> list[int]:
        tokens: list[int] = []
        async for step in engine.generate(request):
            tokens += step.token_ids
        return tokens

    start = time.perf_counter()
    outputs = await asyncio.gather(*(run(r) for r in requests))
    wall = time.perf_counter() - start
    await engine.shutdown()
    return len(requests) / wall, list(outputs)


async def _evaluator_round(config: EvalConfig) -> tuple[float, int]:
    from tramontane_workers.evaluate.runner import Reporter, evaluate

    lines: list[str] = []
    result = await evaluate(config, Reporter(emit=lines.append))
    if result.samples_per_second is None:
        raise RuntimeError("the evaluator reported no throughput")
    return result.samples_per_second, result.samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and rounds")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-rollback", action="store_true", help="skip the rollback_s figure")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.rounds, args.max_tokens = 32, 3, 16

    from tramontane_workers.models.tiny import write_tiny_mistral

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_tiny_mistral(Path(tmp) / "model")
        data = _dataset(Path(tmp) / "eval.jsonl", args.samples)
        config = EvalConfig(
            dataset_uri=data.as_uri(),
            target={"label": "tiny", "base_model_uri": model_dir.as_uri()},
            metrics=["exactMatch", "normalizedMatch", "tokenF1"],
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
        )
        ratios, engine_rates, eval_rates = [], [], []
        tokens_per_answer = 0.0
        for round_no in range(args.rounds):
            if round_no % 2:  # alternate which path runs first
                eval_rate, samples = await _evaluator_round(config)
                engine_rate, outputs = await _engine_round(model_dir, config)
            else:
                engine_rate, outputs = await _engine_round(model_dir, config)
                eval_rate, samples = await _evaluator_round(config)
            if samples != len(outputs):
                raise RuntimeError(f"evaluator scored {samples} samples, engine {len(outputs)}")
            tokens_per_answer = sum(len(o) for o in outputs) / len(outputs)
            engine_rates.append(engine_rate)
            eval_rates.append(eval_rate)
            ratios.append(eval_rate / engine_rate)
            figures = {"engine_samples_per_s": engine_rate, "eval_samples_per_s": eval_rate}
            print(f"round {round_no}", json.dumps(figures), flush=True)
    rollback: dict[str, object] = {}
    if not args.no_rollback:
        rollback = await _rollback(args.quick)
    print(
        json.dumps(
            {
                **rollback,
                "bench": "eval_throughput",
                "samples": args.samples,
                "max_tokens": args.max_tokens,
                "batch_size": args.batch_size,
                "tokens_per_answer": round(tokens_per_answer, 1),
                "engine_samples_per_s": round(statistics.median(engine_rates), 2),
                "eval_samples_per_s": round(statistics.median(eval_rates), 2),
                "eval_throughput_ratio": round(statistics.median(ratios), 3),
            }
        )
    )


async def _rollback(quick: bool) -> dict[str, object]:
    """`rollback_s` and `failed_requests` from the canary benchmark's router runs."""
    sys.path.insert(0, str(REPO / "bench"))
    import logging

    from canary_rollback import router_rollback

    logging.getLogger("tramontane_router").setLevel(logging.ERROR)
    figures = await router_rollback(50.0 if quick else 100.0, 4.0 if quick else 5.0,
                                    1 if quick else 3)  # fmt: skip
    return {"rollback_s": figures["rollback_s"], "failed_requests": figures["failed_requests"]}


if __name__ == "__main__":
    asyncio.run(main())
