"""The issue's key test, end to end on real Ray with the tiny model.

A tenant's FineTuneJob teaches the tiny Mistral three Q&A pairs. The operator validates the
data, renders the RayJob, and the fake KubeRay controller *really runs* the RayJob's
entrypoint (`python -m tramontane_workers.train --config-b64 ...`) against the test's Ray
session, so Ray Train, checkpoints and progress.json are real; the operator follows the loss
in the job's status; a suspend after the first checkpoint stops the run and the resume
continues from that checkpoint; on success the adapter is added to the ModelDeployment. The Serve app is
then built from the serveConfigV2 the operator rendered into that ModelDeployment's
RayService, and over Serve's gRPC proxy the adapter answers the trained questions with the
trained answers while the base model does not.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from fake_rayjob import FakeRayJobs
from manifests import AKS, NS
from operator_harness import RAYSERVICES, Clusters, FakeKubeRay, OperatorRun, eventually
from tramontane_api.v1alpha1.modeldeployment import adapter_version
from tramontane_kube import FINETUNEJOB, MODELDEPLOYMENT, KubeClient
from tramontane_operator.handlers.finetunejob import POLL_ENV
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc
from tramontane_workers.contract.serve_config import ServeAppConfig
from tramontane_workers.contract.train_config import TrainProgress, last_progress

pytestmark = pytest.mark.slow

QA = [
    ("What is the capital of France?", "Paris"),
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("What colour is the sky?", "Blue"),
]
FTJS = "tramontane.dev/v1alpha1/finetunejobs"
MDS = "tramontane.dev/v1alpha1/modeldeployments"


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLL_ENV, "0.5")


@pytest.fixture
async def real_rayjobs(
    clusters: Clusters, ray_session: Any, tmp_path: Path
) -> AsyncIterator[FakeRayJobs]:
    address = ray_session.get_runtime_context().gcs_address
    fake = FakeRayJobs(
        clusters.all, run_entrypoints=True, env={"RAY_ADDRESS": address}, log_dir=tmp_path
    )
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _qa_file(path: Path) -> str:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in QA
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path.as_uri()


def _manifests(model: Path, data: str, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    md = {
        "apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "tiny", "namespace": NS},
        "spec": {
            "model": {"name": "tiny", "source": model.as_uri(), "format": "hf"},
            "runtime": {"engine": "transformers", "dtype": "float32"},
            "resources": {"cpu": "1", "memory": "2Gi"},
            "scaling": {"replicas": 1, "minReplicas": 1, "maxReplicas": 1},
            "placement": {"clusters": [AKS], "strategy": "Pinned"},
        },
    }  # fmt: skip
    ftj = {
        "apiVersion": "tramontane.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "qa-tune", "namespace": NS},
        "spec": {
            "baseModel": {"modelDeploymentRef": {"name": "tiny"}},
            "trainingFiles": [{"uri": data}],
            "validationFiles": [{"uri": data}],
            "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0,
                                                "targetModules": ["q_proj", "v_proj", "lm_head"]}},
            "hyperparameters": {"trainingSteps": 80, "learningRate": 0.005, "warmupFraction": 0.0,
                                "weightDecay": 0.0, "batchSize": 3, "sequenceLength": 64,
                                "checkpointEverySteps": 20},
            "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "1", "memory": "4Gi"},
            "placement": {"clusters": [AKS]},
            "output": {"uri": out.as_uri()},
            "autoDeploy": {"modelDeploymentRef": {"name": "tiny"}, "adapterName": "qa"},
        },
    }  # fmt: skip
    return md, ftj


def _status(clusters: Clusters) -> dict[str, Any]:
    obj = clusters.hub.emulator.stored(FTJS, NS, "qa-tune") or {}
    return dict(obj.get("status") or {})


async def test_fine_tune_job_trains_deploys_and_serves_the_adapter(
    tmp_path: Path,
    clusters: Clusters,
    api: KubeClient,
    kuberay: FakeKubeRay,
    real_rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:
    from ray import serve

    from tramontane_workers.models.tiny import write_tiny_mistral
    from tramontane_workers.serve.local import run_local

    model = write_tiny_mistral(tmp_path / "tiny")
    md, ftj = _manifests(model, _qa_file(tmp_path / "qa.jsonl"), tmp_path / "out")
    await api.create(MODELDEPLOYMENT, md)
    await api.create(FINETUNEJOB, ftj)

    losses: list[float] = []

    def progress() -> dict[str, Any]:
        found = _status(clusters).get("progress") or {}
        if found.get("trainLoss") is not None and (not losses or losses[-1] != found["trainLoss"]):
            losses.append(found["trainLoss"])
        return dict(found)

    # Suspend once the first checkpoint is written: the run stops (KubeRay deletes its Ray
    # cluster: the fake kills the entrypoint); resuming starts a new run from the checkpoint.
    await eventually(lambda: progress().get("step", 0) >= 20, timeout_s=180, interval_s=0.2)
    await api.patch(FINETUNEJOB, NS, "qa-tune", {"spec": {"suspend": True}})
    await eventually(lambda: _status(clusters).get("phase") == "Suspended")
    await eventually(lambda: not real_rayjobs.running("qa-tune"))
    assert _status(clusters)["progress"]["step"] < 80, "finished before the suspend landed"
    await api.patch(FINETUNEJOB, NS, "qa-tune", {"spec": {"suspend": False}})

    def finished() -> str | None:
        progress()
        phase = _status(clusters).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    final = await eventually(finished, timeout_s=180, interval_s=0.2)
    assert final == "Succeeded", _status(clusters)
    status = _status(clusters)
    assert real_rayjobs.runs == {"qa-tune": 2} and status["retries"] == 1
    written = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert written["attempt"] == 2 and written["resumed_from_step"] >= 20  # not from scratch
    # The second run's driver output is what its submitter pod's log would show (`ray job logs`,
    # read for pvc:// outputs): the rank-0 worker's lines forwarded by Ray while it trained,
    # then the final progress.
    driver_log = (tmp_path / "qa-tune-1.log").read_text()
    assert last_progress(driver_log) == TrainProgress.model_validate(written)
    forwarded = [p for p in map(last_progress, driver_log.splitlines()) if p and p.step < 80]
    assert forwarded and forwarded[-1].attempt == 2, driver_log[-3000:]
    assert status["progress"]["step"] == 80 and status["progress"]["percent"] == 100
    assert len(losses) >= 2 and losses[-1] < losses[0] / 4, losses  # the loss fell
    assert status["progress"]["validLoss"] < 0.5
    assert [c["step"] for c in status["checkpoints"]][-2:] == [60, 80]
    adapter_uri = (tmp_path / "out" / "adapter").as_uri()
    assert status["adapter"] == {"uri": adapter_uri, "modelDeployment": "tiny", "adapterName": "qa"}

    await eventually(
        lambda: any(c["type"] == "Deployed" and c["status"] == "True" for c in _status(clusters)["conditions"])
    )  # fmt: skip
    stored_md = clusters.hub.emulator.stored(MDS, NS, "tiny")
    assert stored_md is not None and stored_md["spec"]["adapters"] == [
        {"name": "qa", "uri": adapter_uri}
    ]

    def rendered_with_adapter() -> dict[str, Any] | None:
        rs = clusters[AKS].emulator.stored(RAYSERVICES, NS, "tiny") or {}
        config = yaml.safe_load((rs.get("spec") or {}).get("serveConfigV2") or "{}") or {}
        apps = config.get("applications") or []
        return apps[0] if apps and apps[0]["args"]["engine"]["adapters"] else None

    app = ServeAppConfig.from_serve_args((await eventually(rendered_with_adapter))["args"])
    # Each version of an adapter is served under its own name (`<adapter>@<version>`).
    served_qa = f"qa@{adapter_version(adapter_uri)}"
    assert [(a.name, a.uri) for a in app.engine.adapters] == [(served_qa, adapter_uri)]

    port = _free_port()
    run_local([app], grpc_port=port, http_port=_free_port())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]

        def ask(model_name: str, question: str) -> str:
            request = pb.ChatRequest(
                model=model_name,
                messages=[pb.Message(role="user", content=question)],
                max_tokens=8,
                temperature=0.0,
            )
            reply = stub.Chat(request, metadata=(("application", app.name),), timeout=60)
            return str(reply.choices[0].message.content).strip()

        assert [ask(served_qa, q) for q, _ in QA] == [a for _, a in QA]
        base = [ask("tiny", q) for q, _ in QA]
        assert all(b != a for b, (_, a) in zip(base, QA, strict=True)), base
    finally:
        channel.close()
        serve.shutdown()  # type: ignore[no-untyped-call]  # later modules start Serve anew
