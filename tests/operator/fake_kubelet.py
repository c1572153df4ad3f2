"""A fake Job controller and kubelet for the operator tier: runs validation Jobs for real.

For each `batch/v1` Job in a cluster it creates the Job's pod through the API (labelled
`job-name` / `batch.kubernetes.io/job-name` like the Job controller does). A pod whose
PersistentVolumeClaims do not all exist under the cluster's claim root stays Pending and
unschedulable with the scheduler's message; otherwise its container command is really run
as a subprocess with `TRAMONTANE_PVC_ROOT` pointing at the claim root (the claims "mounted"
there) and its termination-message file redirected to a temporary file, whose content
becomes the container's `state.terminated.message`, as the kubelet does with
`terminationMessagePolicy: File`. The Job then turns Complete or Failed. Pods of deleted Jobs
are deleted (what the garbage collector does with background propagation).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from operator_harness import Cluster
from tramontane_workers.contract.pvc import PVC_ROOT_ENV

JOBS = "batch/v1/jobs"
PODS = "v1/pods"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubelet:
    """Job controller + scheduler + kubelet of the emulated clusters, for validation Jobs."""

    def __init__(
        self, clusters: Iterable[Cluster], claim_roots: Mapping[str, Path], interval_s: float = 0.1
    ) -> None:
        self.clusters = list(clusters)
        self.claim_roots = dict(claim_roots)  # cluster name -> directory of its claims
        self.interval_s = interval_s
        self.runs: list[tuple[str, str]] = []  # (cluster, Job name) of every pod really run
        self._running: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._tasks] if t), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            for cluster in self.clusters:
                if cluster.up:
                    with contextlib.suppress(aiohttp.ClientError):
                        await self._sync(cluster)
            await asyncio.sleep(self.interval_s)

    async def _request(self, method: str, url: str, body: Any) -> None:
        assert self._session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self._session.request(method, url, json=body, headers=headers) as resp:
            await resp.read()

    async def _sync(self, cluster: Cluster) -> None:
        jobs = {j["metadata"]["uid"]: j for j in cluster.emulator.stored_all(JOBS)}
        pods: dict[str, dict[str, Any]] = {}
        for pod in cluster.emulator.stored_all(PODS):
            meta = pod["metadata"]
            uid = (meta.get("labels") or {}).get("controller-uid", "")
            if uid in jobs:
                pods[uid] = pod
            else:  # garbage-collect the pods of Jobs that are gone
                url = f"{cluster.url}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                await self._request("DELETE", url, None)
        for uid, job in jobs.items():
            if uid not in pods:
                await self._create_pod(cluster, job)
            elif not (job.get("status") or {}).get("conditions"):
                await self._run(cluster, job, pods[uid])

    async def _create_pod(self, cluster: Cluster, job: Mapping[str, Any]) -> None:
        meta, template = job["metadata"], job["spec"]["template"]
        name = meta["name"]
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "job-name": name,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": meta["uid"],
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{name}-",
                "namespace": meta["namespace"],
                "labels": labels,
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        await self._request(
            "POST", f"{cluster.url}/api/v1/namespaces/{meta['namespace']}/pods", pod
        )

    async def _run(self, cluster: Cluster, job: Mapping[str, Any], pod: Mapping[str, Any]) -> None:
        key = (cluster.name, job["metadata"]["namespace"], job["metadata"]["uid"])
        if key in self._running:
            return
        root = self.claim_roots.get(cluster.name)
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"].get("volumes") or []
            if "persistentVolumeClaim" in v
        ]
        missing = [c for c in claims if root is None or not (root / c).is_dir()]
        pod_url = (
            f"{cluster.url}/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
            f"{pod['metadata']['name']}"
        )
        if missing:
            if not (pod.get("status") or {}).get("conditions"):
                message = (
                    f'0/3 nodes are available: persistentvolumeclaim "{missing[0]}" not found.'
                    " preemption: 0/3 nodes are available: 3 Preemption is not helpful."
                )
                cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": message, "lastTransitionTime": _now()}  # fmt: skip
                await self._request("PATCH", pod_url, {"status": {"conditions": [cond]}})
            return
        self._running.add(key)
        task = asyncio.create_task(self._execute(cluster, job, pod, pod_url, root))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(
        self,
        cluster: Cluster,
        job: Mapping[str, Any],
        pod: Mapping[str, Any],
        pod_url: str,
        root: Path | None,
    ) -> None:
        container = pod["spec"]["containers"][0]
        log_path = container.get("terminationMessagePath", "/dev/termination-log")
        with tempfile.TemporaryDirectory() as tmp:
            local_log = Path(tmp) / "termination-log"
            local_log.touch()
            argv = [str(local_log) if a == log_path else a for a in container["command"]]
            if argv[0] == "python":
                argv[0] = sys.executable
            env = {**os.environ, PVC_ROOT_ENV: str(root)}
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env
            )
            code = await proc.wait()
            message = local_log.read_bytes()[:4096].decode("utf-8", "replace")
        self.runs.append((cluster.name, job["metadata"]["name"]))
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "finishedAt": _now(),
        }
        if message:
            terminated["message"] = message
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": container["name"], "state": {"terminated": terminated}}],
        }
        await self._request("PATCH", pod_url, {"status": status})
        meta = job["metadata"]
        job_url = f"{cluster.url}/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}"
        kind = "Complete" if code == 0 else "Failed"
        cond = {"type": kind, "status": "True", "lastTransitionTime": _now()}
        if code:
            cond |= {"reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}  # fmt: skip
        counts = {"succeeded": 1} if code == 0 else {"failed": 1}
        await self._request("PATCH", job_url, {"status": {"conditions": [cond], **counts}})
        self._running.discard((cluster.name, meta["namespace"], meta["uid"]))
