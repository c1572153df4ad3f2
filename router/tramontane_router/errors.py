"""Errors the router answers with: one class per outcome, each with its gRPC and HTTP status.

The data plane raises these; the gRPC servicer aborts with `grpc_code` and the message, the
HTTP front answers `http_status` with a JSON body in the shape the `mistralai` and `openai` SDKs
parse. Messages name the field or the limit and never carry an API key.
"""

from __future__ import annotations

import grpc


class RouterError(Exception):
    """Base: a failure the caller should see with this status and message."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    error_type: str = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param  # the request field at fault, dotted ("messages.2.role")
        self.retry_after_s = retry_after_s


class InvalidRequest(RouterError):
    """The request is malformed or asks for what the model cannot do (400 / 422)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422
    error_type = "invalid_request_error"


class BadRequest(InvalidRequest):
    """The body cannot be read at all: not JSON, not UTF-8 (400)."""

    http_status = 400


class Unauthenticated(RouterError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    error_type = "authentication_error"


class PermissionDenied(RouterError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    error_type = "permission_error"


class ModelNotFound(RouterError):
    """Unknown to this tenant: absent, or another tenant's (never said which)."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    error_type = "not_found_error"


class PayloadTooLarge(RouterError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413
    error_type = "invalid_request_error"


class RateLimited(RouterError):
    """A tenant limit or a full queue; `retry_after_s` says when the request would fit."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    error_type = "rate_limit_error"


class Cancelled(RouterError):
    """The client went away; 499 as nginx logs it (no client reads this answer)."""

    grpc_code = grpc.StatusCode.CANCELLED
    http_status = 499
    error_type = "cancelled"


class Unavailable(RouterError):
    """No healthy pool can take the request now, or the router is draining."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    error_type = "service_unavailable"


class DeadlineExceeded(RouterError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    error_type = "timeout_error"


class UpstreamError(RouterError):
    """A worker failed in a way that is not the caller's fault (502)."""

    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 502
    error_type = "upstream_error"


# What a worker's status code means to the caller. UNAVAILABLE and connection failures are
# retried elsewhere by the data plane before they get here.
_FROM_UPSTREAM: dict[grpc.StatusCode, type[RouterError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_upstream(code: grpc.StatusCode | None, details: str | None) -> RouterError:
    """The error to answer for a worker's gRPC status."""
    cls = _FROM_UPSTREAM.get(code or grpc.StatusCode.UNKNOWN, UpstreamError)
    text = details or (code.name if code else "unknown error")
    if cls is UpstreamError:
        text = f"the model server failed: {text}"
    return cls(text)
