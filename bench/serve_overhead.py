"""Benchmark: what Ray Serve + the gRPC proxy add on top of the engine (tiny model, CPU).

Three paths answer the same streamed chat requests in the same run:
- direct: `ChatService` over the reference engine, called in this process (the baseline);
- path:   the Serve application over Ray Serve's gRPC proxy (`ChatStream`), as clients see it;
- e2e:    the whole path, client -> router -> Serve's gRPC proxy -> engine: the router
          (`Router` over a `StaticSource` whose ModelDeployment status names the Serve gRPC
          port; default settings) runs in its own process (multiprocessing spawn), so it does
          not share this process's GIL, and is called over gRPC with a tenant's API key.
Each is measured at concurrency 1 and 8 (closed-loop clients): completion tokens/s and
time-to-first-token (p50), in rounds that alternate the paths; figures are medians over rounds
(ratios: the median of per-round ratios). Both engines use the same torch thread count.
Figures against direct: `throughput_ratio_c8`, `ttft_added_ms_c1` (Serve path) and
`e2e_throughput_ratio_c8`, `e2e_ttft_added_ms_c1` (whole path); `--no-router` drops e2e.

    .venv/bin/python bench/serve_overhead.py --quick    # under a minute after Ray starts
    .venv/bin/python bench/serve_overhead.py --engine vllm --quick   # GPU: vs plain vLLM

With `--engine vllm` the baseline is plain vLLM (same engine arguments) in this process; one GPU
cannot hold two engines, so its rounds run first, then the Serve path's.

`--json` adds a third path to every round: the direct path with a strict `json_schema`
response format (`{"story": <string>}`, constrained decoding), and prints
`json_throughput_ratio_c1/_c8` = its tokens/s over the free direct path's. Both are greedy with
the same `max_tokens`; the random tiny model seldom closes the string, so most answers run to
`max_tokens` on both paths (`*_tokens_per_answer` says how many tokens answers really had: an
answer that closes early costs a prefill for fewer tokens).
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
    application_name,
)

APP = "bench"  # the ModelDeployment, in namespace "team"
SERVE_APP = application_name("team", APP)  # its Serve application, as the operator names it
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
    return {
        "tokens_per_s": sum(counts) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "tokens_per_answer": sum(counts) / (concurrency * requests),
    }


Rounds = list[dict[str, dict[str, float]]]


async def _rounds(args: argparse.Namespace, paths: dict[str, Stream]) -> Rounds:
    """Measure every path at c1 and c8, `args.rounds` times, alternating the paths."""
    for stream in paths.values():
        await _client(stream, 1, args.max_tokens, [])  # warm-up
    rounds: Rounds = []
    for round_no in range(args.rounds):
        results: dict[str, dict[str, float]] = {}
        for concurrency, requests in ((1, args.requests_c1), (8, args.requests_c8)):
            for name, stream in paths.items():
                key = f"{name}_c{concurrency}"
                results[key] = await _measure(stream, concurrency, requests, args.max_tokens)
                print(f"round {round_no} {key}", json.dumps(results[key]), flush=True)
        rounds.append(results)
    return rounds


STORY_SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string"}},
    "required": ["story"],
}


def _constrained(stream: Stream) -> Stream:
    """The same requests, constrained to a `{"story": ...}` JSON object."""
    story = pb.ResponseFormat(
        type="json_schema",
        json_schema=pb.JsonSchema(name="story", schema=json.dumps(STORY_SCHEMA), strict=True),
    )

    def as_json(request: pb.ChatRequest) -> AsyncIterator[pb.ChatChunk]:
        constrained = pb.ChatRequest()
        constrained.CopyFrom(request)
        constrained.response_format.CopyFrom(story)
        return stream(constrained)

    return as_json


ROUTER_KEY = "bench-key-0123456789abcdef"


def _router_objects(grpc_port: int) -> list[dict[str, Any]]:
    """A tenant with a key, a cluster, and the ModelDeployment `APP` served at `grpc_port`."""
    import base64

    address = f"127.0.0.1:{grpc_port}"
    return [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "bench-key", "namespace": "keys"},
         "data": {"api-key": base64.b64encode(ROUTER_KEY.encode()).decode()}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "t"},
         "spec": {"namespaces": ["team"],
                  "apiKeySecretRefs": [{"namespace": "keys", "name": "bench-key"}]}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ComputeCluster",
         "metadata": {"name": "local"},
         "spec": {"cloud": "onprem", "region": "here", "connection": {"inCluster": True},
                  "ingress": {"grpcEndpoint": address, "tls": False}}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": APP, "namespace": "team"},
         "spec": {"model": {"name": "tiny", "source": "file:///m"},
                  "runtime": {"engine": "transformers"}},
         "status": {"phase": "Ready",
                    "clusters": [{"name": "local", "endpoint": address,
                                  "readyReplicas": 1, "desiredReplicas": 1}]}},
    ]  # fmt: skip


def _router_main(grpc_port: int, ready: Any, stop: Any) -> None:
    """The router's process: serve until `stop` is set, after putting its gRPC port on `ready`."""
    sys.path[:0] = [str(REPO / "workers"), str(REPO / "router")]
    from tramontane_router.server import Router, RouterSettings
    from tramontane_router.sources import StaticSource

    async def serve() -> None:
        router = Router(
            StaticSource(_router_objects(grpc_port)),
            RouterSettings(grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0",
                           drain_grace_s=1.0),
        )  # fmt: skip
        await router.start()
        ready.put(router.grpc_port)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await router.drain()

    asyncio.run(serve())


