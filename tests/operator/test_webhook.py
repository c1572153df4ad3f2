"""The admission webhook as the API server calls it: HTTPS, AdmissionReview v1, one caBundle.

The operator runs against the emulated hub with its webhook on a free port and a fast
certificate refresh. The hub holds the chart's ValidatingWebhookConfiguration (no caBundle);
the operator makes the CA and serving certificate, keeps them in the Secret, and its leader
writes the caBundle. The test then trusts ONLY that caBundle, checks the hostname
`tramontane-webhook.tramontane-system.svc` (connecting to 127.0.0.1), and posts reviews: each
check's refusal and message, warnings, malformed reviews, and that a wrong CA or a wrong
hostname fails TLS verification (the test of the test).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from manifests import AKS, HUB, NS, ONPREM, SYSTEM_NS, model_deployment, operator_settings
from operator_harness import Clusters, OperatorRun, eventually
from tramontane_kube import SECRET, TENANT, ClusterConfig, KubeClient
from tramontane_operator.handlers.runtime import USER_AGENT
from tramontane_operator.webhook.certs import bundle_from_secret, next_bundle, service_hostnames
from tramontane_operator.webhook.keeper import (
    VALIDATING_WEBHOOK_CONFIGURATION,
    CertificateError,
    CertificateKeeper,
)

SERVICE, SECRET_NAME, CONFIGURATION = "tramontane-webhook", "tramontane-webhook-tls", "tramontane"
HOSTNAME = f"{SERVICE}.{SYSTEM_NS}.svc"
KINDS = ["modeldeployments", "finetunejobs", "tenants", "computeclusters"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def webhook_configuration() -> dict[str, Any]:
    """What the chart renders (self-managed certificates: no caBundle yet)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [
            {
                "name": "validate.tramontane.dev",
                "clientConfig": {
                    "service": {"name": SERVICE, "namespace": SYSTEM_NS, "path": "/validate"}
                },
                "rules": [
                    {
                        "apiGroups": ["tramontane.dev"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": KINDS,
                        "scope": "*",
                    }
                ],
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }
        ],
    }


def tenant_body(name: str, namespaces: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"namespaces": namespaces, **spec},
    }


def fine_tune_job(workers: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tune", "namespace": NS},
        "spec": {
            "baseModel": {"uri": "hf://mistralai/Mistral-7B-v0.3"},
            "trainingFiles": [{"uri": "s3://data/train.jsonl"}],
            "hyperparameters": {"trainingSteps": 10},
            "resources": {"workers": workers, "gpusPerWorker": 2, "gpuType": "H100"},
            "output": {"uri": "s3://out/tune"},
            **spec,
        },
    }


