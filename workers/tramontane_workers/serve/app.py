"""The Ray Serve application built from `ServeAppConfig` (the `import_path` of serveConfigV2).

One deployment, `MistralServer`, is both the gRPC ingress (its methods are the RPCs of
`tramontane.v1.Inference`, served by Ray Serve's gRPC proxy) and the engine, so a request goes
proxy -> replica with no extra hop. LoRA adapters are Serve-multiplexed: the gRPC metadata
`multiplexed_model_id` routes to a replica that has the adapter; on the replica an LRU bounded
by `max_adapters_per_replica` loads on first use and unloads the least recently used.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc
from ray import serve
from ray.serve import Application

from tramontane_workers.chat.service import ChatService
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract.serve_config import DEPLOYMENT_NAME, ServeAppConfig
from tramontane_workers.engines.factory import build_engine, resolve_adapter_dir
from tramontane_workers.errors import AdapterUnavailable, NotFound, WorkerError
from tramontane_workers.serve.batching import batch_stream

log = logging.getLogger(__name__)


class _LoadedAdapter:
    """What the multiplexer caches; Serve calls `__del__` when the LRU evicts it."""

    def __init__(self, server: MistralServer, name: str) -> None:
        self._server, self.name, self._released = server, name, False

    def __del__(self) -> None:
        if not self._released:
            self._released = True
            self._server.release_adapter(self.name)


class MistralServer:
    """gRPC servicer of `tramontane.v1.Inference` over one engine (one model + adapters)."""

    def __init__(self, config_args: dict[str, Any]) -> None:
        self.config = ServeAppConfig.from_serve_args(config_args)
        engine_config = self.config.engine
        self.served_name = engine_config.served_model_name
        self.adapter_uris = {a.name: a.uri for a in engine_config.adapters}
        self.engine, codec = build_engine(engine_config)
        self.chat = ChatService(self.engine, codec)
        self.max_adapters = engine_config.max_adapters_per_replica
        self._recent: OrderedDict[str, None] = OrderedDict()  # adapters, least recent first
        self._loop: asyncio.AbstractEventLoop | None = None

        async def load(name: str) -> _LoadedAdapter:  # a plain function: Serve caches on it
            return await self._load_adapter(name)

        self._get_adapter: Callable[[str], Awaitable[_LoadedAdapter]] = serve.multiplexed(
            max_num_models_per_replica=self.max_adapters
        )(load)

    # --------------------------------------------------------------------------- adapters
    async def _load_adapter(self, name: str) -> _LoadedAdapter:
        self._loop = asyncio.get_running_loop()
        path = await asyncio.to_thread(resolve_adapter_dir, self.adapter_uris[name])
        await self.engine.add_adapter(name, path)
        log.info("adapter %s loaded from %s", name, path)
        return _LoadedAdapter(self, name)

    def release_adapter(self, name: str) -> None:
        """Unload an evicted adapter (called from Serve's LRU, possibly in another thread)."""
        self._recent.pop(name, None)
        if self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.engine.remove_adapter(name), self._loop)

    async def _resolve(self, model: str) -> str | None:
        """The adapter a request's model names (None for the base), loaded; or NotFound."""
        name = model or serve.get_multiplexed_model_id() or self.served_name
        if name == self.served_name:
            return None
        if name not in self.adapter_uris:
            known = ", ".join([self.served_name, *sorted(self.adapter_uris)])
            raise NotFound(f"model: {name!r} is not served by this application (serves {known})")
        try:
            await self._get_adapter(name)
        except WorkerError:
            raise
        except Exception as exc:  # storage errors and the like: the adapter, not the replica
            raise AdapterUnavailable(f"adapter {name!r}: {exc}") from exc
        self._recent.pop(name, None)
        self._recent[name] = None
        return name

    # ------------------------------------------------------------------------------- RPCs
    async def Chat(self, request: pb.ChatRequest, grpc_context: Any = None) -> pb.ChatResponse:
        try:
            return await self.chat.complete(request, await self._resolve(request.model))
        except WorkerError as exc:
            raise _status(grpc_context, exc) from exc

    async def ChatStream(
        self, request: pb.ChatRequest, grpc_context: Any = None
    ) -> AsyncGenerator[pb.ChatChunk, None]:
        try:
            adapter = await self._resolve(request.model)
            async for chunk in batch_stream(self.chat.stream(request, adapter)):
                yield chunk
        except WorkerError as exc:
            raise _status(grpc_context, exc) from exc

    async def ListModels(
        self, request: pb.ListModelsRequest, grpc_context: Any = None
    ) -> pb.ListModelsResponse:
        context_len = self.engine.max_model_len
        cards = [
            pb.ModelCard(
                id=self.served_name,
                object="model",
                owned_by="tramontane",
                root=self.served_name,
                kind="base",
                max_context_length=context_len,
                loaded=True,
            )
        ]
        loaded = self.engine.loaded_adapters()
        cards += [
            pb.ModelCard(
                id=name,
                object="model",
                owned_by="tramontane",
                root=self.served_name,
                kind="adapter",
                max_context_length=context_len,
                loaded=name in loaded,
            )
            for name in sorted(self.adapter_uris)
        ]
        return pb.ListModelsResponse(object="list", data=cards)

    async def GetStats(
        self, request: pb.GetStatsRequest, grpc_context: Any = None
    ) -> pb.GetStatsResponse:
        stats = self.engine.stats()
        loaded = self.engine.loaded_adapters()
        return pb.GetStatsResponse(
            replica_id=serve.get_replica_context().replica_id.unique_id,
            model=self.served_name,
            queue_depth=stats.waiting,
            running_requests=stats.running,
            loaded_adapters=[n for n in self._recent if n in loaded],
            max_adapters=self.max_adapters,
            max_batch_size=stats.max_batch_size,
        )


def _status(grpc_context: Any, exc: WorkerError) -> WorkerError:
    """Put the error's status code and message on the gRPC context (Serve relays both)."""
    if grpc_context is not None:
        grpc_context.set_code(getattr(grpc.StatusCode, exc.grpc_code))
        grpc_context.set_details(str(exc))
    return exc


def build_app(args: dict[str, Any]) -> Application:
    """Serve app builder: the `args` are `ServeAppConfig.to_serve_args()`."""
    config = ServeAppConfig.from_serve_args(args)
    deployment: Any = serve.deployment(
        name=DEPLOYMENT_NAME,
        max_ongoing_requests=config.max_ongoing_requests,
        autoscaling_config=config.autoscaling.to_ray(),
        ray_actor_options=config.resources.to_ray(),
    )(MistralServer)
    app: Application = deployment.bind(config.to_serve_args())
    return app
