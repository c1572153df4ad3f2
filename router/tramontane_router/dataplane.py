"""The data plane both fronts share: auth -> resolve model -> limits -> pick endpoint -> call ->
usage. The gRPC servicer and the HTTP API are thin translations onto `DataPlane`.

Adapter versions (`canary.py`): an adapter with published versions is called by the version
chosen by weight; an attempt that fails on a canary version with an endpoint fault before any
token reached the caller is retried once on the stable version, at the same endpoint; one that
a pool answers NOT_FOUND for (a pool still on a Serve config from before versions: an
operator upgrade) is retried once there under the bare adapter name.

Failover: an attempt that fails with UNAVAILABLE (which is also what gRPC reports for a
connection that cannot be made) before any token reached the caller is retried once, on
another member cluster, within the caller's deadline. A stream that has sent a token is never
retried. Deadlines propagate: each attempt gets the time the caller has left. Cancellation
propagates: the caller's task is cancelled (gRPC cancel, HTTP disconnect), which cancels the
worker call at once.

Limits (`Limits`) sit between resolving the model and picking an endpoint: `admit` may wait
or raise `RateLimited`, and the permit it returns is settled with the real usage however the
request ends. `NoLimits` admits everything; the per-tenant limits plug in here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tramontane_workers.contract import inference_pb2 as pb

from . import observability as obs
from .backends import Backends
from .balancer import Balancer
from .canary import Canaries
from .errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    RouterError,
    Unauthenticated,
    Unavailable,
    from_upstream,
)
from .limits.queues import ModelQueues, Slot
from .sources import RoutingSource
from .table import Endpoint, Route, TenantView, Version
from .usage import UsageLog

log = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant", "tool"})
TENANT_METADATA = "x-tramontane-tenant"
PROBE_METADATA = "x-tramontane-probe"  # system traffic: an online check
# The model label of requests that named no model of theirs: a label per name a client
# invents would make the metrics' series unbounded.
UNRESOLVED = "-"
_RETRIABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# Codes that say the endpoint, not the request, is at fault (outlier detection counts them).
_ENDPOINT_FAULTS = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)


class Permit(Protocol):
    def settle(self, usage: pb.Usage | None) -> None:
        """The request ended with this usage (None: it never reached a worker)."""


class Limits(Protocol):
    async def admit(
        self, tenant: TenantView, route: Route, request: pb.ChatRequest, deadline: float
    ) -> Permit:
        """Admit the request (perhaps after waiting until `deadline`), or raise
        `RateLimited` naming the limit. A permit with a `reserved` attribute (tokens) gives
        the fair queue the request's cost."""


class _NoPermit:
    def settle(self, usage: pb.Usage | None) -> None:
        return None


class NoLimits:
    async def admit(
        self, tenant: TenantView, route: Route, request: pb.ChatRequest, deadline: float
    ) -> Permit:
        return _NoPermit()


@dataclass
class _Serving:
    """What one request's bookkeeping needs to know as it goes."""

    started: float
    deadline: float
    span: trace.Span
    route: Route | None = None
    usage: pb.Usage | None = None  # the latest the worker reported (streams: running totals)
    first_chunk_s: float | None = None

    @property
    def resolved(self) -> Route:
        if self.route is None:  # pragma: no cover - set before the caller's block runs
            raise RuntimeError("no route yet")
        return self.route


@dataclass
class _Attempt:
    endpoint: Endpoint
    upstream: pb.ChatRequest
    metadata: list[tuple[str, str]]
    timeout_s: float
    ok: bool | None = None  # for the balancer: None says nothing of the endpoint
    version: Version | None = None  # the adapter version asked for (None: unversioned)
    fallback: Version | None = None  # where to retry a failure on a canary version
    retry_fallback: bool = False  # set when it failed on the canary: retry on `fallback`
    retry_bare: bool = False  # the versioned name was unknown there: retry the bare name
    failed: bool | None = None  # for the version's figures: None records nothing
    started: float = field(default_factory=time.monotonic)
    first_byte_s: float | None = None


@dataclass(frozen=True)
class DataPlaneSettings:
    max_messages: int = 1024
    request_timeout_s: float = 600.0  # when the caller sets no deadline
    attempts: int = 2  # the first try and one failover
    slots_per_replica: int = 16  # requests a ready replica takes before the router queues
    max_waiting: int = 1024  # per model; beyond, 429 at once


