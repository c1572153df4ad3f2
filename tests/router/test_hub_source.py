"""`HubSource` against an emulated hub (the operator tier's `ValidatingEmulator`, which admits
our CRDs like a real API server): objects written through `KubeClient` as a platform team and
the operator write them, a real `Router` over the source, real fake workers behind it.

Covered: a chat reaching the worker a ModelDeployment's status names; key rotation, Secret
deletion and Tenant deletion taking effect without a restart (and how fast); a pool losing its
ready replicas (503) and a second pool joining (both get traffic); namespaces no Tenant owns
are invisible; Secrets are only ever listed or watched in the namespaces Tenants' keys are in
(the emulator's request log); the parse cache; the start-up error naming the hub.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import kmock
import pytest

sys.path.append(str(Path(__file__).parents[1] / "operator"))

from fake_worker import FakeWorker

from conftest import ACME_KEY, GLOBEX_KEY, KEYS_NS, cluster, secret, tenant
from operator_harness import Cluster, eventually
from tramontane_api.v1alpha1 import Tenant
from tramontane_kube import (
    COMPUTECLUSTER,
    MODELDEPLOYMENT,
    SECRET,
    TENANT,
    ClusterConfig,
    KubeClient,
)
from tramontane_local.kube_emulator import Fault
from tramontane_router.hub import USER_AGENT, HubSource, HubSyncError, ParseCache
from tramontane_router.server import Router
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc

NEW_KEY = "acme-rotated-key-9876543210fedcba"
Workers = Callable[..., Awaitable[FakeWorker]]
Routers = Callable[..., Awaitable[Router]]


# --------------------------------------------------------------------------- fixtures
def model_deployment(name: str, namespace: str, model: str = "tiny") -> dict[str, Any]:
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": model, "source": "file:///models/tiny"},
            "runtime": {"engine": "transformers"},
        },
    }


async def publish_pools(
    api: KubeClient, namespace: str, name: str, pools: dict[str, str], ready: int = 1
) -> None:
    """Write the status the operator publishes, through the status subresource as it does."""
    status = {
        "phase": "Ready" if ready else "Pending",
        "clusters": [
            {"name": c, "endpoint": addr, "readyReplicas": ready, "desiredReplicas": 1}
            for c, addr in pools.items()
        ],
    }
    await api.patch(MODELDEPLOYMENT, namespace, name, {"status": status}, subresource="status")


async def acme_platform(api: KubeClient, worker: FakeWorker) -> None:
    """Tenant acme (namespace acme-ml, key in tramontane-keys), cluster west, model `tiny`
    served on west by `worker`."""
    await api.create(SECRET, secret("acme-key", ACME_KEY))
    await api.create(TENANT, tenant("acme", ["acme-ml"], ["acme-key"]))
    await api.create(COMPUTECLUSTER, cluster("west", "westeurope"))
    await api.create(COMPUTECLUSTER, cluster("north", "northeurope"))
    await api.create(MODELDEPLOYMENT, model_deployment("chat", "acme-ml"))
    await publish_pools(api, "acme-ml", "chat", {"west": worker.address})


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def http_chat(router: Router, key: str, model: str = "tiny") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{router.http_port}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hello"}]},
            headers={"Authorization": f"Bearer {key}"},
        ) as resp,
    ):
        return resp.status, await resp.json()


async def status_of(router: Router, key: str, model: str = "tiny") -> int:
    return (await http_chat(router, key, model))[0]


def router_secret_requests(hub: Cluster) -> list[tuple[str, str | None, bool]]:
    """(method, namespace, watch) of every request for Secrets the router's source made (the
    emulator logs every request; the source's carry its User-Agent)."""
    return [
        (r.method.value, r.namespace, bool(r.params.get("watch")))
        for r in hub.emulator
        if isinstance(r, kmock.Request)
        and r.headers.get("User-Agent") == USER_AGENT
        and r.resource is not None
        and r.resource.plural == "secrets"
    ]


# ------------------------------------------------------------------------------ tests
async def test_a_chat_reaches_the_worker_the_deployment_status_names(
    hub: Cluster, api: KubeClient, sources: Any, routers: Routers, workers: Workers
) -> None:
    west = await workers("west")
    await acme_platform(api, west)
    router = await routers(await sources())

    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        answer = await pb_grpc.InferenceStub(channel).Chat(
            pb.ChatRequest(model="tiny", messages=[pb.Message(role="user", content="hi")]),
            metadata=(("authorization", f"Bearer {ACME_KEY}"),),
        )
    assert answer.choices[0].message.content.startswith("west|tiny|hi")
    assert len(west.calls) == 1
    code, body = await http_chat(router, ACME_KEY)
    assert code == 200, body
    assert body["choices"][0]["message"]["content"].startswith("west|tiny|hello")


