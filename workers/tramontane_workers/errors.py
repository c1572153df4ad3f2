"""Errors the workers raise on purpose; the gRPC layer maps each to one status code."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of the errors a client should see verbatim; `grpc_code` names the status."""

    grpc_code = "INTERNAL"


class InvalidRequest(WorkerError):
    """The request is malformed; the message names the field (INVALID_ARGUMENT)."""

    grpc_code = "INVALID_ARGUMENT"


class NotFound(WorkerError):
    """The model or adapter the request names is not served here (NOT_FOUND)."""

    grpc_code = "NOT_FOUND"


class AdapterUnavailable(WorkerError):
    """An adapter exists in the spec but cannot be loaded (FAILED_PRECONDITION)."""

    grpc_code = "FAILED_PRECONDITION"


class EngineUnavailable(WorkerError):
    """The engine cannot run on this machine (no GPU, vLLM missing) (FAILED_PRECONDITION)."""

    grpc_code = "FAILED_PRECONDITION"
