"""The HTTP front: Mistral's chat-completion API on Starlette, a thin translation onto the data
plane, so the official `mistralai` and `openai` SDKs work given a base URL and a key.

Routes: `POST /v1/chat/completions` (JSON, or server-sent events ending `data: [DONE]` with
usage on the last chunk), `GET /v1/models`, `GET /v1/models/{id}`, `GET /v1/usage` (the
calling tenant's tokens per model from the usage record, `?since=YYYY-MM-DD`; the same key as
chat, and a tenant sees only its own), `GET /healthz` (alive) and `GET /readyz` (503 while
draining).

Errors answer the status the SDKs map to their error classes (400 unreadable body, 401, 403,
404, 413, 422 invalid field, 429 with `Retry-After`, 503, 504) with one JSON body both parse:
Mistral's top-level `message`/`type`/`param`/`code`, the same under `error` (OpenAI), and for
422 a `detail` list of `{loc, msg, type}` (the `mistralai` SDK's `HTTPValidationError`),
`loc` naming the field (never a pydantic union member's tag). What JSON allows but the model
server cannot take is refused too, naming where: NaN/Infinity, nesting deeper than
`MAX_DEPTH`, strings with a lone surrogate, integers wider than the proto's fields.
A client that disconnects cancels the worker call at once. An error after a stream has begun
is sent as a last `data: {"error": ...}` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import date
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tramontane_workers.contract import inference_pb2 as pb

from .dataplane import DataPlane
from .errors import (
    BadRequest,
    Cancelled,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RouterError,
    Unavailable,
)
from .http_schema import ChatCompletionBody, chunk_json, model_json, response_json, to_request
from .keys import bearer_key
from .observability import parent_context
from .table import TenantView

log = logging.getLogger(__name__)
T = TypeVar("T")


def error_response(exc: RouterError, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    error = {"message": exc.message, "type": exc.error_type, "param": exc.param,
             "code": str(exc.http_status)}  # fmt: skip
    body: dict[str, Any] = {"object": "error", **error, "error": error}
    if exc.http_status == 422:
        body["detail"] = detail or [
            {"loc": ["body", *(int(p) if p.isdigit() else p
                              for p in (exc.param.split(".") if exc.param else []))],
             "msg": exc.message, "type": "value_error"}
        ]  # fmt: skip
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


# Names pydantic gives union members and validator wrappers in an error's `loc` ("str",
# "list[TextChunk]", "function-after[...]"): not fields, so left out of the path a client sees.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _field_loc(loc: tuple[int | str, ...], *, keep_last: bool) -> list[int | str]:
    out: list[int | str] = []
    for i, part in enumerate(loc):
        tag = isinstance(part, str) and (
            part in _TYPE_TAGS or not part.isidentifier() or part[:1].isupper()
        )
        if not tag or (keep_last and i == len(loc) - 1):  # an unknown field's own name
            out.append(part)
    return out


def _validation_error(exc: ValidationError) -> tuple[InvalidRequest, list[dict[str, Any]]]:
    """The error for a body that fails validation, and its `detail` list: one entry per
    field, the most specific first (a union reports a failure per member; they are merged)."""
    merged: dict[tuple[int | str, ...], dict[str, Any]] = {}
    for e in exc.errors(include_url=False, include_input=False):
        unknown = e["type"] == "extra_forbidden"
        loc = tuple(_field_loc(e["loc"], keep_last=unknown))
        msg = "unknown field" if unknown else e["msg"]
        entry = merged.setdefault(loc, {"loc": ["body", *loc], "msg": msg, "type": e["type"]})
        if msg not in entry["msg"]:
            entry["msg"] += f", or {msg[:1].lower()}{msg[1:]}"
    detail = sorted(merged.values(), key=lambda d: -len(d["loc"]))
    first = detail[0]
    path = ".".join(str(p) for p in first["loc"][1:]) or "body"
    more = f" (and {len(detail) - 1} more problems)" if len(detail) > 1 else ""
    return InvalidRequest(f"{path}: {first['msg']}{more}", param=path), detail


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body: {declared} bytes; at most {limit} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body: more than {limit} bytes; at most {limit} are accepted")
        chunks.append(chunk)
    return b"".join(chunks)


MAX_DEPTH = 64  # nesting of arrays and objects; deeper is refused before any recursion


def _no_constant(name: str) -> Any:
    raise BadRequest(f"body: not valid JSON: {name} is not a JSON value")


def _check_tree(data: Any, text: str) -> None:
    """Refuse what JSON allows but the rest cannot take: nesting deeper than `MAX_DEPTH`
    (it would exhaust the stack later) and strings with a lone UTF-16 surrogate escape
    (protobuf and the response encoder refuse them). Walks only when the text could hold
    either: an ordinary body costs three scans of its text at C speed."""
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    if not deep and "\\u" not in text:
        return
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            where = _dotted(path[:6]) + ("..." if len(path) > 6 else "")
            raise BadRequest(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, str):
            if not _is_unicode(value):
                where = _dotted(path)
                raise InvalidRequest(f"{where}: not valid Unicode (a lone surrogate)", param=where)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_unicode(key):
                    where = _dotted(path)
                    raise InvalidRequest(
                        f"{where}: a key is not valid Unicode (a lone surrogate)", param=where
                    )
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))


def _dotted(path: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in path) or "body"


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse(raw: bytes) -> ChatCompletionBody:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body: not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"body: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequest(f"body: nested more than {MAX_DEPTH} levels deep") from None
    _check_tree(data, text)
    if not isinstance(data, dict):
        raise InvalidRequest("body: expected a JSON object")
    try:
        return ChatCompletionBody.model_validate(data)
    except ValidationError as exc:
        error, detail = _validation_error(exc)
        raise _WithDetail(error, detail) from None


class _MethodNotAllowed(InvalidRequest):
    http_status = 405


class _WithDetail(Exception):
    def __init__(self, error: RouterError, detail: list[dict[str, Any]]) -> None:
        self.error, self.detail = error, detail


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (the body is read)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise Cancelled("the client disconnected")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _since(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"since: expected a date YYYY-MM-DD, got {text!r}", param="since"
        ) from None


def build_app(
    plane: DataPlane,
    *,
    max_body_bytes: int,
    ready: Callable[[], bool] = lambda: True,
    token_budget: Callable[[TenantView], Mapping[str, Any] | None] = lambda _t: None,
) -> Starlette:
    def tenant(request: Request) -> TenantView:
        return plane.authenticate(bearer_key(request.headers.get("authorization")))

    async def chat(request: Request) -> Response:
        try:
            who = tenant(request)
            body = _parse(await _read_body(request, max_body_bytes))
            proto = to_request(body)
            parent = parent_context(dict(request.headers))
            if not body.stream:
                answer = await _until_disconnect(request, plane.chat(who, proto, parent=parent))
                return JSONResponse(response_json(answer))
            chunks = plane.chat_stream(who, proto, parent=parent)
            first = await _until_disconnect(request, anext(chunks))
            return StreamingResponse(
                _sse(first, chunks),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        except _WithDetail as exc:
            return error_response(exc.error, exc.detail)
        except RouterError as exc:
            return error_response(exc)
        except StopAsyncIteration:
            return error_response(RouterError("the model server sent no answer"))
        except ClientDisconnect:
            return error_response(Cancelled("the client disconnected"))

    async def models(request: Request) -> Response:
        try:
            listed = plane.list_models(tenant(request))
        except RouterError as exc:
            return error_response(exc)
        return JSONResponse({"object": "list", "data": [model_json(c) for c in listed.data]})

    async def model(request: Request) -> Response:
        wanted = request.path_params["model_id"]
        try:
            listed = plane.list_models(tenant(request))
            card = next((c for c in listed.data if c.id == wanted), None)
            if card is None:
                raise ModelNotFound(f"model: {wanted!r} is not a model you can use", param="model")
        except RouterError as exc:
            return error_response(exc)
        return JSONResponse(model_json(card))

    async def usage(request: Request) -> Response:
        try:
            who = tenant(request)
            since = _since(request.query_params.get("since"))
            if plane.usage.directory is None:
                raise Unavailable("usage is not recorded by this router (it runs without "
                                  "--usage-dir)")  # fmt: skip
            rows = await asyncio.to_thread(plane.usage.tenant_usage, who.name, since)
        except RouterError as exc:
            return error_response(exc)
        body: dict[str, Any] = {
            "object": "usage",
            "tenant": who.name,
            "since": since.isoformat() if since else None,
            "data": rows,
        }
        budget = token_budget(who)
        if budget is not None:
            body["tokenBudget"] = dict(budget)
        return JSONResponse(body)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok = ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(ModelNotFound(f"{request.url.path}: no such route"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        response = error_response(
            _MethodNotAllowed(f"{request.method} {request.url.path}: method not allowed")
        )
        response.headers.update(getattr(exc, "headers", None) or {})  # Allow: ...
        return response

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error in an HTTP call", exc_info=exc)
        return error_response(RouterError("internal error in the router"))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", model, methods=["GET"]),
            Route("/v1/usage", usage, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed, Exception: internal},
    )


async def _sse(first: pb.ChatChunk, rest: AsyncIterator[pb.ChatChunk]) -> AsyncIterator[bytes]:
    """Server-sent events; Starlette cancels this generator when the client disconnects,
    which closes `rest` and with it the worker call."""
    try:
        yield _event(chunk_json(first))
        async for chunk in rest:
            yield _event(chunk_json(chunk))
        yield b"data: [DONE]\n\n"
    except RouterError as exc:
        error = {"message": exc.message, "type": exc.error_type, "code": str(exc.http_status)}
        yield _event({"object": "error", **error, "error": error})
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