def validate(request: pb.ChatRequest, max_messages: int) -> None:
    """What the router checks itself (the worker checks the rest, naming the field)."""
    if not request.model:
        raise InvalidRequest("model: required", param="model")
    if not request.messages:
        raise InvalidRequest("messages: at least one message is required", param="messages")
    if len(request.messages) > max_messages:
        raise InvalidRequest(
            f"messages: {len(request.messages)} messages; at most {max_messages} are accepted",
            param="messages",
        )
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise InvalidRequest(
                f"messages.{i}.role: {message.role!r} is not one of {', '.join(sorted(ROLES))}",
                param=f"messages.{i}.role",
            )
    if request.HasField("max_tokens") and request.max_tokens < 1:
        raise InvalidRequest("max_tokens: must be at least 1", param="max_tokens")


class DataPlane:
    def __init__(
        self,
        source: RoutingSource,
        backends: Backends,
        balancer: Balancer,
        usage: UsageLog,
        *,
        limits: Limits | None = None,
        settings: DataPlaneSettings | None = None,
    ) -> None:
        self.source = source
        self.backends = backends
        self.balancer = balancer
        self.usage = usage
        self.limits: Limits = limits or NoLimits()
        self.settings = settings or DataPlaneSettings()
        self.queues = ModelQueues(
            slots_per_replica=self.settings.slots_per_replica,
            max_waiting=self.settings.max_waiting,
        )
        self.canaries = Canaries()
        self.draining = False
        balancer.on_eject = lambda e, _s: obs.EJECTIONS.labels(e.cluster).inc()

    # ------------------------------------------------------------------------------ auth
    def authenticate(self, key: str | None) -> TenantView:
        if not key:
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' (HTTP) or "
                "'authorization' metadata (gRPC)"
            )
        tenant = self.source.table.tenant(key)
        if tenant is None:
            raise Unauthenticated("invalid API key")
        return tenant

    def list_models(self, tenant: TenantView) -> pb.ListModelsResponse:
        cards = [
            pb.ModelCard(
                id=m.id,
                object="model",
                owned_by=tenant.name,
                root=m.root,
                kind=m.kind,
                max_context_length=m.max_model_len or 0,
                loaded=m.ready,
            )
            for m in self.source.table.models(tenant)
        ]
        return pb.ListModelsResponse(object="list", data=cards)

    # ------------------------------------------------------------------------------ chat
    def _deadline(self, timeout_s: float | None) -> float:
        limit = self.settings.request_timeout_s
        return time.monotonic() + (min(timeout_s, limit) if timeout_s is not None else limit)

    def _prepare(self, tenant: TenantView, request: pb.ChatRequest) -> Route:
        if self.draining:
            raise Unavailable("the router is shutting down; retry", retry_after_s=1)
        validate(request, self.settings.max_messages)
        return self.source.table.resolve(tenant, request.model)

    def _upstream(
        self,
        route: Route,
        endpoint: Endpoint,
        request: pb.ChatRequest,
        span: trace.Span,
        version: Version | None = None,
    ) -> tuple[pb.ChatRequest, list[tuple[str, str]]]:
        upstream = pb.ChatRequest()
        upstream.CopyFrom(request)
        adapter = version.served_as if version is not None else route.adapter
        upstream.model = adapter or route.model
        metadata = [("application", endpoint.application), (TENANT_METADATA, route.tenant)]
        if adapter:
            metadata.append(("multiplexed_model_id", adapter))
        return upstream, metadata + obs.trace_metadata(span)

    def _version(self, route: Route, endpoint: Endpoint) -> tuple[Version | None, Version | None]:
        """The adapter version for an attempt at `endpoint`, and its fallback."""
        versions = route.versions.get(endpoint.application)
        if versions is None:
            return None, None
        return self.canaries.choose(endpoint.application, versions)

    def _span(
        self, tenant: TenantView, request: pb.ChatRequest, parent: otel_context.Context | None
    ) -> trace.Span:
        span = obs.tracer.start_span(f"chat {request.model}", context=parent, kind=SpanKind.SERVER)
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.provider.name", obs.PROVIDER)
        span.set_attribute("gen_ai.request.model", request.model)
        span.set_attribute("tramontane.tenant", tenant.name)
        if request.HasField("max_tokens"):
            span.set_attribute("gen_ai.request.max_tokens", request.max_tokens)
        if request.HasField("temperature"):
            span.set_attribute("gen_ai.request.temperature", request.temperature)
        return span

    @contextlib.asynccontextmanager
    async def _serving(
        self,
        tenant: TenantView,
        request: pb.ChatRequest,
        timeout_s: float | None,
        parent: otel_context.Context | None,
    ) -> AsyncIterator[_Serving]:
        """One request's bookkeeping, for unary and streamed calls alike: resolve the model,
        the tenant's limits and a fair slot, then, however the request ends, release the
        slot, record and settle what it used, count it and end its span."""
        call = _Serving(time.monotonic(), self._deadline(timeout_s),
                        self._span(tenant, request, parent))  # fmt: skip
        code, model = "OK", UNRESOLVED
        permit: Permit | None = None
        slot: Slot | None = None
        try:
            call.route = self._prepare(tenant, request)
            model = call.route.model_id
            obs.IN_FLIGHT.labels(tenant.name, model).inc()
            try:
                permit, slot = await self._admit(tenant, call.route, request, call.deadline)
                yield call
            finally:
                obs.IN_FLIGHT.labels(tenant.name, model).dec()
        except BaseException as exc:
            code = _fail(call.span, exc)
            raise
        finally:
            if slot is not None:
                self.queues.release(slot, call.usage)
            if call.route is not None and call.usage is not None:
                self._record(tenant, call.route, call.usage, call.span)
            if permit is not None:
                permit.settle(call.usage)
            if call.first_chunk_s is not None:
                obs.TTFT.labels(tenant.name, model).observe(call.first_chunk_s)
            obs.REQUESTS.labels(tenant.name, model, code).inc()
            obs.DURATION.labels(tenant.name, model).observe(time.monotonic() - call.started)
            call.span.end()

    async def chat(
        self,
        tenant: TenantView,
        request: pb.ChatRequest,
        *,
        timeout_s: float | None = None,
        parent: otel_context.Context | None = None,
    ) -> pb.ChatResponse:
        async with self._serving(tenant, request, timeout_s, parent) as call:
            route = call.resolved
            response = await self._unary(route, request, call.deadline, call.span)
            call.usage = response.usage
            call.span.set_attribute("gen_ai.response.model", route.model_id)
            response.model = route.model_id
            return response
        raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises

    async def _admit(
        self, tenant: TenantView, route: Route, request: pb.ChatRequest, deadline: float
    ) -> tuple[Permit, Slot]:
        """The tenant's limits, then a slot of the model's pools (perhaps after a fair wait);
        a permit whose slot never comes is settled with nothing used."""
        permit = await self.limits.admit(tenant, route, request, deadline)
        try:
            slot = await self.queues.acquire(
                tenant, route, request, getattr(permit, "reserved", None), deadline
            )
        except BaseException:
            permit.settle(None)
            raise
        return permit, slot

    def _attempts(
        self, route: Route, request: pb.ChatRequest, deadline: float, span: trace.Span
    ) -> Iterator[_Attempt]:
        """At most `attempts` tries, each on a cluster not tried yet, each started on the
        balancer (the caller finishes it) with the time the caller has left."""
        tried: list[str] = []
        # Retry at the same endpoint: on the stable when a canary failed there, or under the
        # bare adapter name (None) when a pool does not know the versioned name yet.
        retry_on: tuple[Endpoint, Version | None] | None = None
        for _ in range(self.settings.attempts):
            fallback: Version | None = None
            version: Version | None
            if retry_on is not None:
                endpoint, version = retry_on
            else:
                picked = self.balancer.pick(route.endpoints, tried)
                if picked is None:
                    return
                endpoint = picked
                tried.append(endpoint.cluster)
                version, fallback = self._version(route, endpoint)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("the request's deadline passed before a worker answered")
            upstream, metadata = self._upstream(route, endpoint, request, span, version)
            span.set_attribute("tramontane.cluster", endpoint.cluster)
            obs.ROUTED.labels(endpoint.cluster).inc()
            self.balancer.started(endpoint)
            attempt = _Attempt(endpoint, upstream, metadata, remaining, version=version,
                               fallback=fallback)  # fmt: skip
            yield attempt
            retry_on = None
            if attempt.retry_fallback and attempt.fallback is not None:
                retry_on = (endpoint, attempt.fallback)
            elif attempt.retry_bare:
                retry_on = (endpoint, None)

    @staticmethod
    def _failed(attempt: _Attempt, exc: grpc.aio.AioRpcError, retry: bool) -> RouterError:
        """The error for a failed attempt: raised unless it may be retried (elsewhere, or on
        the stable version when it failed on a canary)."""
        fault = exc.code() in _ENDPOINT_FAULTS
        attempt.failed = True if fault else None
        # A fault on a canary version says nothing of the endpoint: the version is at fault.
        on_canary = fault and attempt.fallback is not None
        attempt.ok = False if fault and not on_canary else None
        obs.UPSTREAM_FAILURES.labels(attempt.endpoint.cluster, exc.code().name).inc()
        error = from_upstream(exc.code(), exc.details())
        if retry and on_canary:
            attempt.retry_fallback = True
            return error
        if retry and exc.code() == grpc.StatusCode.NOT_FOUND and attempt.version is not None:
            # A pool still running an older Serve config (an operator upgrade: it serves the
            # bare adapter name) until its new one is up.
            attempt.retry_bare = True
            return error
        if not retry or exc.code() not in _RETRIABLE:
            raise error from None
        return error

    def _finished(self, attempt: _Attempt) -> None:
        """The attempt is over: tell the balancer, and the version's figures."""
        self.balancer.finished(attempt.endpoint, attempt.ok)
        if attempt.version is not None and attempt.failed is not None:
            latency = attempt.first_byte_s
            if latency is None:
                latency = time.monotonic() - attempt.started
            self.canaries.record(attempt.endpoint.application, attempt.version, attempt.failed,
                                 latency)  # fmt: skip

    def _no_pool(self, route: Route) -> RouterError:
        return Unavailable(f"model: {route.model_id!r} has no healthy pool")

    async def _unary(
        self, route: Route, request: pb.ChatRequest, deadline: float, span: trace.Span
    ) -> pb.ChatResponse:
        last = self._no_pool(route)
        for attempt in self._attempts(route, request, deadline, span):
            try:
                response: pb.ChatResponse = await self.backends.stub(attempt.endpoint).Chat(
                    attempt.upstream, metadata=attempt.metadata, timeout=attempt.timeout_s
                )
                attempt.ok, attempt.failed = True, False
                return response
            except grpc.aio.AioRpcError as exc:
                last = self._failed(attempt, exc, retry=True)
            finally:
                self._finished(attempt)
        raise last

    async def chat_stream(
        self,
        tenant: TenantView,
        request: pb.ChatRequest,
        *,
        timeout_s: float | None = None,
        parent: otel_context.Context | None = None,
    ) -> AsyncIterator[pb.ChatChunk]:
        """The chunks of one streamed answer. Raises before the first chunk for anything that
        prevents the answer (auth is the caller's, but model, limits and routing are here)."""
        async with self._serving(tenant, request, timeout_s, parent) as call:
            route = call.resolved
            async for chunk in self._streamed(route, request, call.deadline, call.span):
                if call.first_chunk_s is None:
                    call.first_chunk_s = time.monotonic() - call.started
                if chunk.HasField("usage"):
                    call.usage = chunk.usage
                chunk.model = route.model_id
                yield chunk

    async def _streamed(
        self, route: Route, request: pb.ChatRequest, deadline: float, span: trace.Span
    ) -> AsyncIterator[pb.ChatChunk]:
        last = self._no_pool(route)
        for attempt in self._attempts(route, request, deadline, span):
            call = self.backends.stub(attempt.endpoint).ChatStream(
                attempt.upstream, metadata=attempt.metadata, timeout=attempt.timeout_s
            )
            sent = False
            try:
                async for chunk in call:
                    if not sent:
                        sent = True
                        attempt.first_byte_s = time.monotonic() - attempt.started
                    yield chunk
                attempt.ok, attempt.failed = True, False
                return
            except grpc.aio.AioRpcError as exc:
                last = self._failed(attempt, exc, retry=not sent)  # never after a token
            finally:
                call.cancel()  # no-op once finished; frees the replica when the caller left
                self._finished(attempt)
        raise last

    def _record(self, tenant: TenantView, route: Route, usage: pb.Usage, span: trace.Span) -> None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        self.usage.record(
            tenant.name, route.model, route.adapter, usage.prompt_tokens, usage.completion_tokens
        )


def _fail(span: trace.Span, exc: BaseException) -> str:
    """Mark the span failed; the status code name for the requests counter."""
    if isinstance(exc, GeneratorExit):
        exc = Cancelled("the client went away")
    elif not isinstance(exc, RouterError) and not isinstance(exc, Exception):
        exc = Cancelled("the request was cancelled")  # CancelledError
    code = exc.grpc_code.name if isinstance(exc, RouterError) else "INTERNAL"
    span.set_attribute("error.type", code if isinstance(exc, RouterError) else type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
    return code
