"""The tenant CLI (`finetune submit|list|get|logs|cancel`, `get`) against the emulated hub and
members, the operator in-process and a fake KubeRay: the same KubeClient as the operator's.

The CLI runs in-process in a thread (it drives its own event loop while the emulators serve on
the test's); local mode is a `TRAMONTANE_HOME` whose kubeconfig points at the emulated hub.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from fake_rayjob import RAYJOBS, FakeRayJobs
from manifests import AKS, NS
from operator_harness import Clusters, OperatorRun, eventually
from tramontane_cli.main import main
from tramontane_kube import FINETUNEJOB as FTJ_REF
from tramontane_kube import POD, ClusterConfig, KubeClient
from tramontane_workers.contract.train_config import TrainProgress

pytestmark = pytest.mark.usefixtures("fast_poll")
FTJS = "tramontane.dev/v1alpha1/finetunejobs"
GOOD = {"messages": [{"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris"}]}  # fmt: skip
REPO = Path(__file__).parents[2]


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's exit on bad flags
        return int(exc.code or 0)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(run_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def kubeconfig(clusters: Clusters, *contexts: str, namespace: str = NS) -> dict[str, Any]:
    """A user's kubeconfig: the hub (current, namespace `namespace`) and `contexts` members."""
    names = ["hub", *contexts]
    data: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "current-context": "hub",
                            "clusters": [], "users": [], "contexts": []}  # fmt: skip
    for name in names:
        url = clusters.hub.url if name == "hub" else clusters[name].url
        data["clusters"].append({"name": name, "cluster": {"server": url}})
        data["users"].append({"name": name, "user": {"token": f"token-{name}"}})
        ctx = {"cluster": name, "user": name, **({"namespace": namespace} if name == "hub" else {})}
        data["contexts"].append({"name": name, "context": ctx})
    return data


