"""Opt-in: the ModelDeployment lifecycle against a real cluster (`TRAMONTANE_E2E_KUBECONFIG`).

The cluster is both hub and member (ComputeCluster `hub`, `inCluster: true` meaning "the
operator's own cluster"); the operator runs in-process with that kubeconfig. Our CRDs are
applied if missing; KubeRay's CRDs must be installed. What the emulators cannot prove, this
does: the real API server accepts every object the operator writes (structural schema, CEL).
Ready is only awaited with `TRAMONTANE_E2E_EXPECT_READY=1` (a KubeRay controller and GPUs that
can run the worker image). Everything is created in a fresh namespace, deleted at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from manifests import HUB, compute_cluster, model_deployment, operator_settings
from operator_harness import OperatorRun, eventually
from tramontane_kube import (
    COMPUTECLUSTER,
    MODELDEPLOYMENT,
    NAMESPACE,
    RAYSERVICE,
    ClusterConfig,
    KubeClient,
    ResourceRef,
)

KUBECONFIG = os.environ.get("TRAMONTANE_E2E_KUBECONFIG")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not KUBECONFIG, reason="set TRAMONTANE_E2E_KUBECONFIG to run"),
]
CRD = ResourceRef("apiextensions.k8s.io", "v1", "customresourcedefinitions", "", False)
CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.fixture
async def real() -> AsyncIterator[tuple[KubeClient, str]]:
    assert KUBECONFIG is not None
    client = KubeClient("e2e", ClusterConfig.from_kubeconfig_file(KUBECONFIG))
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if await client.get(CRD, None, crd["metadata"]["name"]) is None:
            await client.create(CRD, crd)
    namespace = f"tramontane-e2e-{uuid.uuid4().hex[:6]}"
    await client.create(
        NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    )
    if await client.get(COMPUTECLUSTER, None, HUB) is None:
        await client.create(
            COMPUTECLUSTER,
            compute_cluster(
                HUB, cloud="onprem", region="e2e", gpus={"H100": 8}, connection={"inCluster": True}
            ),
        )
    try:
        yield client, namespace
    finally:
        await client.delete(NAMESPACE, None, namespace)
        await client.close()


async def test_lifecycle_on_a_real_cluster(real: tuple[KubeClient, str]) -> None:
    client, namespace = real
    settings = operator_settings(
        client.config.server, hub=client.config, all_namespaces=False, namespaces=(namespace,)
    )
    run = OperatorRun(settings)
    await run.start(ready_timeout_s=60)
    try:
        manifest: dict[str, Any] = model_deployment(
            placement={"clusters": [HUB], "strategy": "Pinned"}
        )
        manifest["metadata"]["namespace"] = namespace
        await client.create(MODELDEPLOYMENT, manifest)
        child = await eventually(lambda: client.get(RAYSERVICE, namespace, "chat"), timeout_s=60)
        assert child["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        await client.patch(
            MODELDEPLOYMENT, namespace, "chat", {"spec": {"scaling": {"replicas": 3}}}
        )

        async def patched() -> bool:
            rs = await client.get(RAYSERVICE, namespace, "chat") or {}
            groups = rs.get("spec", {}).get("rayClusterConfig", {}).get("workerGroupSpecs", [])
            return bool(sum(g.get("replicas", 0) for g in groups) == 3)

        await eventually(patched, timeout_s=60)
        if os.environ.get("TRAMONTANE_E2E_EXPECT_READY") == "1":

            async def ready() -> bool:
                md = await client.get(MODELDEPLOYMENT, namespace, "chat") or {}
                return (md.get("status") or {}).get("phase") == "Ready"

            await eventually(ready, timeout_s=900, interval_s=5)
        await client.delete(MODELDEPLOYMENT, namespace, "chat")

        async def gone() -> bool:
            return await client.get(MODELDEPLOYMENT, namespace, "chat") is None

        await eventually(gone, timeout_s=120)
        assert await client.get(RAYSERVICE, namespace, "chat") is None
    finally:
        await run.stop()
