"""`LocalStack`: the whole control plane in this process, on this machine.

Start order: a local Ray, the local API server (`apiserver.ApiServer`) on 127.0.0.1, the
local KubeRay (RayServices on Ray Serve, RayJobs as processes), the operator
(`tramontane_operator.main.run`, in its own thread: hub = the local API server, leader
election off, local mode on) and the router (`tramontane_router.server.Router` on a
`HubSource` of the local API server). The ComputeCluster `local` (connection `inCluster`: the
hub is its own member; ingress: Serve's gRPC proxy) is created first, then whatever is applied.
`close()` stops everything in the reverse order and shuts Ray down.

Files under the local home (`$TRAMONTANE_HOME/local`, default `~/.tramontane/local`):
`kubeconfig` (context `tramontane-local`), `state.json` (`pid`, `http`, `grpc`,
`kubeconfig`, `apiKeys`, `apiServer`, `raySession`), `logs/` (every log line, and one file
per RayJob run), `models/`, `data/`, `finetune/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tramontane_kube import COMPUTECLUSTER, NAMESPACE, ClusterConfig, KubeClient, ResourceRef
from tramontane_kube.resources import EVALUATION, FINETUNEJOB, MODELDEPLOYMENT, SECRET, TENANT

from .apiserver import LOCAL_CONTEXT, ApiServer
from .manifests import Manifest

log = logging.getLogger(__name__)
CLUSTER = "local"
# Where the router writes its Lease (its figures of adapter canaries, which the operator reads
# to step or roll back a canary) and the operator looks for it, as the chart's release
# namespace is for both in a cluster.
SYSTEM_NAMESPACE = "tramontane-system"
LOCAL_MODE_ENV = "TRAMONTANE_LOCAL_MODE"
REFS: dict[str, ResourceRef] = {
    "Tenant": TENANT,
    "ModelDeployment": MODELDEPLOYMENT,
    "FineTuneJob": FINETUNEJOB,
    "Evaluation": EVALUATION,
    "ComputeCluster": COMPUTECLUSTER,
    "Secret": SECRET,
    "Namespace": NAMESPACE,
}


@dataclass(frozen=True)
class LocalPaths:
    """Where local mode keeps its files."""

    root: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalPaths:
        env = os.environ if env is None else env
        home = Path(env.get("TRAMONTANE_HOME") or Path.home() / ".tramontane")
        return cls(home.expanduser().absolute() / "local")

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def uri(self) -> str:
        return self.root.as_uri()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _operator_settings(server: str) -> Any:
    from tramontane_operator.settings import OperatorSettings

    values: dict[str, Any] = {
        "cluster_name": CLUSTER,
        "hub": ClusterConfig(server=server),
        "metrics_port": None,
        "liveness_port": None,
        "leader_election": False,
        "probe_interval_s": 5.0,
        "backoff_base_s": 0.5,
        "backoff_max_s": 5.0,
        "resync_interval_s": 30.0,
        "retry_delay_s": 0.3,
        # file:// URIs are read by the operator in local mode only (docs/trust-model.md).
        "local_mode": True,
        # The local API server calls no admission webhook: `local up` checks the files as
        # `tramontane validate` does before applying them.
        "webhook_port": None,
        "router_namespace": SYSTEM_NAMESPACE,
    }
    return OperatorSettings(**values)


def _router_settings() -> Any:
    from tramontane_router.server import RouterSettings

    return RouterSettings(
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        drain_grace_s=2.0,
        budget_namespace=SYSTEM_NAMESPACE,  # its Lease: canary figures for the operator
    )


class LocalStack:
    """Ray, the API server, KubeRay, the operator and the router, in this process."""

    def __init__(self, paths: LocalPaths, *, ray_cpus: int | None = None) -> None:
        self.paths = paths
        self.ray_cpus = ray_cpus
        self.api = ApiServer(LOCAL_CONTEXT)
        self.client: KubeClient | None = None
        self.router: Any = None
        self.api_keys: dict[str, str] = {}
        self.serve_grpc_port = 0
        self._kuberay: Any = None
        self._operator: Any = None
        self.ray_session = ""  # the Ray session this process started, if it did
        self._own_ray = False

    @property
    def config(self) -> ClusterConfig:
        return ClusterConfig(server=self.api.url)

    async def start(self) -> None:
        """Start everything; raises (after stopping what started) when a part cannot."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        from tramontane_operator.handlers.finetunejob import POLL_ENV
        from tramontane_router.hub import HubSource
        from tramontane_router.server import Router

        from .kuberay.controller import LocalKubeRay
        from .kuberay.entrypoints import EntrypointRunner
        from .kuberay.serve import ServeApps
        from .operator_thread import OperatorThread

        self.paths.logs.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(POLL_ENV, "1")  # follow fine-tunes every second, not every few
        gcs = await asyncio.to_thread(self._start_ray)
        await self.api.start()
        self.paths.kubeconfig.write_text(self.api.kubeconfig())
        self.client = KubeClient("local", self.config, attempts=3)
        await self.client.create(
            NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
        )
        self.serve_grpc_port = _free_port()
        await self.client.create(COMPUTECLUSTER, self._compute_cluster())
        runner = EntrypointRunner({"RAY_ADDRESS": gcs}, self.paths.logs / "rayjobs")
        self._kuberay = LocalKubeRay(
            self.config,
            ServeApps(self.serve_grpc_port, _free_port()),
            runner,
            pod_log_files=self.api.emulator.pod_log_files,
        )
        await self._kuberay.start()
        self._operator = OperatorThread(_operator_settings(self.api.url))
        await self._operator.start(ready_timeout_s=60.0)
        self.router = Router(HubSource(self.config), _router_settings())
        await self.router.start()

    def _start_ray(self) -> str:
        import ray

        if not ray.is_initialized():
            cpus = self.ray_cpus or max(4, os.cpu_count() or 1)
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                namespace="tramontane-local",
            )
            self._own_ray = True
            self.ray_session = _ray_session()
        return str(ray.get_runtime_context().gcs_address)

    def _compute_cluster(self) -> dict[str, Any]:
        return {
            "apiVersion": "tramontane.dev/v1alpha1",
            "kind": "ComputeCluster",
            "metadata": {"name": CLUSTER},
            "spec": {
                "cloud": "onprem",
                "region": "local",
                "connection": {"inCluster": True},
                "ingress": {"grpcEndpoint": f"127.0.0.1:{self.serve_grpc_port}", "tls": False},
            },
        }

    async def apply(self, manifests: Sequence[Manifest]) -> None:
        """Create each object, or merge-patch it where it exists (as `kubectl apply` would)."""
        if self.client is None:
            raise RuntimeError("apply before start")
        for manifest in manifests:
            ref = REFS[manifest.kind]
            obj = manifest.obj
            meta = obj.get("metadata") or {}
            namespace = meta.get("namespace") or ("default" if ref.namespaced else None)
            if ref.namespaced:
                obj = {**obj, "metadata": {**meta, "namespace": namespace}}
            current = await self.client.get(ref, namespace, str(meta.get("name")))
            await self.client.apply(ref, obj, current)

    def state(self) -> dict[str, Any]:
        """What `state.json` holds."""
        router = self.router
        return {
            "pid": os.getpid(),
            "http": f"http://127.0.0.1:{router.http_port}" if router else None,
            "grpc": f"127.0.0.1:{router.grpc_port}" if router else None,
            "kubeconfig": str(self.paths.kubeconfig),
            "apiKeys": dict(self.api_keys),
            "apiServer": self.api.url,
            "logs": str(self.paths.logs),
            "raySession": self.ray_session,
        }

    def write_state(self) -> None:
        tmp = self.paths.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        tmp.replace(self.paths.state)

    async def close(self) -> None:
        """Stop the router, the operator, KubeRay (Serve apps, RayJob processes), the API
        server and Ray; remove state.json, and the kubeconfig (its port will answer no more:
        with it gone, the CLI says local mode is not running instead of failing to connect)."""
        for written in (self.paths.state, self.paths.kubeconfig):
            with contextlib.suppress(FileNotFoundError):
                written.unlink()
        if self.router is not None:
            with contextlib.suppress(Exception):
                await self.router.drain()
        if self._operator is not None:
            await self._operator.stop()
        if self._kuberay is not None:
            await self._kuberay.stop()
            if self._own_ray:
                _quiet_ray_prints()
            await asyncio.to_thread(self._kuberay.serve_apps.shutdown)
        if self.client is not None:
            await self.client.close()
        await self.api.close()
        if self._own_ray:
            import ray

            await asyncio.to_thread(ray.shutdown)
            self._own_ray = False


def _quiet_ray_prints() -> None:
    """Serve's shutdown makes Ray print, straight to stdout, that the controller's
    `graceful_shutdown` task failed and will be retried (by design: that task ends when its
    actor is killed), between local mode's last lines. Ray's own switch for those prints (the
    one its debugger turns off while it holds the terminal) is turned off; the message stays in
    Ray's session logs."""
    from ray._private import worker

    if hasattr(worker, "_worker_logs_enabled"):
        worker._worker_logs_enabled = False


def _ray_session() -> str:
    """The name of the Ray session this process started (`session_<date>_<pid>`)."""
    import ray

    node: Any = ray._private.worker._global_node
    return str(node.session_name)


def ray_processes(session: str) -> list[int]:
    """Processes of Ray session `session` still running (GCS, raylet, workers, agents: each
    names the session directory on its command line)."""
    if not session:
        return []
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if session.encode() in cmdline and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return sorted(found)
