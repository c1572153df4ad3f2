"""A fake KubeRay RayJob controller for the operator tier, writing through the API like KubeRay.

Each RayJob goes "" -> Initializing -> Running (jobStatus RUNNING), then Complete/SUCCEEDED or
Failed/FAILED when the test says so (`finish`) — or, with `run_entrypoints=True`, when its
entrypoint, really run as a subprocess, exits (what KubeRay's submitter pod would do). The
state machine and the entrypoint processes are local mode's KubeRay's
(`tramontane_local.kuberay`); this fake only reads the emulators' stores directly and lets
tests decide outcomes. Setting
`spec.suspend` moves it to Suspended (and kills a running entrypoint, as KubeRay deletes the
Ray cluster); clearing it starts it again from Initializing. Statuses are KubeRay v1.7's
fields and are checked against its CRD by the emulators.

With `submitters=True` it also creates, when a RayJob starts running, KubeRay's submitter
`batch/v1` Job (K8sJobMode: named like the RayJob, in its namespace, KubeRay's labels), and
deletes it when the RayJob is suspended or gone. Its pod is the Job controller's business (the
fake kubelet's, which runs the container's stand-in command: it exits at once); what
`ray job logs --follow` would print there is what the test appends with `append_log` — for
an evaluation, the evaluator's own result lines (`append_result`: `result_line` of the
workers' contract, exactly what `python -m tramontane_workers.evaluate` prints).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from operator_harness import Cluster, FakeKubeRay
from tramontane_local.kuberay.entrypoints import EntrypointRunner
from tramontane_local.kuberay.status import next_rayjob_status
from tramontane_workers.contract.eval_config import EvalResult, result_line

RAYJOBS = "ray.io/v1/rayjobs"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


class FakeRayJobs(FakeKubeRay):
    """KubeRay's RayJob controller (FakeKubeRay's loop; RayJobs instead of RayServices)."""

    def __init__(
        self,
        clusters: Iterable[Cluster],
        interval_s: float = 0.1,
        run_entrypoints: bool = False,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        submitters: bool = False,
    ) -> None:
        super().__init__(clusters, interval_s)
        self.submitters = submitters
        self.run_entrypoints = run_entrypoints
        self.seen: set[tuple[str, str]] = set()  # (cluster, name) of every RayJob observed
        self.runner = EntrypointRunner(env, log_dir)
        self.outcomes = self.runner.outcomes  # RayJob name -> SUCCEEDED / FAILED
        self.runs = self.runner.runs  # RayJob name -> entrypoint starts

    def finish(self, name: str, job_status: str = "SUCCEEDED") -> None:
        self.outcomes[name] = job_status

    def running(self, name: str) -> bool:
        """Whether the RayJob's entrypoint process is running now."""
        return self.runner.running(name)

    async def stop(self) -> None:
        await super().stop()
        await self.runner.close()

    def append_log(self, cluster: Cluster, namespace: str, name: str, text: str) -> str:
        """Append `text` to the log of RayJob `name`'s newest submitter pod; the pod's name."""
        pods = [
            p for p in cluster.emulator.stored_all(PODS)
            if p["metadata"]["namespace"] == namespace
            and (p["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == name
        ]  # fmt: skip
        if not pods:
            raise LookupError(f"no submitter pod of RayJob {namespace}/{name} in {cluster.name}")
        pod = max(pods, key=lambda p: str(p["metadata"].get("creationTimestamp")))
        key = (namespace, pod["metadata"]["name"])
        cluster.emulator.pod_logs[key] = cluster.emulator.pod_logs.get(key, "") + text
        return key[1]

    def append_result(self, cluster: Cluster, namespace: str, name: str, result: EvalResult) -> str:
        """Append the evaluator's line for `result` to RayJob `name`'s submitter log (as Ray
        prints a driver's stdout there); the pod's name."""
        return self.append_log(cluster, namespace, name, result_line(result) + "\n")

    async def _sync(self, cluster: Cluster) -> None:
        rayjobs = cluster.emulator.stored_all(RAYJOBS)
        for rayjob in rayjobs:
            await self._sync_one(cluster, rayjob)
        if self.submitters:
            await self._sync_submitters(cluster, rayjobs)

    async def _sync_submitters(self, cluster: Cluster, rayjobs: list[dict[str, Any]]) -> None:
        """A submitter Job for each RayJob that runs (or ran) its job; none for the others."""
        wanted = {
            (r["metadata"]["namespace"], r["metadata"]["name"]): r
            for r in rayjobs
            if not (r.get("spec") or {}).get("suspend")
            and (r.get("status") or {}).get("jobDeploymentStatus") in ("Running", "Complete", "Failed")
        }  # fmt: skip
        jobs = {
            (j["metadata"]["namespace"], j["metadata"]["name"]): j
            for j in cluster.emulator.stored_all(JOBS)
            if (j["metadata"].get("labels") or {}).get("ray.io/originated-from-crd") == "RayJob"
        }
        for (namespace, name), rayjob in wanted.items():
            if (namespace, name) not in jobs:
                url = f"{cluster.url}/apis/batch/v1/namespaces/{namespace}/jobs"
                async with self._session.post(url, json=_submitter_job(rayjob)) as resp:
                    await resp.read()
        for namespace, name in jobs.keys() - wanted.keys():
            url = f"{cluster.url}/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
            async with self._session.delete(url) as resp:
                await resp.read()

    async def _sync_one(self, cluster: Cluster, rayjob: Mapping[str, Any]) -> None:
        meta, spec = rayjob["metadata"], rayjob.get("spec") or {}
        name = meta["name"]
        self.seen.add((cluster.name, name))
        old = rayjob.get("status") or {}
        want = next_rayjob_status(name, spec, old, self.outcomes.get(name))
        if spec.get("suspend"):
            await self.runner.kill(name)
        elif (
            self.run_entrypoints
            and want.get("jobDeploymentStatus") == "Running"
            and not self.runner.running(name)
            and name not in self.outcomes
        ):
            await self.runner.spawn(name, spec["entrypoint"])
        if want == old:
            return
        url = f"{cluster.url}/apis/ray.io/v1/namespaces/{meta['namespace']}/rayjobs/{name}/status"
        async with self._session.patch(
            url, json={"status": want}, headers={"Content-Type": "application/merge-patch+json"}
        ) as resp:
            await resp.read()


def _submitter_job(rayjob: Mapping[str, Any]) -> dict[str, Any]:
    """KubeRay v1.7's submitter Job (`createNewK8sJob`), with a stand-in command."""
    meta = rayjob["metadata"]
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container = {
        "name": "ray-job-submitter",
        "image": head["image"],
        "command": ["python", "-c", "pass"],  # stands for `ray job submit; ray job logs -f`
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {
                "ray.io/originated-from-cr-name": meta["name"],
                "ray.io/originated-from-crd": "RayJob",
                "app.kubernetes.io/created-by": "kuberay-operator",
            },
        },
        "spec": {
            "backoffLimit": 2,
            "template": {"spec": {"containers": [container], "restartPolicy": "Never"}},
        },
    }
