"""`LocalKubeRay`: KubeRay's RayService and RayJob controllers, for one local Ray.

It watches RayServices and RayJobs in an API server (informers, as KubeRay's controllers do)
and reconciles level-triggered, on every change and every `interval_s`:
- a RayService's serveConfigV2 applications are deployed on Ray Serve (`serve.ServeApps`),
  redeployed when an application's config changes and deleted with the RayService (or when
  the config drops them); its status is then written as KubeRay v1.7 writes it (`status`),
  healthy once deployed, failed (with Serve's error) when a deploy fails;
- a RayJob's entrypoint runs as a local process (`entrypoints.EntrypointRunner`) once its
  status reaches Running; `spec.suspend` kills it; its exit moves the RayJob to
  Complete/SUCCEEDED or Failed/FAILED; a deleted RayJob's process is killed. Each run also gets
  the Pod KubeRay's submitter Job would make (`<rayjob>-run<N>`, labelled with the Job's name),
  whose log the API server serves from the process's log file (`pod_log_files`): the operator
  reads an Evaluation's scores there, as it does in a cluster.
Deploys block for a while (replicas load the model): they run one at a time in a thread, so
RayJobs keep moving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from tramontane_kube import (
    POD,
    RAYSERVICE,
    ApiError,
    ClusterConfig,
    Informer,
    KubeClient,
    NotFound,
    Unreachable,
)
from tramontane_kube import ResourceRef as _Ref

from .entrypoints import EntrypointRunner
from .serve import ServeApps
from .status import next_rayjob_status, rayservice_status, serve_applications

log = logging.getLogger(__name__)
RAYJOB = _Ref("ray.io", "v1", "rayjobs", "RayJob")
Key = tuple[str, str]  # (namespace, name)


class LocalKubeRay:
    """RayServices on `serve_apps`, RayJobs through `runner`, for the API server `config`."""

    def __init__(
        self,
        config: ClusterConfig,
        serve_apps: ServeApps,
        runner: EntrypointRunner,
        *,
        interval_s: float = 0.5,
        pod_log_files: MutableMapping[tuple[str, str], Path] | None = None,
    ) -> None:
        self.config = config
        # (namespace, submitter pod) -> the run's log file, read by the API server.
        self.pod_log_files = {} if pod_log_files is None else pod_log_files
        self.pods: dict[str, list[tuple[str, str]]] = {}  # RayJob name -> its submitter pods
        self.serve_apps = serve_apps
        self.runner = runner
        self.interval_s = interval_s
        self.deployed: dict[Key, dict[str, str]] = {}  # RayService -> {app name: its config}
        # RayService -> (the applications a deploy failed for, Serve's error); a change retries.
        self.failed: dict[Key, tuple[dict[str, str], str]] = {}
        self._wake = asyncio.Event()
        self._deploying: dict[Key, asyncio.Task[None]] = {}
        self._serve_lock = asyncio.Lock()
        self._client: KubeClient | None = None
        self._informers: list[Informer] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._client = KubeClient("local-kuberay", self.config, user_agent="tramontane-kuberay")
        for ref in (RAYSERVICE, RAYJOB):
            informer = Informer(self._client, ref, {}, lambda *_: self._wake.set(),
                                max_backoff_s=2.0)  # fmt: skip
            informer.start()
            self._informers.append(informer)
        self._task = asyncio.create_task(self._loop(), name="local-kuberay")

    async def stop(self) -> None:
        """Stop reconciling; kill entrypoints and delete every Serve application deployed."""
        tasks = [t for t in (self._task, *self._deploying.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for informer in self._informers:
            await informer.stop()
        await self.runner.close()
        async with self._serve_lock:
            for apps in self.deployed.values():
                for name in apps:
                    with contextlib.suppress(Exception):  # Serve may be gone already
                        await asyncio.to_thread(self.serve_apps.delete, name)
            self.deployed.clear()
        if self._client is not None:
            await self._client.close()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self.sync()
            except (ApiError, Unreachable) as exc:  # the next round tries again
                log.warning("local KubeRay: %s", exc)

    async def sync(self) -> None:
        """One round over every RayService and RayJob."""
        rayservices, rayjobs = (dict(i.items) for i in self._informers)
        for key in list(self.deployed):
            if key not in rayservices and key not in self._deploying:
                self._start_deploy(key, None)
        for key, rs in rayservices.items():
            await self._sync_rayservice(key, rs)
        names = {name for _, name in rayjobs}
        for name in self.runner.names() - names:
            await self.runner.forget(name)  # the RayJob was deleted
            await self._delete_pods(name)
        for rayjob in rayjobs.values():
            await self._sync_rayjob(rayjob)

    # ------------------------------------------------------------------ RayServices
    async def _sync_rayservice(self, key: Key, rs: Mapping[str, Any]) -> None:
        wanted = _configs(rs)
        if key in self._deploying:
            return
        failure = self.failed.get(key)
        if wanted != self.deployed.get(key, {}) and (failure is None or failure[0] != wanted):
            self._start_deploy(key, rs)
            return
        failed = failure is not None and failure[0] == wanted
        want = rayservice_status(rs, failed, failure[1] if failure is not None else "")
        if rs.get("status") != want:
            await self._write_status(RAYSERVICE, rs, want)

    def _start_deploy(self, key: Key, rs: Mapping[str, Any] | None) -> None:
        task = asyncio.create_task(self._deploy(key, rs), name=f"deploy {key[0]}/{key[1]}")
        self._deploying[key] = task

        def done(_: asyncio.Task[None]) -> None:
            self._deploying.pop(key, None)
            self._wake.set()

        task.add_done_callback(done)

    async def _deploy(self, key: Key, rs: Mapping[str, Any] | None) -> None:
        """Bring Serve to the RayService's applications (none: it was deleted)."""
        wanted = _configs(rs) if rs is not None else {}
        grpc_options = _grpc_options(rs) if rs is not None else None
        have = self.deployed.setdefault(key, {})
        async with self._serve_lock:
            try:
                for name in [n for n in have if n not in wanted]:
                    await asyncio.to_thread(self.serve_apps.delete, name)
                    del have[name]
                for app in serve_applications(rs) if rs is not None else []:
                    name = str(app["name"])
                    if have.get(name) != wanted[name]:
                        log.info("deploying Serve application %s", name)
                        await asyncio.to_thread(self.serve_apps.deploy, app, grpc_options)
                        have[name] = wanted[name]
                self.failed.pop(key, None)
            except Exception as exc:  # Serve's or the config's error: the RayService's status
                log.warning("RayService %s/%s: deploy failed: %s", *key, exc)
                message = " ".join(str(exc).split())[:1000] or type(exc).__name__
                self.failed[key] = (wanted, message)
        if rs is None:
            self.deployed.pop(key, None)

    # ---------------------------------------------------------------------- RayJobs
    async def _sync_rayjob(self, rayjob: Mapping[str, Any]) -> None:
        meta, spec = rayjob["metadata"], rayjob.get("spec") or {}
        name = meta["name"]
        old = rayjob.get("status") or {}
        want = next_rayjob_status(name, spec, old, self.runner.outcomes.get(name))
        if spec.get("suspend"):
            await self.runner.kill(name)
        elif (
            want.get("jobDeploymentStatus") == "Running"
            and not self.runner.running(name)
            and name not in self.runner.outcomes
        ):
            await self.runner.spawn(name, str(spec.get("entrypoint") or ""))
            await self._submitter_pod(meta["namespace"], name)
        if want != old:
            await self._write_status(RAYJOB, rayjob, want)

    async def _submitter_pod(self, namespace: str, name: str) -> None:
        """The Pod of the run just started, its log being the run's log file."""
        run = self.runner.runs.get(name, 0) - 1
        path = self.runner.log_path(name, run)
        if self._client is None or run < 0 or path is None:
            return
        pod = f"{name}-run{run}"
        self.pod_log_files[(namespace, pod)] = path
        self.pods.setdefault(name, []).append((namespace, pod))
        labels = {"batch.kubernetes.io/job-name": name, "job-name": name,
                  "app.kubernetes.io/created-by": "tramontane-local-kuberay"}  # fmt: skip
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "ray-job-submitter", "image": "local"}]},
        }
        try:
            await self._client.create(POD, body)
        except ApiError as exc:  # e.g. left from an earlier process: the log is still served
            log.debug("submitter pod %s/%s: %s", namespace, pod, exc)

    async def _delete_pods(self, name: str) -> None:
        for namespace, pod in self.pods.pop(name, []):
            self.pod_log_files.pop((namespace, pod), None)
            if self._client is not None:
                with contextlib.suppress(NotFound):
                    await self._client.delete(POD, namespace, pod)

    async def _write_status(
        self, ref: _Ref, obj: Mapping[str, Any], status: Mapping[str, Any]
    ) -> None:
        if self._client is None:
            return
        meta = obj["metadata"]
        await self._client.patch(
            ref, meta["namespace"], meta["name"], {"status": dict(status)}, subresource="status"
        )


def _configs(rs: Mapping[str, Any]) -> dict[str, str]:
    """Each application's config, as text to compare (what a change redeploys)."""
    return {str(a["name"]): json.dumps(a, sort_keys=True) for a in serve_applications(rs)}


def _grpc_options(rs: Mapping[str, Any]) -> dict[str, Any] | None:
    import yaml

    text = (rs.get("spec") or {}).get("serveConfigV2") or ""
    config = yaml.safe_load(text) or {}
    options = config.get("grpc_options")
    return dict(options) if isinstance(options, dict) else None
