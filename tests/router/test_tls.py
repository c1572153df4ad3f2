"""TLS on both sides of the router: its own listeners (`--tls-cert/--tls-key`) and the member
clusters' ingress (`spec.ingress.tls: true`, verified against `--backend-ca`)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from fake_worker import FakeWorker

from conftest import ACME_KEY, cluster, deployment, secret, tenant
from tramontane_router.server import TlsFiles
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def _tls_worker(cert: Path, key: Path) -> FakeWorker:
    """A fake worker serving TLS with `cert`, as a member cluster's ingress would."""
    worker = FakeWorker("secure")
    worker.server = grpc.aio.server()
    pb_grpc.add_InferenceServicer_to_server(worker, worker.server)  # type: ignore[no-untyped-call]
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    worker.port = worker.server.add_secure_port("127.0.0.1:0", creds)
    await worker.server.start()
    return worker


def _platform(port: int) -> list[dict[str, Any]]:
    """acme's model on one cluster whose ingress uses TLS; its certificate names localhost,
    so the pool is reached by that name."""
    secure = cluster("secure", "westeurope")
    secure["spec"]["ingress"]["tls"] = True
    return [
        secret("acme-key", ACME_KEY),
        tenant("acme", ["acme-ml"], ["acme-key"]),
        secure,
        deployment("chat", "acme-ml", {"secure": f"localhost:{port}"}),
    ]


async def test_tls_listeners_and_tls_to_the_workers(tmp_path: Path, routers: Any) -> None:
    worker_cert, worker_key = _cert(tmp_path, "worker")
    router_cert, router_key = _cert(tmp_path, "router")
    worker = await _tls_worker(worker_cert, worker_key)
    try:
        objects = _platform(worker.port)
        router = await routers(
            objects,
            tls=TlsFiles(cert=str(router_cert), key=str(router_key)),
            backend_ca_file=str(worker_cert),
        )
        roots = grpc.ssl_channel_credentials(root_certificates=router_cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{router.grpc_port}", roots) as channel:
            stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
            request = pb.ChatRequest(model="tiny", messages=[pb.Message(role="user", content="hi")])
            reply = await stub.Chat(request, metadata=(("authorization", f"Bearer {ACME_KEY}"),))
        assert reply.choices[0].message.content.startswith("secure|")

        context = ssl.create_default_context(cafile=str(router_cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"https://localhost:{router.http_port}/v1/models",
                headers={"Authorization": f"Bearer {ACME_KEY}"},
                ssl=context,
            ) as response:
                assert response.status == 200
                assert [m["id"] for m in (await response.json())["data"]] == ["tiny"]
            # Plain HTTP to the TLS listener does not get an answer.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://localhost:{router.http_port}/healthz") as r:
                    await r.read()
    finally:
        await worker.stop()


async def test_untrusted_worker_certificate_is_refused(tmp_path: Path, routers: Any) -> None:
    """Without the right CA, the router does not talk to a TLS ingress: UNAVAILABLE."""
    worker_cert, worker_key = _cert(tmp_path, "worker")
    other_cert, _ = _cert(tmp_path, "other")
    worker = await _tls_worker(worker_cert, worker_key)
    try:
        objects = _platform(worker.port)
        router = await routers(objects, backend_ca_file=str(other_cert))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
            stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
            request = pb.ChatRequest(model="tiny", messages=[pb.Message(role="user", content="hi")])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Chat(
                    request, metadata=(("authorization", f"Bearer {ACME_KEY}"),), timeout=5
                )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert worker.calls == []
    finally:
        await worker.stop()