def review(obj: Any, operation: str = "CREATE", old: Any = None) -> dict[str, Any]:
    request: dict[str, Any] = {"uid": str(uuid.uuid4()), "operation": operation, "object": obj}
    if old is not None:
        request["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


class Caller:
    """Posts AdmissionReviews the way the API server does: HTTPS to the Service's name."""

    def __init__(self, port: int, ca_pem: str) -> None:
        self.url = f"https://127.0.0.1:{port}/validate"
        self.ssl = ssl.create_default_context(cadata=ca_pem)  # this CA and no other
        self.session = aiohttp.ClientSession()

    async def post(
        self, body: Any, hostname: str = HOSTNAME, context: ssl.SSLContext | None = None
    ) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else None
        async with self.session.post(
            self.url,
            json=None if data is not None else body,
            data=data,
            ssl=context or self.ssl,
            server_hostname=hostname,
        ) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def verdict(self, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self.post(body)
        assert status == 200, answer
        response: dict[str, Any] = answer["response"]
        assert response["uid"] == body["request"]["uid"]
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        return response


@pytest.fixture
async def webhook(clusters: Clusters, api: KubeClient) -> AsyncIterator[tuple[Caller, str]]:
    await api.create(VALIDATING_WEBHOOK_CONFIGURATION, webhook_configuration())
    quotas = {"gpus": {"H100": 4}}
    await api.create(TENANT, tenant_body("team", [NS], quotas=quotas, allowedClusters=[HUB, AKS]))
    port = _free_port()
    run = OperatorRun(
        operator_settings(
            clusters.hub.url,
            webhook_port=port,
            webhook_host="127.0.0.1",
            webhook_namespace=SYSTEM_NS,
            webhook_refresh_s=0.3,
        )
    )
    await run.start()

    async def ca_bundle() -> str | None:
        vwc = await api.get(VALIDATING_WEBHOOK_CONFIGURATION, None, CONFIGURATION)
        return ((vwc or {}).get("webhooks") or [{}])[0].get("clientConfig", {}).get("caBundle")

    try:
        ca = base64.b64decode(await eventually(ca_bundle)).decode()
        caller = Caller(port, ca)
        try:
            await eventually(lambda: caller_ready(caller))
            yield caller, ca
        finally:
            await caller.session.close()
    finally:
        await run.stop()


async def caller_ready(caller: Caller) -> bool:
    """Ready (caches synced) and the Tenant cached: an unowned namespace is refused."""
    try:
        obj = model_deployment()
        obj["metadata"]["namespace"] = "nobody"
        status, answer = await caller.post(review(obj))
    except aiohttp.ClientError:
        return False
    return (
        status == 200
        and answer["response"]["allowed"] is False
        and (answer["response"]["status"]["code"] == 422)
    )


def with_spec(obj: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**obj, "spec": {**obj["spec"], **spec}}


def in_namespace(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}


REFUSED = [
    pytest.param(
        in_namespace(model_deployment(), "nobody"),
        None,
        ["metadata.namespace: namespace 'nobody' belongs to no Tenant"],
        id="no-tenant",
    ),
    pytest.param(
        with_spec(model_deployment(), resources={"gpu": {"type": "L4", "count": 1}}),
        None,
        ["spec.resources.gpu.type: GPU type 'L4' is not in tenant 'team''s quota"],
        id="gpu-type",
    ),
    pytest.param(
        with_spec(model_deployment(), scaling={"minReplicas": 1, "maxReplicas": 5}),
        None,
        ["spec.scaling.maxReplicas: maxReplicas x resources.gpu.count (5 x 1) = 5 H100 GPUs "
         "can never fit tenant 'team''s quota of 4 H100 GPUs"],
        id="md-never-fits",
    ),
    pytest.param(
        fine_tune_job(workers=3),
        None,
        ["spec.resources.workers: workers x gpusPerWorker (3 x 2) = 6 H100 GPUs can never fit"],
        id="ftj-never-fits",
    ),
    pytest.param(
        with_spec(model_deployment(), placement={"clusters": [ONPREM], "strategy": "Pinned"}),
        None,
        ["spec.placement.clusters[0]: cluster 'onprem' is not in tenant 'team''s allowedClusters"],
        id="cluster-not-allowed",
    ),
    pytest.param(
        with_spec(fine_tune_job(), output={"uri": "s3://out/other"}),
        fine_tune_job(),
        ["spec.output: output is immutable"],
        id="immutable",
    ),
    pytest.param(
        with_spec(model_deployment(), runtime={"engine": "transformers"}, model={
            "name": "m", "source": "hf://m/m", "format": "mistral"}),
        None,
        ["spec.model.format: engine transformers needs a Hugging Face checkpoint"],
        id="engine-format",
    ),
    pytest.param(
        tenant_body("other", ["team-b", NS]),
        None,
        ["spec.namespaces[1]: namespace 'team-a' already belongs to tenant 'team'"],
        id="namespace-claimed",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "old", "messages"), REFUSED)
async def test_refusals_name_the_field(
    webhook: tuple[Caller, str], obj: dict[str, Any], old: Any, messages: list[str]
) -> None:
    caller, _ = webhook
    response = await caller.verdict(review(obj, "UPDATE" if old else "CREATE", old))
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    problems = response["status"]["message"].split("\n")
    assert len(problems) == len(messages), problems
    for got, want in zip(problems, messages, strict=True):
        assert got.startswith(want) or want in got


async def test_admits_with_warnings_and_skips_metadata_updates(
    webhook: tuple[Caller, str],
) -> None:
    caller, _ = webhook
    response = await caller.verdict(review(model_deployment()))
    assert response == {"uid": response["uid"], "allowed": True}
    job = fine_tune_job(baseModel={"modelDeploymentRef": {"name": "absent"}})
    response = await caller.verdict(review(job))
    assert response["allowed"] is True
    assert response["warnings"] == [
        "spec.baseModel.modelDeploymentRef.name: no ModelDeployment 'absent' in namespace "
        "'team-a' (yet)"
    ]
    # The operator's own writes (a finalizer) on an object that breaks every rule: allowed.
    broken = in_namespace(model_deployment(), "nobody")
    with_finalizer = {**broken, "metadata": {**broken["metadata"], "finalizers": ["x"]}}
    response = await caller.verdict(review(with_finalizer, "UPDATE", broken))
    assert response["allowed"] is True
    response = await caller.verdict(review(None, "DELETE", broken))
    assert response["allowed"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body: not JSON"),
        (b"[1, 2]", "body: expected an AdmissionReview object, got list"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "apiVersion/kind: expected admission.k8s.io/v1 AdmissionReview"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request: required"),
        ({**review({}), "request": {"operation": "CREATE", "object": {}}}, "request.uid: required"),
        ({**review({}), "request": {"uid": "u", "operation": "PATCH"}}, "request.operation: expected one of"),
        ({**review({}), "request": {"uid": "u", "operation": "UPDATE", "object": {}}}, "request.oldObject: required for UPDATE"),
    ],
    ids=["not-json", "not-an-object", "v1beta1", "no-request", "no-uid", "bad-operation", "no-old-object"],
)  # fmt: skip
async def test_malformed_reviews_are_a_400_with_a_message(
    webhook: tuple[Caller, str], body: Any, message: str
) -> None:
    caller, _ = webhook
    status, text = await caller.post(body)
    assert status == 400
    assert isinstance(text, str) and text.startswith(message)
    assert "Traceback" not in text


async def test_an_oversized_review_is_refused_before_it_is_read(
    webhook: tuple[Caller, str],
) -> None:
    caller, _ = webhook
    status, text = await caller.post(b"x" * (9 * 2**20))
    assert status == 413
    assert "Traceback" not in text


async def test_tls_trusts_only_the_ca_bundle_and_checks_the_hostname(
    webhook: tuple[Caller, str],
) -> None:
    caller, _ = webhook
    other = next_bundle(None, [HOSTNAME], datetime.now(UTC))
    wrong_ca = ssl.create_default_context(cadata=other.ca_crt.decode())
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await caller.post(review(model_deployment()), context=wrong_ca)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await caller.post(review(model_deployment()), hostname="tramontane-webhook.evil.svc")
    status, _ = await caller.post(review(model_deployment()))  # and the right one works
    assert status == 200


async def served_certificate(port: int, ca_pem: str) -> bytes:
    context = ssl.create_default_context(cadata=ca_pem)
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=HOSTNAME
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return bytes(der)
    finally:
        writer.close()


async def test_every_replica_reloads_a_renewed_certificate(
    webhook: tuple[Caller, str], api: KubeClient
) -> None:
    caller, ca = webhook
    port = int(caller.url.split(":")[2].split("/")[0])
    before = await served_certificate(port, ca)
    secret = await api.get(SECRET, SYSTEM_NS, SECRET_NAME)
    current = bundle_from_secret(secret)
    assert current is not None and current.ca_key is not None
    renewed = next_bundle(current, service_hostnames(SERVICE, SYSTEM_NS), datetime.now(UTC))
    assert renewed.ca_crt == current.ca_crt  # same CA: the caBundle stays valid
    assert secret is not None
    await api.replace(SECRET, {**secret, "data": renewed.secret_data()})
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    want = x509.load_pem_x509_certificate(renewed.tls_crt).public_bytes(Encoding.DER)
    assert want != before

    async def serves_renewed() -> bool:
        return await served_certificate(port, ca) == want

    await eventually(serves_renewed)


# --- the certificate keeper against the hub, without the operator -----------------------


@pytest.fixture
async def hub_clients(clusters: Clusters) -> AsyncIterator[list[KubeClient]]:
    # Three operator replicas' clients (their User-Agent: the chart's RBAC check counts them).
    made = [
        KubeClient(f"r{i}", ClusterConfig(server=clusters.hub.url), user_agent=USER_AGENT)
        for i in range(3)
    ]
    try:
        yield made
    finally:
        for client in made:
            await client.close()


def keeper(client: KubeClient, **kwargs: Any) -> CertificateKeeper:
    return CertificateKeeper(
        client, SYSTEM_NS, SECRET_NAME, service_hostnames(SERVICE, SYSTEM_NS), **kwargs
    )


async def test_replicas_racing_for_a_missing_secret_end_up_serving_one_certificate(
    hub_clients: list[KubeClient],
) -> None:
    keepers = [keeper(client) for client in hub_clients]
    bundles = await asyncio.gather(*(k.ensure() for k in keepers))
    stored = bundle_from_secret(await hub_clients[0].get(SECRET, SYSTEM_NS, SECRET_NAME))
    assert stored is not None
    # The winner wrote it; the others lost with a 409 or read it first, and serve the same.
    assert all(b.ca_crt == stored.ca_crt for b in bundles)
    again = await asyncio.gather(*(k.ensure() for k in keepers))
    assert all(b == stored for b in again)


async def test_an_expiring_certificate_is_renewed_under_the_same_ca(
    hub_clients: list[KubeClient],
) -> None:
    first = keeper(hub_clients[0])
    original = await first.ensure()
    later = keeper(hub_clients[1], clock=lambda: datetime.now(UTC) + timedelta(days=340))
    renewed = await later.ensure()
    assert renewed.tls_crt != original.tls_crt
    assert renewed.ca_crt == original.ca_crt
    stored = bundle_from_secret(await hub_clients[0].get(SECRET, SYSTEM_NS, SECRET_NAME))
    assert stored == renewed


async def test_with_cert_manager_a_missing_secret_is_an_error_naming_it(
    hub_clients: list[KubeClient],
) -> None:
    with pytest.raises(
        CertificateError, match=f"Secret {SYSTEM_NS}/{SECRET_NAME}: no certificate yet"
    ):
        await keeper(hub_clients[0], self_managed=False).ensure()
    assert await hub_clients[0].get(SECRET, SYSTEM_NS, SECRET_NAME) is None