async def test_a_rotated_key_works_and_the_old_one_is_refused_within_seconds(
    hub: Cluster, api: KubeClient, sources: Any, routers: Routers, workers: Workers
) -> None:
    west = await workers("west")
    await acme_platform(api, west)
    source = await sources()
    router = await routers(source)
    assert await status_of(router, ACME_KEY) == 200
    assert await status_of(router, NEW_KEY) == 401

    await api.patch(SECRET, KEYS_NS, "acme-key", {"data": {"api-key": b64(NEW_KEY)}})
    started = time.monotonic()
    await eventually(lambda: _ok(router, NEW_KEY), 5)
    took = time.monotonic() - started
    assert await status_of(router, ACME_KEY) == 401
    print(f"key rotation visible after {took * 1000:.0f} ms")

    await api.delete(SECRET, KEYS_NS, "acme-key")
    await eventually(lambda: _refused(router, NEW_KEY), 5)

    # Back with a Secret, then the Tenant goes: its key is refused, its Secrets unwatched.
    await api.create(SECRET, secret("acme-key", ACME_KEY))
    await eventually(lambda: _ok(router, ACME_KEY), 5)
    await api.delete(TENANT, None, "acme")
    await eventually(lambda: _refused(router, ACME_KEY), 5)
    await eventually(lambda: source.secret_namespaces == [], 5)
    assert source.table.tenants == {}


async def _ok(router: Router, key: str) -> bool:
    return await status_of(router, key) == 200


async def _refused(router: Router, key: str) -> bool:
    return await status_of(router, key) == 401


async def test_a_pool_losing_its_replicas_is_unavailable_and_a_second_pool_shares_traffic(
    hub: Cluster, api: KubeClient, sources: Any, routers: Routers, workers: Workers
) -> None:
    west, north = await workers("west"), await workers("north")
    await acme_platform(api, west)
    router = await routers(await sources())
    assert await status_of(router, ACME_KEY) == 200

    await publish_pools(api, "acme-ml", "chat", {"west": west.address}, ready=0)
    await eventually(lambda: _status_is(router, 503), 5)
    code, body = await http_chat(router, ACME_KEY)
    assert code == 503 and "no ready replica" in body["message"], body

    pools = {"west": west.address, "north": north.address}
    await publish_pools(api, "acme-ml", "chat", pools)
    await eventually(lambda: _ok(router, ACME_KEY), 5)
    before_west, before_north = len(west.calls), len(north.calls)
    for _ in range(30):
        assert await status_of(router, ACME_KEY) == 200
    assert len(west.calls) > before_west and len(north.calls) > before_north
    assert len(west.calls) + len(north.calls) - before_west - before_north == 30


async def _status_is(router: Router, code: int) -> bool:
    return await status_of(router, ACME_KEY) == code


async def test_deployments_in_namespaces_no_tenant_owns_are_invisible(
    hub: Cluster, api: KubeClient, sources: Any, routers: Routers, workers: Workers
) -> None:
    west, stray_worker = await workers("west"), await workers("stray", models=("stray",))
    await acme_platform(api, west)
    await api.create(MODELDEPLOYMENT, model_deployment("chat", "nobodys-ns", model="stray"))
    await publish_pools(api, "nobodys-ns", "chat", {"west": stray_worker.address})
    source = await sources()
    router = await routers(source)

    assert "nobodys-ns" in source.table.by_namespace  # the source saw it...
    code, body = await http_chat(router, ACME_KEY, model="stray")
    assert code == 404, body  # ...and no tenant can reach it
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{router.http_port}/v1/models",
            headers={"Authorization": f"Bearer {ACME_KEY}"},
        ) as resp,
    ):
        ids = [m["id"] for m in (await resp.json())["data"]]
    assert ids == ["tiny"]
    assert stray_worker.calls == []


async def test_secrets_are_listed_and_watched_only_where_tenant_keys_are(
    hub: Cluster, api: KubeClient, sources: Any, routers: Routers, workers: Workers
) -> None:
    west = await workers("west")
    await acme_platform(api, west)
    # Secrets no Tenant references, in other namespaces, e.g. member kubeconfigs.
    await api.create(SECRET, secret("aks-kubeconfig", "not-a-key-but-secret", "tramontane-system"))
    await api.create(SECRET, secret("db-password", "hunter2hunter2hunter2", "acme-ml"))
    source = await sources()
    router = await routers(source)
    assert source.secret_namespaces == [KEYS_NS]

    # Acme's keys move to another namespace: the source follows, watching that one instead.
    await api.create(SECRET, secret("acme-key", GLOBEX_KEY, namespace="keys-b"))
    refs = [{"namespace": "keys-b", "name": "acme-key"}]
    await api.patch(TENANT, None, "acme", {"spec": {"apiKeySecretRefs": refs}})
    await eventually(lambda: source.secret_namespaces == ["keys-b"], 5)
    await eventually(lambda: _ok(router, GLOBEX_KEY), 5)
    assert await status_of(router, ACME_KEY) == 401

    seen = router_secret_requests(hub)
    assert {ns for _, ns, _ in seen} == {KEYS_NS, "keys-b"}, seen  # never cluster-wide (None)
    assert {m for m, _, _ in seen} == {"GET"}
    for namespace in (KEYS_NS, "keys-b"):
        assert ("GET", namespace, False) in seen and ("GET", namespace, True) in seen, seen


