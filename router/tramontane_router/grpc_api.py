"""The gRPC front: `tramontane.v1.Inference` as a thin servicer over the data plane, plus the
standard health service and server reflection.

Auth is the `authorization` metadata (`Bearer <key>`); the caller's deadline becomes the
request's; cancelling the call cancels the worker call. `ErrorInterceptor` turns every
`RouterError` into its status code and message, and anything unexpected into INTERNAL with a
logged traceback the caller never sees. `GetStats` is the workers' business: the router
answers UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc

from .dataplane import DataPlane
from .errors import RouterError
from .keys import bearer_key
from .observability import parent_context
from .table import TenantView

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def _tenant(self, metadata: dict[str, str]) -> TenantView:
        return self.plane.authenticate(bearer_key(metadata.get("authorization")))

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ChatResponse:
        metadata = _metadata(context)
        tenant = self._tenant(metadata)
        return await self.plane.chat(
            tenant, request, timeout_s=context.time_remaining(), parent=parent_context(metadata)
        )

    async def ChatStream(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ChatChunk]:
        metadata = _metadata(context)
        tenant = self._tenant(metadata)
        chunks = self.plane.chat_stream(
            tenant, request, timeout_s=context.time_remaining(), parent=parent_context(metadata)
        )
        async for chunk in chunks:
            yield chunk

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        return self.plane.list_models(self._tenant(_metadata(context)))

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetStatsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetStats is served by the workers")
        raise AssertionError("unreachable")  # pragma: no cover - abort raises


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, RouterError):
        if exc.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", str(max(1, round(exc.retry_after_s)))),))
        await context.abort(exc.grpc_code, exc.message)
    log.exception("unexpected error in a gRPC call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error in the router")


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps exceptions raised by our handlers to gRPC statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = getattr(handler_call_details, "method", "") or ""
        if handler is None or not method.startswith(f"/{SERVICE}/"):
            return handler
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await inner_unary(request, context)
                except (RouterError, Exception) as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except (RouterError, Exception) as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await _abort(context, exc)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def build_server(
    plane: DataPlane, *, max_message_bytes: int, options: list[tuple[str, Any]] | None = None
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The grpc.aio server with the inference, health and reflection services (no port yet)."""
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            *(options or []),
        ],
    )
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(plane), server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )  # fmt: skip
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE):
        await health_servicer.set(name, status)