@pytest.fixture
def home(tmp_path: Path, clusters: Clusters, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local mode "running" against the emulated hub."""
    local = tmp_path / "home" / "local"
    local.mkdir(parents=True)
    (local / "kubeconfig").write_text(yaml.safe_dump(kubeconfig(clusters)))
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRAMONTANE_LOCAL", raising=False)
    return local


@pytest.fixture
def user_kubeconfig(tmp_path: Path, clusters: Clusters) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(clusters, AKS)))
    return path


def manifest(tmp_path: Path, name: str = "tune", lines: list[Any] | None = None,
             **spec: Any) -> Path:  # fmt: skip
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(
        (x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines or [GOOD] * 4))  # fmt: skip
    body: dict[str, Any] = {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
            "trainingFiles": [{"uri": data.as_uri()}],
            "hyperparameters": {"trainingSteps": 100, "batchSize": 2},
            "resources": {"workers": 1, "gpusPerWorker": 1, "gpuType": "H100"},
            "placement": {"clusters": [AKS]},
            "output": {"uri": (tmp_path / f"out-{name}").as_uri()},
            **spec,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def progress(tmp_path: Path, name: str, step: int, state: str = "running", **kw: Any) -> None:
    out = tmp_path / f"out-{name}"
    out.mkdir(exist_ok=True)
    values = {"state": state, "step": step, "total_steps": 100, "percent": step,
              "train_loss": 2.0 - step / 100, "updated": datetime.now(UTC), **kw}  # fmt: skip
    (out / "progress.json").write_text(TrainProgress.model_validate(values).model_dump_json())


def rayjob(clusters: Clusters, name: str = "tune") -> dict[str, Any] | None:
    return clusters[AKS].emulator.stored(RAYJOBS, NS, name)


def phase(clusters: Clusters, name: str = "tune") -> str | None:
    obj = clusters.hub.emulator.stored(FTJS, NS, name)
    return ((obj or {}).get("status") or {}).get("phase")


# ----------------------------------------------------------------------------- submit --wait
async def test_submit_and_wait_until_it_succeeds(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun, home: Path, capsys: Any,
) -> None:  # fmt: skip
    path = manifest(tmp_path)
    capsys.readouterr()
    waiting = asyncio.create_task(asyncio.to_thread(
        run_main, ["finetune", "submit", "-f", str(path), "--local", "--wait",
                   "--interval", "0.1"]))  # fmt: skip
    await eventually(lambda: rayjob(clusters))
    progress(tmp_path, "tune", 40, train_loss=1.6)
    await eventually(lambda: ((clusters.hub.emulator.stored(FTJS, NS, "tune") or {})
                              .get("status", {}).get("progress") or {}).get("step") == 40)  # fmt: skip
    await asyncio.sleep(0.3)  # the CLI sees step 40
    progress(tmp_path, "tune", 100, "succeeded", adapter_uri=(tmp_path / "out-tune" / "a").as_uri())
    rayjobs.finish("tune")
    code = await asyncio.wait_for(waiting, 30)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines() == [
        f"finetunejob {NS}/tune created (local mode)",
        f"finetunejob tune Succeeded: adapter at {(tmp_path / 'out-tune' / 'a').as_uri()}",
    ]
    assert "Running step 40/100 loss 1.6" in err.splitlines()

    # list / get, for people and for scripts
    code, out, _ = await cli(capsys, "finetune", "list", "--local", "-o", "json")
    listed = json.loads(out)
    assert code == 0 and listed["kind"] == "List"
    assert [(i["kind"], i["metadata"]["name"], i["status"]["phase"]) for i in listed["items"]] == [
        ("FineTuneJob", "tune", "Succeeded")]  # fmt: skip
    code, out, _ = await cli(capsys, "finetune", "list", "--local")
    header, row = out.splitlines()
    assert header.split()[:6] == ["NAMESPACE", "NAME", "PHASE", "PROGRESS", "STEP", "LOSS"]
    assert row.split()[:5] == [NS, "tune", "Succeeded", "100", "100"]
    code, out, _ = await cli(capsys, "finetune", "get", "tune", "--local")
    assert code == 0 and out.startswith(f"FineTuneJob {NS}/tune\n  Phase: Succeeded")
    assert "  Summary: Succeeded step 100/100" in out
    assert "  Complete=True TrainingSucceeded" in out and "  Validated=True DatasetValid" in out
    code, out, _ = await cli(capsys, "get", "ftj", "tune", "--local", "-o", "yaml")
    assert code == 0 and yaml.safe_load(out)["status"]["phase"] == "Succeeded"


async def test_submit_and_wait_until_it_fails(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun, home: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TRAMONTANE_LOCAL", "1")  # the environment's way to say --local
    path = manifest(tmp_path)
    waiting = asyncio.create_task(asyncio.to_thread(
        run_main, ["finetune", "submit", "-f", str(path), "--wait", "--interval", "0.1"]))  # fmt: skip
    await eventually(lambda: rayjob(clusters))
    progress(tmp_path, "tune", 7, "failed", message="CUDA out of memory at step 7")
    rayjobs.finish("tune", "FAILED")
    code = await asyncio.wait_for(waiting, 30)
    _, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines()[-1] == (
        "finetunejob tune Failed: TrainingFailed: CUDA out of memory at step 7"
    )


# ----------------------------------------------------------------------------- bad input
async def test_submit_refuses_bad_input_before_creating_anything(
    tmp_path: Path, clusters: Clusters, api: KubeClient, home: Path, capsys: Any,
    user_kubeconfig: Path,
) -> None:  # fmt: skip
    code, _, err = await cli(
        capsys, "finetune", "submit", "-f", str(tmp_path / "nope.yaml"), "--local"
    )
    assert (
        code == 2
        and err.strip() == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    )

    bad = manifest(tmp_path, "bad", hyperparameters={"trainingSteps": 100, "batchSize": 0})
    line = bad.read_text().splitlines().index("    batchSize: 0") + 1
    code, _, err = await cli(capsys, "finetune", "submit", "-f", str(bad), "--local")
    assert code == 1 and err.startswith(f"{bad}:{line}: spec.hyperparameters.batchSize: ")

    broken = manifest(tmp_path, "data", lines=[GOOD, '{"messages": [}', GOOD])
    code, _, err = await cli(capsys, "finetune", "submit", "-f", str(broken), "--local")
    assert code == 1 and f"{(tmp_path / 'data.jsonl').as_uri()}:2: " in err
    assert "the job's data is invalid (see above); not submitted" in err

    # Against a cluster, a file:// output is nobody's: refused, with what to do.
    good = manifest(tmp_path, "good")
    code, _, err = await cli(
        capsys, "finetune", "submit", "-f", str(good), "--kubeconfig", str(user_kubeconfig)
    )
    assert code == 1 and err.strip() == (
        f"{good}: spec.output.uri: {(tmp_path / 'out-good').as_uri()}: file:// is only "
        "readable in local mode (--local); put it where the cluster can read it (az://, s3://, "
        "gs:// or pvc://)")  # fmt: skip
    # A local dataset cannot be uploaded into a claim from here: refused, with what to do.
    claimed = manifest(tmp_path, "claimed", output={"uri": "pvc://train-data/out"})
    code, _, err = await cli(
        capsys, "finetune", "submit", "-f", str(claimed), "--kubeconfig", str(user_kubeconfig)
    )
    assert code == 1 and err.strip().startswith(
        f"{claimed}: spec.trainingFiles[0].uri: {(tmp_path / 'claimed.jsonl').as_uri()}: a local "
        "file cannot be uploaded to the job's pvc:// output (pvc://train-data/out) from here")

    placed = tmp_path / "placed.yaml"
    body = yaml.safe_load(good.read_text())
    body["metadata"]["namespace"] = NS
    placed.write_text(yaml.safe_dump(body))
    code, _, err = await cli(
        capsys, "finetune", "submit", "-f", str(placed), "--local", "-n", "other"
    )
    assert code == 2 and err.strip() == (
        f"--namespace: other does not match the manifest's metadata.namespace {NS}"
    )
    code, _, err = await cli(
        capsys, "finetune", "submit", "-f", str(good), "--interval", "0", "--local"
    )
    assert code == 2 and "--interval: must be a positive number, got '0'" in err
    code, _, err = await cli(capsys, "get", "pods", "--local")
    assert code == 1 and err.strip().startswith("KIND: unknown kind 'pods'; known: md, ftj")
    code, _, err = await cli(capsys, "get", "ftj", "missing", "--local")
    assert code == 1 and err.strip() == f"FineTuneJob 'missing' not found in namespace {NS}"
    assert clusters.hub.emulator.stored_all(FTJS) == []  # nothing was created


async def test_commands_without_a_usable_cluster(
    tmp_path: Path, clusters: Clusters, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path / "none"))
    code, _, err = await cli(capsys, "finetune", "list", "--local")
    assert code == 2 and err.startswith(
        "local mode is not running: start it with tramontane local up"
    )
    config = tmp_path / "kc"
    config.write_text(yaml.safe_dump(kubeconfig(clusters)))
    code, _, err = await cli(capsys, "get", "md", "--kubeconfig", str(config), "--context", "gone")
    assert code == 2 and "contexts has no entry named 'gone'" in err
    await clusters.hub.stop()
    code, _, err = await cli(capsys, "get", "md", "--kubeconfig", str(config))
    assert code == 2 and err.startswith("cannot reach the Kubernetes API server: hub: unreachable")


# ----------------------------------------------------------------------------- cancel, logs
async def test_cancel_logs_and_get_all_kinds(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun, home: Path, capsys: Any, user_kubeconfig: Path,
) -> None:  # fmt: skip
    code, _, err = await cli(capsys, "finetune", "submit", "-f", str(manifest(tmp_path)), "--local")
    assert code == 0, err
    await eventually(lambda: phase(clusters) == "Running" and rayjob(clusters))

    # logs: local mode's file; a member the kubeconfig reaches; a member it does not
    logs = home / "logs" / "rayjobs"  # as local mode's KubeRay writes each run
    logs.mkdir(parents=True)
    (logs / "tune-0.log").write_text("the first run\n")
    (logs / "tune-1.log").write_text("".join(f"line {i}\n" for i in range(5)))
    code, out, _ = await cli(capsys, "finetune", "logs", "tune", "--local", "--tail", "2")
    assert code == 0 and out == "line 3\nline 4\n"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "tune-x1", "namespace": NS,
                        "labels": {"batch.kubernetes.io/job-name": "tune"}},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}  # fmt: skip
    member = KubeClient(AKS, ClusterConfig(server=clusters[AKS].url), attempts=1)
    try:
        await member.create(POD, pod)
    finally:
        await member.close()
    clusters[AKS].emulator.pod_logs[(NS, "tune-x1")] = "step 1 loss 2.0\n"
    code, out, err = await cli(
        capsys, "finetune", "logs", "tune", "--kubeconfig", str(user_kubeconfig)
    )
    assert code == 0 and out == "step 1 loss 2.0\n", err
    only_hub = tmp_path / "hub-only"
    only_hub.write_text(yaml.safe_dump(kubeconfig(clusters)))
    code, out, err = await cli(capsys, "finetune", "logs", "tune", "--kubeconfig", str(only_hub))
    assert code == 2 and out == ""
    assert f"look there: kubectl --context {AKS} logs -n {NS} job/tune" in err

    # get: every kind at once, and one kind with conditions
    code, out, _ = await cli(capsys, "get", "tramontane", "--local")
    assert code == 0 and "NAMESPACE   NAME   PHASE" in out and "READY   PHASE" in out
    code, out, _ = await cli(capsys, "get", "cc", AKS, "--local")
    assert code == 0 and out.startswith(f"ComputeCluster {AKS}\n") and "Conditions:" in out
    code, out, _ = await cli(capsys, "get", "computeclusters", "--local", "-o", "json")
    assert code == 0 and {i["metadata"]["name"] for i in json.loads(out)["items"]} >= {
        AKS,
        "onprem",
    }

    # cancel: the job goes, and the operator stops its RayJob
    code, out, _ = await cli(capsys, "finetune", "cancel", "tune", "--local")
    assert code == 0 and out.strip() == (
        f"finetunejob {NS}/tune cancelled: the operator stops RayJob tune in cluster {AKS}"
    )
    await eventually(lambda: rayjob(clusters) is None)
    await eventually(lambda: clusters.hub.emulator.stored(FTJS, NS, "tune") is None)
    code, _, err = await cli(capsys, "finetune", "cancel", "tune", "--local")
    assert code == 1 and "not found" in err


# ----------------------------------------------------------------------------- upload
async def test_submit_uploads_local_datasets_to_the_jobs_store(
    tmp_path: Path, clusters: Clusters, api: KubeClient, capsys: Any, user_kubeconfig: Path,
    azurite: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Against a cluster, a file:// dataset goes to `<output>/inputs/<digest>/<name>` in the
    job's object store (a real Blob endpoint through adlfs) and the created job names the copy;
    a resubmission sends nothing again; a store that refuses is a clear error and no job."""
    import adlfs

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    store = adlfs.AzureBlobFileSystem(connection_string=azurite)
    store.mkdir("jobs")
    out = "az://jobs/search/tune"
    path = manifest(tmp_path, "tune", output={"uri": out})
    code, text, err = await cli(
        capsys, "finetune", "submit", "-f", str(path), "--kubeconfig", str(user_kubeconfig)
    )
    assert code == 0, err
    created = await api.get(FTJ_REF, NS, "tune")
    assert created is not None
    uri = created["spec"]["trainingFiles"][0]["uri"]
    digest = hashlib.sha256((tmp_path / "tune.jsonl").read_bytes()).hexdigest()[:16]
    assert uri == f"{out}/inputs/{digest}/tune.jsonl"
    assert store.cat(uri.removeprefix("az://")) == (tmp_path / "tune.jsonl").read_bytes()
    assert f"spec.trainingFiles[0].uri: {tmp_path / 'tune.jsonl'} -> {uri} (uploaded)" in text

    again = manifest(tmp_path, "again", output={"uri": out})
    (tmp_path / "again.jsonl").write_bytes((tmp_path / "tune.jsonl").read_bytes())
    body = yaml.safe_load(again.read_text())
    body["spec"]["trainingFiles"][0]["uri"] = (tmp_path / "again.jsonl").as_uri()
    again.write_text(yaml.safe_dump(body))
    code, text, err = await cli(
        capsys, "finetune", "submit", "-f", str(again), "--kubeconfig", str(user_kubeconfig)
    )
    assert code == 0, err
    assert f"-> {out}/inputs/{digest}/again.jsonl (uploaded)" in text

    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", azurite.replace("devstoreaccount1;", "nobody;", 1)
    )
    refused = manifest(tmp_path, "refused", output={"uri": out})
    code, _, err = await cli(
        capsys, "finetune", "submit", "-f", str(refused), "--kubeconfig", str(user_kubeconfig)
    )
    assert code == 2 and err.startswith(
        f"{refused}: spec.trainingFiles[0].uri: cannot upload {tmp_path / 'refused.jsonl'} to "
        f"{out}/inputs/"
    ), err
    assert "AZURE_STORAGE_CONNECTION_STRING" in err and "Traceback" not in err
    assert await api.get(FTJ_REF, NS, "refused") is None


