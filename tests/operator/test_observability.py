"""Spans, metrics, ComputeCluster conditions, and the `tramontane operator run` command."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from manifests import AKS, HUB, NS, SYSTEM_NS, compute_cluster, model_deployment
from operator_harness import Clusters, FakeKubeRay, OperatorRun, eventually
from test_modeldeployment_faults import cc_phase
from test_modeldeployment_lifecycle import is_ready, rayservice
from tramontane_kube import COMPUTECLUSTER, MODELDEPLOYMENT, SECRET, KubeClient

CCS = "tramontane.dev/v1alpha1/computeclusters"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the first test module to ask sets it
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_reconcile_spans_and_metrics(
    spans: InMemorySpanExporter,
    clusters: Clusters,
    api: KubeClient,
    kuberay: FakeKubeRay,
    operator: OperatorRun,
) -> None:
    before = metric("tramontane_reconcile_duration_seconds_count", kind="ModelDeployment")
    taken = metric("tramontane_workqueue_wait_seconds_count", priority="high")
    await api.create(MODELDEPLOYMENT, model_deployment())
    await eventually(lambda: is_ready(clusters))
    done = [s for s in spans.get_finished_spans() if s.name == "reconcile ModelDeployment"]
    assert done, "no reconcile span"
    attributes = done[-1].attributes or {}
    assert attributes["tramontane.kind"] == "ModelDeployment"
    assert attributes["tramontane.name"] == "chat"
    assert attributes["k8s.namespace.name"] == NS
    assert attributes["tramontane.cluster"] == AKS
    assert attributes["tramontane.outcome"] in {"Progressing", "Ready"}
    assert metric("tramontane_reconcile_duration_seconds_count", kind="ModelDeployment") > before
    assert metric("tramontane_cluster_reachable", cluster=AKS) == 1.0
    # The create went through the work queue at high priority; nothing waits once Ready.
    assert metric("tramontane_workqueue_wait_seconds_count", priority="high") > taken
    assert metric("tramontane_workqueue_depth", priority="high") == 0.0
    assert metric("tramontane_objects", kind="ModelDeployment", phase="Ready") >= 1.0
    assert metric("tramontane_objects", kind="ComputeCluster", phase="Ready") >= 3.0


async def test_compute_cluster_conditions(
    clusters: Clusters, api: KubeClient, operator: OperatorRun
) -> None:
    await eventually(lambda: cc_phase(clusters, AKS) == "Ready")
    cc = clusters.hub.emulator.stored(CCS, None, AKS)
    assert cc is not None
    conditions = {c["type"]: c for c in cc["status"]["conditions"]}
    assert conditions["Reachable"]["status"] == "True"
    assert conditions["KubeRayInstalled"]["status"] == "True"
    assert cc["status"]["kubernetesVersion"]

    # A member whose kubeconfig Secret is missing: unreachable, and the status says why.
    await api.create(
        COMPUTECLUSTER,
        compute_cluster(
            "gke-missing",
            cloud="gcp",
            region="europe-west4",
            connection={"kubeconfigSecretRef": {"namespace": SYSTEM_NS, "name": "nope"}},
        ),
    )
    await eventually(lambda: cc_phase(clusters, "gke-missing") == "Unreachable")
    cc = clusters.hub.emulator.stored(CCS, None, "gke-missing")
    assert cc is not None
    reachable = next(c for c in cc["status"]["conditions"] if c["type"] == "Reachable")
    assert reachable["status"] == "False" and "nope" in reachable["message"]

    # A kubeconfig Secret outside the operator's namespace is refused, whatever it holds: the
    # operator may read Secrets in its own namespace only (docs/operator.md, Permissions).
    kubeconfig = base64.b64encode(clusters[AKS].kubeconfig().encode()).decode()
    await api.create(
        SECRET,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "elsewhere", "namespace": NS},
            "data": {"kubeconfig": kubeconfig},
        },
    )
    await api.create(
        COMPUTECLUSTER,
        compute_cluster(
            "aks-elsewhere",
            cloud="azure",
            region="northeurope",
            connection={"kubeconfigSecretRef": {"namespace": NS, "name": "elsewhere"}},
        ),
    )
    await eventually(lambda: cc_phase(clusters, "aks-elsewhere") == "Unreachable")
    cc = clusters.hub.emulator.stored(CCS, None, "aks-elsewhere")
    assert cc is not None
    reachable = next(c for c in cc["status"]["conditions"] if c["type"] == "Reachable")
    assert reachable["status"] == "False"
    assert f"outside namespace {SYSTEM_NS}" in reachable["message"]

    # The Secret appears: the next spec change (or restart) picks it up.
    secret = base64.b64encode(clusters[AKS].kubeconfig().encode()).decode()
    await api.create(
        SECRET,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "nope", "namespace": SYSTEM_NS},
            "data": {"kubeconfig": secret},
        },
    )
    await api.patch(COMPUTECLUSTER, None, "gke-missing", {"spec": {"region": "europe-west1"}})
    await eventually(lambda: cc_phase(clusters, "gke-missing") == "Ready")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_cli_runs_the_operator(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "hub.yaml"
    kubeconfig.write_text(clusters[HUB].kubeconfig())
    metrics, liveness = _free_port(), _free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "TRAMONTANE_CLUSTER_NAME": HUB,
        "POD_NAMESPACE": SYSTEM_NS,  # the Lease's namespace, as the chart passes it
        # No webhook: a fixed port collides with other operators on this machine (its own
        # tests, test_webhook.py, start it on a free port).
        "TRAMONTANE_WEBHOOK_PORT": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tramontane_cli.main",
        "operator",
        "run",
        "--all-namespaces",
        f"--metrics-port={metrics}",
        f"--liveness-port={liveness}",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await api.create(MODELDEPLOYMENT, model_deployment())
        await eventually(lambda: rayservice(clusters, AKS), timeout_s=30)
        await eventually(lambda: is_ready(clusters), timeout_s=30)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{liveness}/healthz") as resp:
                assert resp.status == 200
            async with session.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
                text = await resp.text()
        assert 'tramontane_cluster_reachable{cluster="aks-westeurope"} 1.0' in text
        assert "tramontane_reconcile_duration_seconds_bucket" in text
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
