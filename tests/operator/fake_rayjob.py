"""A fake KubeRay RayJob controller for the operator tier, writing through the API like KubeRay.

Each RayJob goes "" -> Initializing -> Running (jobStatus RUNNING), then Complete/SUCCEEDED or
Failed/FAILED when the test says so (`finish`) — or, with `run_entrypoints=True`, when its
entrypoint, really run as a subprocess, exits (what KubeRay's submitter pod would do). Setting
`spec.suspend` moves it to Suspended (and kills a running entrypoint, as KubeRay deletes the
Ray cluster); clearing it starts it again from Initializing. Statuses are KubeRay v1.7's
fields and are checked against its CRD by the emulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from operator_harness import Cluster, FakeKubeRay

RAYJOBS = "ray.io/v1/rayjobs"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeRayJobs(FakeKubeRay):
    """KubeRay's RayJob controller (FakeKubeRay's loop; RayJobs instead of RayServices)."""

    def __init__(
        self,
        clusters: Iterable[Cluster],
        interval_s: float = 0.1,
        run_entrypoints: bool = False,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        super().__init__(clusters, interval_s)
        self.run_entrypoints = run_entrypoints
        self.env = dict(env or {})
        self.log_dir = log_dir
        self.outcomes: dict[str, str] = {}  # RayJob name -> SUCCEEDED / FAILED
        self.seen: set[tuple[str, str]] = set()  # (cluster, name) of every RayJob observed
        self.runs: dict[str, int] = {}  # RayJob name -> entrypoint starts
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    def finish(self, name: str, job_status: str = "SUCCEEDED") -> None:
        self.outcomes[name] = job_status

    def running(self, name: str) -> bool:
        """Whether the RayJob's entrypoint process is running now."""
        return name in self._procs

    async def stop(self) -> None:
        await super().stop()
        for name in list(self._procs):
            await self._kill(name)

    async def _sync(self, cluster: Cluster) -> None:
        for rayjob in cluster.emulator.stored_all(RAYJOBS):
            await self._sync_one(cluster, rayjob)

    def _next(self, name: str, spec: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
        state = old.get("jobDeploymentStatus") or ""
        if spec.get("suspend"):
            return {**old, "jobDeploymentStatus": "Suspended", "jobStatus": ""}
        if state in ("Complete", "Failed"):
            return dict(old)
        outcome = self.outcomes.get(name)
        if outcome is not None and state == "Running":
            done = "Complete" if outcome == "SUCCEEDED" else "Failed"
            extra = {} if outcome == "SUCCEEDED" else {"reason": "AppFailed", "failed": 1}
            return {**old, "jobDeploymentStatus": done, "jobStatus": outcome, "endTime": _now(),
                    **extra}  # fmt: skip
        if state in ("", "Suspended"):
            return {**old, "jobDeploymentStatus": "Initializing", "jobStatus": "",
                    "rayClusterName": f"{name}-raycluster"}  # fmt: skip
        if state == "Initializing":
            return {**old, "jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
                    "jobId": f"{name}-1", "startTime": _now()}  # fmt: skip
        return dict(old)

    async def _sync_one(self, cluster: Cluster, rayjob: Mapping[str, Any]) -> None:
        meta, spec = rayjob["metadata"], rayjob.get("spec") or {}
        name = meta["name"]
        self.seen.add((cluster.name, name))
        old = rayjob.get("status") or {}
        want = self._next(name, spec, old)
        if spec.get("suspend"):
            await self._kill(name)
        elif (
            self.run_entrypoints
            and want.get("jobDeploymentStatus") == "Running"
            and name not in self._procs
            and name not in self.outcomes
        ):
            await self._spawn(name, spec["entrypoint"])
        if want == old:
            return
        url = f"{cluster.url}/apis/ray.io/v1/namespaces/{meta['namespace']}/rayjobs/{name}/status"
        async with self._session.patch(
            url, json={"status": want}, headers={"Content-Type": "application/merge-patch+json"}
        ) as resp:
            await resp.read()

    async def _spawn(self, name: str, entrypoint: str) -> None:
        argv = shlex.split(entrypoint)
        if argv[0] == "python":
            argv[0] = sys.executable
        out: Any = asyncio.subprocess.DEVNULL
        if self.log_dir is not None:
            out = (self.log_dir / f"{name}-{self.runs.get(name, 0)}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **self.env}
        )
        self._procs[name] = proc
        self.runs[name] = self.runs.get(name, 0) + 1

        async def wait() -> None:
            code = await proc.wait()
            if self._procs.get(name) is proc:
                del self._procs[name]
                self.outcomes[name] = "SUCCEEDED" if code == 0 else "FAILED"

        asyncio.get_running_loop().create_task(wait())

    async def _kill(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
