"""Bad input to the admission webhook's `/validate`: one row per body, as the bad-input tables
of `tramontane validate` and the CLI commands do for theirs.

Each row posts the body to the real aiohttp application (in-process, plain HTTP: TLS is
tested in tests/operator/test_webhook.py) and asserts the status (400 malformed, 413 too
large, 200 with a refusal for a review of a bad object), a message that names the field, no
traceback anywhere, and a bounded time (a generous ceiling, so it cannot flake).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tramontane_operator.webhook.checks import Facts
from tramontane_operator.webhook.server import MAX_BODY_BYTES, make_app

CEILING_S = 2.0
MD: dict[str, Any] = {
    "apiVersion": "tramontane.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "team-a"},
    "spec": {"model": {"name": "m", "source": "file:///models/m"}, "runtime": {"engine": "transformers"}},
}  # fmt: skip


def review(obj: Any, operation: str = "CREATE", **request: Any) -> bytes:
    body = {"uid": "u-1", "operation": operation, "object": obj, **request}
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": body}
    ).encode()


def deep(depth: int) -> bytes:
    """A review whose object nests `depth` levels (json.dumps itself could not write it)."""
    nested = '{"a":' * depth + '"x"' + "}" * depth
    return review("OBJECT").replace(b'"OBJECT"', nested.encode())


@dataclass(frozen=True)
class Row:
    id: str
    body: bytes
    status: int
    message: str  # a fragment of the plain-text answer, or of response.status.message


ROWS = [
    Row("empty", b"", 400, "body: not JSON"),
    Row("not-json", b"{", 400, "body: not JSON"),
    Row("binary", b"\xff\xfe\x00", 400, "body: not JSON"),
    Row("a-string", b'"review"', 400, "body: expected an AdmissionReview object, got str"),
    Row("v1beta1", json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(), 400, "apiVersion/kind: expected admission.k8s.io/v1 AdmissionReview, got 'admission.k8s.io/v1beta1'"),
    Row("no-request", json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), 400, "request: required"),
    Row("uid-a-number", review(MD, uid=7), 400, "request.uid: required, a non-empty string"),
    Row("operation-missing", review(MD, operation=None), 400, "request.operation: expected one of"),
    Row("object-a-list", review([MD]), 400, "request.object: required for CREATE, an object"),
    Row("update-without-old", review(MD, "UPDATE"), 400, "request.oldObject: required for UPDATE"),
    Row("too-large", b"{" + b" " * MAX_BODY_BYTES + b"}", 413, f"Maximum request body size {MAX_BODY_BYTES} exceeded"),
    Row("too-deep", deep(100_000), 400, "body: nested too deeply"),
    # Well-formed reviews of bad objects: a refusal naming the field.
    Row("object-not-ours", review({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}), 200, "apiVersion: expected tramontane.dev/v1alpha1"),
    Row("object-empty", review({}), 200, "apiVersion: expected tramontane.dev/v1alpha1; it is missing"),
    Row("object-bad-field", review({**MD, "spec": {**MD["spec"], "replicas": 2}}), 200, "spec.replicas: unknown field"),
    Row("object-wrong-type", review({**MD, "spec": {**MD["spec"], "priority": "high"}}), 200, "spec.priority:"),
    Row("object-no-spec", review({k: v for k, v in MD.items() if k != "spec"}), 200, "spec: required field is missing"),
]  # fmt: skip


@pytest.fixture
async def client() -> Any:
    async with TestClient(TestServer(make_app(lambda: Facts()))) as made:
        yield made


def test_table_is_large_enough() -> None:
    assert len(ROWS) >= 15
    assert {row.status for row in ROWS} == {200, 400, 413}


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
async def test_bad_input(client: TestClient[Any, Any], row: Row) -> None:
    started = time.perf_counter()
    resp = await client.post("/validate", data=row.body)
    text = await resp.text()
    elapsed = time.perf_counter() - started
    assert resp.status == row.status, text
    assert "Traceback" not in text and 'File "' not in text
    if row.status == 200:
        response = json.loads(text)["response"]
        assert response["allowed"] is False
        assert response["uid"] == "u-1"
        assert response["status"]["code"] == 422
        assert row.message in response["status"]["message"]
    else:
        assert row.message in text
    assert elapsed < CEILING_S


async def test_until_the_caches_sync_reviews_are_refused_with_a_retry() -> None:
    synced: list[Facts] = []
    async with TestClient(TestServer(make_app(lambda: synced[0] if synced else None))) as client:
        ready = await client.get("/readyz")
        assert ready.status == 503
        resp = await client.post("/validate", data=review(MD))
        answer = (await resp.json())["response"]
        assert answer["allowed"] is False and answer["status"]["code"] == 503
        assert "retry in a few seconds" in answer["status"]["message"]
        synced.append(Facts())
        assert (await client.get("/readyz")).status == 200
        resp = await client.post("/validate", data=review(MD))
        assert (await resp.json())["response"]["allowed"] is True