class RouterProcess:
    """The router in a spawned process, routing to the Serve gRPC proxy at `grpc_port`."""

    def __init__(self, grpc_port: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        ready, self._stop = ctx.Queue(), ctx.Event()
        self.proc = ctx.Process(
            target=_router_main, args=(grpc_port, ready, self._stop), name="router", daemon=True
        )
        self.proc.start()
        self.grpc_port: int = ready.get(timeout=60)

    def close(self) -> None:
        self._stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def _router_stream(router_port: int) -> tuple[Stream, Any]:
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router_port}")
    stub: Any = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
    metadata = (("authorization", f"Bearer {ROUTER_KEY}"),)

    def via_router(request: pb.ChatRequest) -> AsyncIterator[pb.ChatChunk]:
        return stub.ChatStream(request, metadata=metadata)  # type: ignore[no-any-return]

    return via_router, channel


def _serve_stream(grpc_port: int) -> tuple[Stream, Any]:
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub: Any = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]

    def via_serve(request: pb.ChatRequest) -> AsyncIterator[pb.ChatChunk]:
        return stub.ChatStream(request, metadata=(("application", SERVE_APP),))  # type: ignore[no-any-return]

    return via_serve, channel


async def _run_transformers(
    args: argparse.Namespace, model_dir: Path, grpc_port: int, router_port: int | None
) -> Rounds:
    """Reference engine in this process vs the Serve path, alternating in every round."""
    from tramontane_workers.chat.encode import ChatCodec
    from tramontane_workers.chat.service import ChatService
    from tramontane_workers.engines.reference import TransformersEngine
    from tramontane_workers.models.loading import find_tokenizer

    engine = TransformersEngine(model_dir, max_batch_size=8)
    service = ChatService(
        engine, ChatCodec(find_tokenizer(model_dir), max_model_len=engine.max_model_len)
    )
    via_serve, channel = _serve_stream(grpc_port)
    paths = {"direct": service.stream, "path": via_serve}
    channels = [channel]
    if router_port is not None:
        via_router, routed = _router_stream(router_port)
        paths["e2e"] = via_router
        channels.append(routed)
    if args.json:
        paths["json"] = _constrained(service.stream)
    rounds = await _rounds(args, paths)
    for ch in channels:
        await ch.close()
    await engine.shutdown()
    return rounds


async def _plain_vllm_rounds(args: argparse.Namespace, model_dir: Path) -> Rounds:
    """Plain vLLM (same engine arguments, its own detokeniser) on the same prompt tokens.

    One GPU cannot hold this engine and the Serve replica's at once, so this runs all its
    rounds first and shuts down; the Serve path's rounds follow.
    """
    import itertools

    from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
    from vllm.inputs import TokensPrompt

    from tramontane_workers.chat.encode import ChatCodec
    from tramontane_workers.engines.vllm_engine import engine_args
    from tramontane_workers.models.loading import detect_format, find_tokenizer

    kwargs = engine_args(
        model_dir,
        checkpoint_format=detect_format(model_dir),
        served_model_name="tiny",
        dtype="auto",
        max_model_len=None,
        tensor_parallel_size=1,
        max_loras=4,
    )
    engine: Any = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**kwargs))
    codec = ChatCodec(
        find_tokenizer(model_dir), max_model_len=int(engine.model_config.max_model_len)
    )
    ids = itertools.count()

    async def plain(request: pb.ChatRequest) -> AsyncIterator[pb.ChatChunk]:
        encoded = codec.encode(request)
        params = SamplingParams(max_tokens=encoded.sampling.max_tokens, temperature=0.0)
        seen = ""
        prompt = TokensPrompt(prompt_token_ids=encoded.prompt_tokens)
        async for out in engine.generate(prompt, params, f"plain-{next(ids)}"):
            done = out.outputs[0]
            delta, seen = done.text[len(seen) :], done.text
            choice = pb.ChunkChoice(
                delta=pb.DeltaMessage(content=delta), finish_reason=done.finish_reason or ""
            )
            yield pb.ChatChunk(
                choices=[choice], usage=pb.Usage(completion_tokens=len(done.token_ids))
            )

    try:
        return await _rounds(args, {"direct": plain})
    finally:
        engine.shutdown()


async def _serve_rounds(
    args: argparse.Namespace, grpc_port: int, router_port: int | None
) -> Rounds:
    via_serve, channel = _serve_stream(grpc_port)
    paths = {"path": via_serve}
    channels = [channel]
    if router_port is not None:
        via_router, routed = _router_stream(router_port)
        paths["e2e"] = via_router
        channels.append(routed)
    rounds = await _rounds(args, paths)
    for ch in channels:
        await ch.close()
    return rounds


