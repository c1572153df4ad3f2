"""The Serve application end to end: real Ray, real Serve, real gRPC proxy, tiny model.

Serve starts once for the module; the application is built from the `args` that
`render_serve_config_v2` renders (what KubeRay hands Ray Serve).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc
from tramontane_workers.contract.serve_config import (
    AdapterSource,
    AutoscalingConfig,
    EngineConfig,
    ReplicaResources,
    ServeAppConfig,
)

APP = "team.tiny-app"  # the Serve application of ModelDeployment team/tiny-app
METADATA = (("application", APP),)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_port(
    ray_session: Any, tiny_model_dir: Path, tiny_adapters: dict[str, Path]
) -> Iterator[int]:
    """The port of Serve's gRPC proxy with the tiny application running behind it."""
    from ray import serve

    from tramontane_workers.serve.local import free_port, run_local

    config = ServeAppConfig(
        name=APP,
        route_prefix="/tiny",
        engine=EngineConfig(
            engine="transformers",
            model_uri=f"file://{tiny_model_dir}",
            served_model_name="tiny",
            max_adapters_per_replica=2,
            adapters=[AdapterSource(name=n, uri=f"file://{p}") for n, p in tiny_adapters.items()],
        ),
        autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=1),
        resources=ReplicaResources(num_cpus=1),
    )
    port = free_port()
    run_local([config], grpc_port=port, http_port=free_port())
    yield port
    serve.delete(APP)


@pytest.fixture(scope="module")
def stub(serve_port: int) -> Iterator[pb_grpc.InferenceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_port}")
    yield pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
    channel.close()


def _request(model: str = "tiny", content: str = "Hello there", **kw: Any) -> pb.ChatRequest:
    return pb.ChatRequest(model=model, messages=[pb.Message(role="user", content=content)], **kw)


def _json_schema(schema: dict[str, Any]) -> pb.ResponseFormat:
    return pb.ResponseFormat(
        type="json_schema",
        json_schema=pb.JsonSchema(name="answer", schema=json.dumps(schema), strict=True),
    )


# Bounded (short string, small integer, whitespace bounded by the grammar): closes well within
# max_tokens whatever the seed, although the tiny model's weights are random.
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "population": {"type": "integer", "minimum": 0, "maximum": 999},
    },
    "required": ["city", "population"],
}


def test_unary_chat_has_text_and_usage(stub: pb_grpc.InferenceStub) -> None:
    response = stub.Chat(_request(max_tokens=8, random_seed=1), metadata=METADATA)
    (choice,) = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + 8


def test_stream_equals_unary_for_same_seed(stub: pb_grpc.InferenceStub) -> None:
    request = _request(max_tokens=24, random_seed=7, temperature=0.9, top_p=0.95)
    unary = stub.Chat(request, metadata=METADATA)
    chunks = list(stub.ChatStream(request, metadata=METADATA))
    assert len(chunks) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.HasField("usage") and c.usage.prompt_tokens > 0 for c in chunks)
    streamed = "".join(c.choices[0].delta.content for c in chunks)
    assert streamed == unary.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == unary.choices[0].finish_reason
    assert chunks[-1].usage == unary.usage


def test_json_schema_answer_over_grpc(stub: pb_grpc.InferenceStub) -> None:
    request = _request(
        max_tokens=300, random_seed=5, temperature=1.0, response_format=_json_schema(CITY)
    )
    unary = stub.Chat(request, metadata=METADATA)
    (choice,) = unary.choices
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), CITY)
    chunks = list(stub.ChatStream(request, metadata=METADATA))
    assert "".join(c.choices[0].delta.content for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage == unary.usage


def test_adapter_routing_changes_output(stub: pb_grpc.InferenceStub) -> None:
    def greedy(model: str, metadata: tuple[tuple[str, str], ...] = METADATA) -> str:
        reply = stub.Chat(_request(model, max_tokens=12, temperature=0.0), metadata=metadata)
        return str(reply.choices[0].message.content)

    base, alpha, beta = greedy("tiny"), greedy("alpha"), greedy("beta")
    assert len({base, alpha, beta}) == 3
    assert greedy("alpha") == alpha
    by_metadata = greedy("", (*METADATA, ("multiplexed_model_id", "beta")))
    assert by_metadata == beta


def test_lru_evicts_least_recently_used(stub: pb_grpc.InferenceStub) -> None:
    for name in ("alpha", "beta", "gamma"):
        stub.Chat(_request(name, max_tokens=1), metadata=METADATA)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the eviction's unload completes asynchronously
        stats = stub.GetStats(pb.GetStatsRequest(), metadata=METADATA)
        if list(stats.loaded_adapters) == ["beta", "gamma"]:
            break
        time.sleep(0.2)
    assert list(stats.loaded_adapters) == ["beta", "gamma"]
    assert stats.max_adapters == 2
    cards = {c.id: c for c in stub.ListModels(pb.ListModelsRequest(), metadata=METADATA).data}
    assert cards["tiny"].kind == "base"
    assert not cards["alpha"].loaded and cards["gamma"].loaded
    # alpha comes back on demand, evicting beta
    stub.Chat(_request("alpha", max_tokens=1), metadata=METADATA)
    stats = stub.GetStats(pb.GetStatsRequest(), metadata=METADATA)
    assert list(stats.loaded_adapters) == ["gamma", "alpha"]


def test_unknown_adapter_is_not_found(stub: pb_grpc.InferenceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Chat(_request("no-such-adapter"), metadata=METADATA)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-adapter" in err.value.details()


def test_broken_adapter_fails_clearly_and_replica_survives(stub: pb_grpc.InferenceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Chat(_request("broken", max_tokens=2), metadata=METADATA)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "adapter 'broken'" in err.value.details()
    assert "no_such_proj" in err.value.details()
    after = stub.Chat(_request(max_tokens=2), metadata=METADATA)
    assert after.usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.ChatRequest(model="tiny"), "messages: must not be empty"),
        (
            pb.ChatRequest(model="tiny", messages=[pb.Message(role="assistant", content="hi")]),
            "messages: ",
        ),
        (
            pb.ChatRequest(model="tiny", messages=[pb.Message(role="bot", content="hi")]),
            "messages[0].role",
        ),
        (_request(content="word " * 2100), "longer than the model's context"),
        (
            _request(
                tools=[
                    pb.Tool(
                        type="function", function=pb.Function(name="f", parameters='{"type": 5}')
                    )
                ]
            ),
            "tools",
        ),
        (_request(temperature=3.0), "temperature"),
        (
            _request(
                response_format=pb.ResponseFormat(
                    type="json_schema", json_schema=pb.JsonSchema(name="a", schema="[1]")
                )
            ),
            "response_format.json_schema.schema: must be a JSON object",
        ),
        (
            _request(response_format=_json_schema({"type": "string", "pattern": "(?<=a)b"})),
            "response_format.json_schema: not supported for constrained decoding",
        ),
    ],
    ids=[
        "empty",
        "role-order",
        "bad-role",
        "too-long",
        "bad-tool-schema",
        "temperature",
        "json-schema-not-object",
        "json-schema-unsupported",
    ],
)
def test_bad_requests_are_invalid_argument(
    stub: pb_grpc.InferenceStub, request_: pb.ChatRequest, needle: str
) -> None:
    for call in (stub.Chat, lambda r, metadata: list(stub.ChatStream(r, metadata=metadata))):
        with pytest.raises(grpc.RpcError) as err:
            call(request_, metadata=METADATA)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(needle) or needle in err.value.details()