async def test_a_burst_of_events_makes_few_rebuilds_and_parses_only_what_changed(
    hub: Cluster, api: KubeClient, sources: Any, routers: Routers, workers: Workers
) -> None:
    west = await workers("west")
    await acme_platform(api, west)
    for i in range(10):
        await api.create(MODELDEPLOYMENT, model_deployment(f"m{i}", "acme-ml", model=f"m{i}"))
    debounce_s = 0.3
    source = await sources(debounce_s=debounce_s)
    parsed, rebuilds = source.parse_counts(), source.rebuilds
    assert parsed == {"Tenant": 1, "ModelDeployment": 11, "ComputeCluster": 2}

    started = time.monotonic()
    for i in range(10):  # a burst of status updates, ~10 ms apart
        await publish_pools(api, "acme-ml", f"m{i}", {"west": west.address})
        await asyncio.sleep(0.01)
    burst_s = time.monotonic() - started
    await eventually(lambda: all(d.endpoints for d in source.table.by_namespace["acme-ml"]), 5)
    await asyncio.sleep(debounce_s + 0.1)
    after = source.parse_counts()
    assert after["ModelDeployment"] - parsed["ModelDeployment"] == 10  # each changed one, once
    assert after["Tenant"] == 1 and after["ComputeCluster"] == 2
    # At most one rebuild per debounce window the burst spans (one per event without it).
    allowed = 1 + math.ceil(burst_s / debounce_s)
    assert source.rebuilds - rebuilds <= allowed < 10, (source.rebuilds - rebuilds, burst_s)


async def test_start_fails_with_the_hub_url_and_the_cause(hub: Cluster) -> None:
    hub.emulator.faults.append(Fault("GET", "/tenants", status=403, times=1000))
    source = HubSource(ClusterConfig(server=hub.url), sync_timeout_s=1.0)
    with pytest.raises(HubSyncError) as caught:
        await source.start()
    message = str(caught.value)
    assert hub.url in message and "tenants" in message and "403" in message, message

    unreachable = HubSource(ClusterConfig(server="http://127.0.0.1:9"), sync_timeout_s=1.0)
    with pytest.raises(HubSyncError, match=r"hub http://127\.0\.0\.1:9: .*unreachable"):
        await unreachable.start()


def test_an_invalid_object_is_skipped_with_one_warning_and_no_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = tenant("acme", ["Not-A-Dns-Label-s3cr3t"], ["acme-key"])
    bad["metadata"]["resourceVersion"] = "7"
    good = tenant("globex", ["globex-ml"], ["globex-key"])
    good["metadata"]["resourceVersion"] = "8"
    cache = ParseCache(Tenant)
    items = {("", "acme"): bad, ("", "globex"): good}
    with caplog.at_level(logging.WARNING, logger="tramontane_router.hub"):
        first = cache.parse_all(items)
        second = cache.parse_all(items)
    assert [t.metadata.name for t in first] == [t.metadata.name for t in second] == ["globex"]
    assert cache.parses == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "Tenant acme" in warnings[0] and "spec.namespaces" in warnings[0]
    assert "s3cr3t" not in warnings[0]

    bad["metadata"]["resourceVersion"] = "9"  # a new version is parsed (and judged) again
    cache.parse_all(items)
    assert cache.parses == 3


async def test_a_key_namespace_the_router_cannot_read_costs_only_its_keys(
    hub: Cluster,
    api: KubeClient,
    sources: Any,
    routers: Routers,
    workers: Workers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Tenant naming a keys namespace without RBAC for the router (403) must not keep every
    router from starting: the others' keys work, that namespace's are refused, and it is
    logged with the cause."""
    west = await workers("west")
    await acme_platform(api, west)
    await api.create(SECRET, secret("globex-key", GLOBEX_KEY, namespace="keys-b"))
    globex = tenant("globex", ["globex-ml"], [])
    globex["spec"]["apiKeySecretRefs"] = [{"namespace": "keys-b", "name": "globex-key"}]
    await api.create(TENANT, globex)
    hub.emulator.faults.append(Fault("GET", "/namespaces/keys-b/secrets", status=403, times=10**6))

    with caplog.at_level(logging.ERROR, logger="tramontane_router.hub"):
        source = await sources(sync_timeout_s=1.0)
    router = await routers(source)
    assert await status_of(router, ACME_KEY) == 200
    assert await status_of(router, GLOBEX_KEY) == 401
    errors = [r.getMessage() for r in caplog.records]
    assert any("keys-b" in m and "403" in m and hub.url in m for m in errors), errors


async def test_the_hub_hands_out_opaque_resource_versions(
    api: KubeClient, workers: Callable[..., Awaitable[FakeWorker]]
) -> None:
    """The emulated hub's resourceVersions are tokens, not numbers (the API says they are
    opaque): every HubSource test here runs on versions only equality can use."""
    await acme_platform(api, await workers("west"))
    tenant_obj = await api.get(TENANT, None, "acme")
    models, listed = await api.list(MODELDEPLOYMENT)
    versions = [str((o or {})["metadata"]["resourceVersion"]) for o in [tenant_obj, *models]]
    assert listed is not None and not any(v.isdigit() for v in [*versions, listed]), versions