def _figures(rounds: Rounds) -> dict[str, Any]:
    """Medians over rounds; ratios are the median of per-round ratios (pure)."""

    def median(values: list[float]) -> float:
        return statistics.median(values)

    figures: dict[str, Any] = {"bench": "serve_overhead"}
    for key in rounds[0]:
        figures[f"{key}_tokens_per_s"] = round(median([r[key]["tokens_per_s"] for r in rounds]), 1)
        figures[f"{key}_ttft_p50_ms"] = round(median([r[key]["ttft_p50_ms"] for r in rounds]), 2)
        answers = [r[key]["tokens_per_answer"] for r in rounds]
        figures[f"{key}_tokens_per_answer"] = round(statistics.mean(answers), 1)
    for c in (1, 8):
        for path, prefix in (("path", ""), ("e2e", "e2e_"), ("json", "json_")):
            if f"{path}_c{c}" not in rounds[0]:
                continue
            ratios = [
                r[f"{path}_c{c}"]["tokens_per_s"] / r[f"direct_c{c}"]["tokens_per_s"]
                for r in rounds
            ]
            figures[f"{prefix}throughput_ratio_c{c}"] = round(median(ratios), 3)
    added = [r["path_c1"]["ttft_p50_ms"] - r["direct_c1"]["ttft_p50_ms"] for r in rounds]
    figures["ttft_added_ms_c1"] = round(median(added), 2)
    if "e2e_c1" in rounds[0]:
        added = [r["e2e_c1"]["ttft_p50_ms"] - r["direct_c1"]["ttft_p50_ms"] for r in rounds]
        figures["e2e_ttft_added_ms_c1"] = round(median(added), 2)
    figures["rounds"] = len(rounds)
    return figures


def _app_config(args: argparse.Namespace, model_dir: Path) -> ServeAppConfig:
    gpu = args.engine == "vllm"
    return ServeAppConfig(
        name=SERVE_APP,
        route_prefix="/bench",
        engine=EngineConfig(
            engine=args.engine, model_uri=f"file://{model_dir}", served_model_name="tiny"
        ),
        autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=1),
        resources=ReplicaResources(num_cpus=args.threads, num_gpus=1.0 if gpu else 0.0),
        max_ongoing_requests=16,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--engine",
        choices=("transformers", "vllm"),
        default="transformers",
        help="vllm (GPU): the Serve path with the vLLM engine against plain vLLM",
    )
    parser.add_argument("--model-dir", type=Path, help="a local checkpoint (default: tiny)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="also time JSON-constrained requests (json_object) against free ones, direct path",
    )
    parser.add_argument(
        "--no-router", action="store_true", help="skip the whole path through the router (e2e)"
    )
    args = parser.parse_args()
    if args.json and args.engine == "vllm":
        parser.error("--json compares constrained decoding in the reference engine only")
    args.max_tokens = 32 if args.quick else 64
    args.requests_c1 = 3 if args.quick else 8
    args.requests_c8 = 1 if args.quick else 3
    args.rounds = 3 if args.quick else 5
    if args.engine == "vllm":
        from tramontane_workers.engines.vllm_engine import vllm_unavailable_reason

        reason = vllm_unavailable_reason()
        if reason is not None:
            raise SystemExit(f"serve_overhead: {reason}")

    import ray
    import torch

    from tramontane_workers.models.tiny import write_tiny_mistral
    from tramontane_workers.serve.local import free_port, run_local

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        # hidden 256: a head size of 64, which vLLM's attention kernels support
        model_dir = args.model_dir or write_tiny_mistral(
            Path(tmp) / "tiny", hidden_size=256 if args.engine == "vllm" else 64
        )
        direct: Rounds = []
        if args.engine == "vllm":
            direct = asyncio.run(_plain_vllm_rounds(args, model_dir))
        # Ray starts its workers (the replica, the proxy) at nice 15; on a shared machine that
        # would time the path against other tenants while the in-process baseline runs at 0.
        ray.init(
            num_cpus=max(4, args.threads),
            include_dashboard=False,
            log_to_driver=False,
            _system_config={"worker_niceness": 0},
        )
        grpc_port = free_port()
        run_local([_app_config(args, model_dir)], grpc_port=grpc_port, http_port=free_port())
        router = None if args.no_router else RouterProcess(grpc_port)
        router_port = None if router is None else router.grpc_port
        try:
            if args.engine == "vllm":
                path = asyncio.run(_serve_rounds(args, grpc_port, router_port))
                rounds = [{**d, **p} for d, p in zip(direct, path, strict=True)]
            else:
                rounds = asyncio.run(_run_transformers(args, model_dir, grpc_port, router_port))
        finally:
            if router is not None:
                router.close()
            ray.shutdown()
    figures = _figures(rounds)
    figures.update(engine=args.engine, threads=args.threads, max_tokens=args.max_tokens)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
