"""Benchmark: what Ray Serve + the gRPC proxy add on top of the engine (tiny model, CPU).

Two paths answer the same streamed chat requests in the same run:
- direct: `ChatService` over the reference engine, called in this process (the baseline);
- path:   the Serve application over Ray Serve's gRPC proxy (`ChatStream`), as clients see it.
Each is measured at concurrency 1 and 8 (closed-loop clients): completion tokens/s and
time-to-first-token (p50), in rounds that alternate the paths; figures are medians over rounds
(ratios: the median of per-round ratios). Both engines use the same torch thread count.

    .venv/bin/python bench/serve_overhead.py --quick    # under a minute after Ray starts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workers")]

from tramontane_workers.contract import inference_pb2 as pb  # noqa: E402
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc  # noqa: E402
from tramontane_workers.contract.serve_config import (  # noqa: E402
    AutoscalingConfig,
    EngineConfig,
    ReplicaResources,
    ServeAppConfig,
)

APP = "bench"
Stream = Callable[[pb.ChatRequest], AsyncIterator[pb.ChatChunk]]


def _request(max_tokens: int, i: int) -> pb.ChatRequest:
    return pb.ChatRequest(
        model="tiny",
        messages=[pb.Message(role="user", content=f"Tell me a story about the wind, part {i}.")],
        max_tokens=max_tokens,
        temperature=0.0,
    )


async def _client(stream: Stream, requests: int, max_tokens: int, ttfts: list[float]) -> int:
    tokens = 0
    for i in range(requests):
        start = time.perf_counter()
        first = True
        last: pb.ChatChunk | None = None
        async for chunk in stream(_request(max_tokens, i)):
            if first and chunk.choices[0].delta.content:
                ttfts.append(time.perf_counter() - start)
                first = False
            last = chunk
        if last is None:
            raise RuntimeError("empty stream")
        tokens += last.usage.completion_tokens
    return tokens


async def _measure(
    stream: Stream, concurrency: int, requests: int, max_tokens: int
) -> dict[str, float]:
    ttfts: list[float] = []
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(_client(stream, requests, max_tokens, ttfts) for _ in range(concurrency))
    )
    wall = time.perf_counter() - start
    return {"tokens_per_s": sum(counts) / wall, "ttft_p50_ms": 1000 * statistics.median(ttfts)}


async def _run(args: argparse.Namespace, model_dir: Path, grpc_port: int) -> dict[str, Any]:
    import grpc
    from tramontane_workers.chat.encode import ChatCodec
    from tramontane_workers.chat.service import ChatService
    from tramontane_workers.engines.reference import TransformersEngine
    from tramontane_workers.models.loading import find_tokenizer

    engine = TransformersEngine(model_dir, max_batch_size=8)
    service = ChatService(
        engine, ChatCodec(find_tokenizer(model_dir), max_model_len=engine.max_model_len)
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub: Any = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]

    def via_serve(request: pb.ChatRequest) -> AsyncIterator[pb.ChatChunk]:
        return stub.ChatStream(request, metadata=(("application", APP),))  # type: ignore[no-any-return]

    paths: dict[str, Stream] = {"direct": service.stream, "path": via_serve}
    for stream in paths.values():
        await _client(stream, 1, args.max_tokens, [])  # warm-up
    rounds: list[dict[str, dict[str, float]]] = []
    for round_no in range(args.rounds):  # rounds alternate the paths, so load drift hits both
        results: dict[str, dict[str, float]] = {}
        for concurrency, requests in ((1, args.requests_c1), (8, args.requests_c8)):
            for name, stream in paths.items():
                key = f"{name}_c{concurrency}"
                results[key] = await _measure(stream, concurrency, requests, args.max_tokens)
                print(f"round {round_no} {key}", json.dumps(results[key]), flush=True)
        rounds.append(results)
    await channel.close()
    await engine.shutdown()
    return _figures(rounds)


def _figures(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians over rounds; ratios are the median of per-round ratios (pure)."""

    def median(values: list[float]) -> float:
        return statistics.median(values)

    figures: dict[str, Any] = {"bench": "serve_overhead"}
    for key in rounds[0]:
        figures[f"{key}_tokens_per_s"] = round(median([r[key]["tokens_per_s"] for r in rounds]), 1)
        figures[f"{key}_ttft_p50_ms"] = round(median([r[key]["ttft_p50_ms"] for r in rounds]), 2)
    for c in (1, 8):
        ratios = [
            r[f"path_c{c}"]["tokens_per_s"] / r[f"direct_c{c}"]["tokens_per_s"] for r in rounds
        ]
        figures[f"throughput_ratio_c{c}"] = round(median(ratios), 3)
    added = [r["path_c1"]["ttft_p50_ms"] - r["direct_c1"]["ttft_p50_ms"] for r in rounds]
    figures["ttft_added_ms_c1"] = round(median(added), 2)
    figures["rounds"] = len(rounds)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    args.max_tokens = 32 if args.quick else 64
    args.requests_c1 = 3 if args.quick else 8
    args.requests_c8 = 1 if args.quick else 3
    args.rounds = 3 if args.quick else 5

    import ray
    import torch
    from tramontane_workers.models.tiny import write_tiny_mistral
    from tramontane_workers.serve.local import free_port, run_local

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_tiny_mistral(Path(tmp) / "tiny")
        # Ray starts its workers (the replica, the proxy) at nice 15; on a shared machine that
        # would time the path against other tenants while the in-process baseline runs at 0.
        ray.init(
            num_cpus=max(4, args.threads),
            include_dashboard=False,
            log_to_driver=False,
            _system_config={"worker_niceness": 0},
        )
        config = ServeAppConfig(
            name=APP,
            route_prefix="/bench",
            engine=EngineConfig(
                engine="transformers",
                model_uri=f"file://{model_dir}",
                served_model_name="tiny",
            ),
            autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=1),
            resources=ReplicaResources(num_cpus=args.threads),
            max_ongoing_requests=16,
        )
        grpc_port = free_port()
        run_local([config], grpc_port=grpc_port, http_port=free_port())
        try:
            figures = asyncio.run(_run(args, model_dir, grpc_port))
        finally:
            ray.shutdown()
    figures["threads"] = args.threads
    figures["max_tokens"] = args.max_tokens
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