# ----------------------------------------------------------------------------- logs -f
async def test_logs_follow_until_the_run_ends(
    tmp_path: Path, clusters: Clusters, api: KubeClient, home: Path, capsys: Any,
    user_kubeconfig: Path,
) -> None:  # fmt: skip
    """`finetune logs -f` prints what is written while it follows and returns when the run
    ends: local mode's files (a resumed run continues in its own file), and a member's
    submitter pod log stream. No operator runs: the test plays it (status, pod)."""
    body = yaml.safe_load(manifest(tmp_path).read_text())
    body["metadata"]["namespace"] = NS
    await api.create(FTJ_REF, body)
    logs = home / "logs" / "rayjobs"
    logs.mkdir(parents=True)
    (logs / "tune-0.log").write_text("".join(f"line {i}\n" for i in range(5)))

    following = asyncio.ensure_future(
        cli(capsys, "finetune", "logs", "tune", "--local", "--tail", "1", "-f")
    )
    await asyncio.sleep(1.2)
    with (logs / "tune-0.log").open("a") as log:
        log.write("line 5\n")
    await asyncio.sleep(1.2)
    (logs / "tune-1.log").write_text("resumed\n")
    await asyncio.sleep(1.2)
    assert not following.done()
    await api.patch(FTJ_REF, NS, "tune", {"status": {"phase": "Succeeded"}}, "status")
    code, out, err = await asyncio.wait_for(following, 10)
    assert code == 0, err
    assert out == "line 4\nline 5\n--- tune-1.log\nresumed\n"

    await api.patch(
        FTJ_REF, NS, "tune", {"status": {"phase": "Running", "cluster": AKS, "rayJob": "tune"}},
        "status",
    )  # fmt: skip
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "tune-x1", "namespace": NS,
                        "labels": {"batch.kubernetes.io/job-name": "tune"}},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}  # fmt: skip
    member = KubeClient(AKS, ClusterConfig(server=clusters[AKS].url), attempts=1)
    try:
        await member.create(POD, pod)
        pod_logs = clusters[AKS].emulator.pod_logs
        pod_logs[(NS, "tune-x1")] = "step 1 loss 2.0\n"
        following = asyncio.ensure_future(
            cli(capsys, "finetune", "logs", "tune", "-f", "--kubeconfig", str(user_kubeconfig))
        )
        await asyncio.sleep(1.0)
        pod_logs[(NS, "tune-x1")] += "step 2 loss 1.5\n"
        await asyncio.sleep(1.0)
        assert not following.done()
        await member.patch(POD, NS, "tune-x1", {"status": {"phase": "Succeeded"}}, "status")
        code, out, err = await asyncio.wait_for(following, 10)
    finally:
        await member.close()
    assert code == 0, err
    assert out == "step 1 loss 2.0\nstep 2 loss 1.5\n"


# ----------------------------------------------------------------------------- kubectl plugin
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_kubectl_finds_the_plugin(
    tmp_path: Path, clusters: Clusters, api: KubeClient, user_kubeconfig: Path
) -> None:
    """`kubectl tramontane ...` runs `kubectl-tramontane` from PATH with the same arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "kubectl-tramontane"
    plugin.write_text(f"#!/bin/sh\nexec {sys.executable} -c "
                      "'import sys; from tramontane_cli.main import run; sys.argv[0] = "
                      "\"kubectl-tramontane\"; run()' \"$@\"\n")  # fmt: skip
    plugin.chmod(0o755)
    paths = [str(REPO / p) for p in ("core", "operator", "router", "workers", "cli")]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(paths)}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        "tramontane",
        "get",
        "cc",
        "--kubeconfig",
        str(user_kubeconfig),
        "-o",
        "json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert {i["metadata"]["name"] for i in json.loads(out)["items"]} == {"hub", AKS, "onprem"}