def test_cancelled_stream_frees_the_replica(stub: pb_grpc.InferenceStub) -> None:
    stream = stub.ChatStream(_request(max_tokens=1800, temperature=0.0), metadata=METADATA)
    assert next(stream).choices[0].delta.content is not None
    next(stream)
    running = stub.GetStats(pb.GetStatsRequest(), metadata=METADATA).running_requests
    assert running == 1
    stream.cancel()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = stub.GetStats(pb.GetStatsRequest(), metadata=METADATA)
        if stats.running_requests == 0 and stats.queue_depth == 0:
            break
        time.sleep(0.1)
    assert (stats.running_requests, stats.queue_depth) == (0, 0)
    assert stub.Chat(_request(max_tokens=3), metadata=METADATA).usage.completion_tokens == 3


def test_router_path_through_real_serve(serve_port: int) -> None:
    """Client -> router (HTTP with the openai SDK, and gRPC) -> Serve's gRPC proxy -> the tiny
    model: the router's answers equal Serve's own, for the base model and an adapter."""
    import asyncio
    import base64

    import openai

    from tramontane_router.server import Router, RouterSettings
    from tramontane_router.sources import StaticSource

    key = "serve-path-key-0123456789"
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "k", "namespace": "keys"},
         "data": {"api-key": base64.b64encode(key.encode()).decode()}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "t"},
         "spec": {"namespaces": ["team"],
                  "apiKeySecretRefs": [{"namespace": "keys", "name": "k"}]}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ComputeCluster",
         "metadata": {"name": "local"},
         "spec": {"cloud": "onprem", "region": "here", "connection": {"inCluster": True},
                  "ingress": {"grpcEndpoint": f"127.0.0.1:{serve_port}", "tls": False}}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "tiny-app", "namespace": "team"},
         "spec": {"model": {"name": "tiny", "source": "file:///m"},
                  "runtime": {"engine": "transformers"}},
         "status": {"adapters": ["alpha", "beta"],
                    "clusters": [{"name": "local", "endpoint": f"127.0.0.1:{serve_port}",
                                  "readyReplicas": 1}]}},
    ]  # fmt: skip

    direct = grpc.insecure_channel(f"127.0.0.1:{serve_port}")
    direct_stub = pb_grpc.InferenceStub(direct)  # type: ignore[no-untyped-call]

    def serve_answer(model: str, metadata: tuple[tuple[str, str], ...]) -> str:
        reply = direct_stub.Chat(_request(model, max_tokens=10, temperature=0.0), metadata=metadata)
        return str(reply.choices[0].message.content)

    expected_base = serve_answer("tiny", METADATA)
    expected_alpha = serve_answer("alpha", (*METADATA, ("multiplexed_model_id", "alpha")))
    direct.close()
    assert expected_base != expected_alpha

    async def through_router() -> tuple[str, str, str]:
        router = Router(
            StaticSource(objects),
            RouterSettings(grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0",
                           stats_interval_s=0),
        )  # fmt: skip
        await router.start()
        try:
            client = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key=key, max_retries=0
            )
            base = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hello there"}],
                max_tokens=10, temperature=0.0,
            )  # fmt: skip
            stream = await client.chat.completions.create(
                model="tiny:alpha", messages=[{"role": "user", "content": "Hello there"}],
                max_tokens=10, temperature=0.0, stream=True,
            )  # fmt: skip
            alpha = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
                stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
                reply = await stub.Chat(
                    _request("tiny:alpha", max_tokens=10, temperature=0.0),
                    metadata=(("authorization", f"Bearer {key}"),),
                )
            return str(base.choices[0].message.content), alpha, reply.choices[0].message.content
        finally:
            await router.drain()

    base, alpha_http, alpha_grpc = asyncio.run(through_router())
    assert base == expected_base
    assert alpha_http == alpha_grpc == expected_alpha
