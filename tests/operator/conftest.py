"""Fixtures of the operator tier: three emulated clusters, the operator, a fake KubeRay.

The hub runs our CRDs (and KubeRay's, so pools can land on it too); the members
`aks-westeurope` and `onprem` run KubeRay's. ComputeClusters and the members' kubeconfig
Secrets are created in the hub through its API, exactly as a platform team would. Every test
ends by asserting that no write was rejected by the schema checks of any emulator.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import pytest
from tests.rbac import grants_every_request

from fake_rayjob import FakeRayJobs
from manifests import (
    AKS,
    HUB,
    NS,
    ONPREM,
    SYSTEM_NS,
    compute_cluster,
    model_deployment,
    operator_settings,
)
from operator_harness import Clusters, FakeKubeRay, OperatorRun
from tramontane_kube import COMPUTECLUSTER, SECRET, ClusterConfig, KubeClient
from tramontane_operator.handlers.finetunejob import POLL_ENV

# Re-exported: test modules import these names from here or from `manifests`.
__all__ = ["AKS", "HUB", "NS", "ONPREM", "SYSTEM_NS", "model_deployment", "operator_settings"]


@pytest.fixture(scope="session", autouse=True)
def chart_rbac_grants_every_request() -> Iterator[None]:
    """Every request the operator (its clients and Kopf's) sends to the hub in this session is granted by the chart's
    roles for its ServiceAccount (tests/rbac.py)."""
    yield from grants_every_request()


@pytest.fixture
async def clusters() -> AsyncIterator[Clusters]:
    made = await Clusters.start(HUB, [AKS, ONPREM])
    try:
        yield made
        assert made.violations() == [], "writes a real API server would reject"
    finally:
        await made.close()


@pytest.fixture
async def api(clusters: Clusters) -> AsyncIterator[KubeClient]:
    """A client of the hub for the test itself, with the platform objects in place."""
    client = KubeClient("test", ClusterConfig(server=clusters.hub.url), attempts=1)
    # No Namespace objects on the hub: nothing reads them there (the emulator serves them, and
    # the operator creates its children's namespaces in members where they are missing).
    await client.create(
        COMPUTECLUSTER,
        compute_cluster(HUB, cloud="azure", region="westeurope", connection={"inCluster": True}),
    )
    for name, cloud, region in ((AKS, "azure", "westeurope"), (ONPREM, "onprem", "lyon")):
        kubeconfig = clusters[name].kubeconfig().encode()
        await client.create(
            SECRET,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-kubeconfig", "namespace": SYSTEM_NS},
                "data": {"kubeconfig": base64.b64encode(kubeconfig).decode()},
            },
        )
        await client.create(
            COMPUTECLUSTER,
            compute_cluster(
                name,
                cloud=cloud,
                region=region,
                gpus={"H100": 8},
                ingress={"grpcEndpoint": f"{name}.serve.example.com:443"},
                connection={
                    "kubeconfigSecretRef": {"namespace": SYSTEM_NS, "name": f"{name}-kubeconfig"}
                },
            ),
        )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def kuberay(clusters: Clusters) -> AsyncIterator[FakeKubeRay]:
    fake = FakeKubeRay(clusters.all)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def operator(clusters: Clusters, api: KubeClient) -> AsyncIterator[OperatorRun]:
    run = OperatorRun(operator_settings(clusters.hub.url))
    await run.start()
    try:
        yield run
    finally:
        await run.stop()


@pytest.fixture
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """FineTuneJobs followed every 0.2 s (the default polls every few seconds)."""
    monkeypatch.setenv(POLL_ENV, "0.2")


@pytest.fixture
async def rayjobs(clusters: Clusters) -> AsyncIterator[FakeRayJobs]:
    """A fake KubeRay that moves RayJobs along (see fake_rayjob.py)."""
    fake = FakeRayJobs(clusters.all)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
