"""AdmissionReview v1 in, AdmissionReview v1 out: pure (the server in `server.py` is I/O).

`respond(body, facts)` reads the raw request body and returns (HTTP status, JSON answer or a
plain message). A well-formed review always gets 200 with a `response` echoing its `uid`:
allowed, or refused with `status.code` 422 and every problem in `status.message` (one a
line); warnings go in `response.warnings` (kubectl prints them). While the hub caches have
not synced (`facts` is None) a CREATE or UPDATE is refused with 503 and a message to retry:
the webhook's failurePolicy is Fail, and a half-filled cache would let a request through that
the checks would refuse a second later. A body that is not an AdmissionReview v1 gets 400 and
a message naming the field; the API server then applies the failurePolicy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .checks import Facts, Verdict, review

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
MAX_WARNINGS = 20  # the API server truncates warnings anyway; keep the answer short


class BadReview(ValueError):
    """The body is not an AdmissionReview v1 this webhook can answer."""


def parse_review(body: bytes) -> tuple[str, str, Mapping[str, Any], Mapping[str, Any] | None]:
    """(uid, operation, object, oldObject) of a review, or `BadReview` naming the field."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadReview(f"body: not JSON ({exc})") from None
    except RecursionError:
        raise BadReview("body: nested too deeply") from None
    if not isinstance(data, Mapping):
        raise BadReview(f"body: expected an AdmissionReview object, got {type(data).__name__}")
    if data.get("apiVersion") != API_VERSION or data.get("kind") != KIND:
        got = f"{data.get('apiVersion')!r} {data.get('kind')!r}"
        raise BadReview(f"apiVersion/kind: expected {API_VERSION} {KIND}, got {got}")
    request = data.get("request")
    if not isinstance(request, Mapping):
        raise BadReview("request: required, an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid: required, a non-empty string")
    operation = request.get("operation")
    if operation not in OPERATIONS:
        raise BadReview(
            f"request.operation: expected one of {sorted(OPERATIONS)}, got {operation!r}"
        )
    obj, old = request.get("object"), request.get("oldObject")
    if operation in ("CREATE", "UPDATE") and not isinstance(obj, Mapping):
        raise BadReview(f"request.object: required for {operation}, an object")
    if operation == "UPDATE" and not isinstance(old, Mapping):
        raise BadReview("request.oldObject: required for UPDATE, an object")
    return (
        uid,
        str(operation),
        obj if isinstance(obj, Mapping) else {},
        old if isinstance(old, Mapping) else None,
    )


def answer(uid: str, verdict: Verdict, code: int = 422) -> dict[str, Any]:
    """The AdmissionReview answering `uid` with `verdict`."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        reason = "Invalid" if code == 422 else "ServiceUnavailable"
        response["status"] = {
            "code": code,
            "reason": reason,
            "message": "\n".join(verdict.problems),
        }
    if verdict.warnings:
        response["warnings"] = verdict.warnings[:MAX_WARNINGS]
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def respond(body: bytes, facts: Facts | None) -> tuple[int, dict[str, Any] | str]:
    """(HTTP status, AdmissionReview answer or a plain-text message) for one request body."""
    try:
        uid, operation, obj, old = parse_review(body)
    except BadReview as exc:
        return 400, str(exc)
    if operation not in ("CREATE", "UPDATE"):
        return 200, answer(uid, Verdict())
    if facts is None:
        retry = Verdict(
            [
                "the Tramontane operator is starting (its caches are not synced yet): retry in a "
                "few seconds"
            ]
        )
        return 200, answer(uid, retry, code=503)
    return 200, answer(
        uid, review("CREATE" if operation == "CREATE" else "UPDATE", obj, old, facts)
    )
