"""The local API server: a `ValidatingEmulator` on a TCP port, with a kubeconfig for it.

It serves our CRDs and KubeRay's RayJob and RayService CRDs (plus the core kinds the operator
and router use), admits writes as a real API server would, and can be stopped and started
again on the same port (tests use that for a member cluster going away and coming back).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiohttp.web
import yaml

from .kube_emulator import CrdInfo, ValidatingEmulator, kuberay_crds, our_crds

LOCAL_CONTEXT = "tramontane-local"


class ApiServer:
    """One emulated cluster behind `http://127.0.0.1:PORT` (port 0: a free one)."""

    def __init__(
        self,
        name: str = LOCAL_CONTEXT,
        *,
        crds: Iterable[CrdInfo] | None = None,
        validate: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        given = list(crds) if crds is not None else [*our_crds(), *kuberay_crds()]
        self.emulator = ValidatingEmulator(cluster_name=name, crds=given, validate=validate)
        self._runner: aiohttp.web.ServerRunner | None = None
        self._entered = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def up(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        if not self._entered:
            await self.emulator.__aenter__()
            self._entered = True
        # Open watch streams would hold a graceful shutdown for a minute: drop them at once,
        # as a crashed server would.
        runner = aiohttp.web.ServerRunner(
            aiohttp.web.Server(self.emulator), shutdown_timeout=0.1, handle_signals=False
        )
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening; the objects stay (start() serves them again)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def close(self) -> None:
        """Stop listening and release the emulator."""
        await self.stop()
        if self._entered:
            self._entered = False
            await self.emulator.__aexit__(None, None, None)

    def kubeconfig(self, context: str | None = None) -> str:
        """A kubeconfig for this server (token auth, which it accepts as any client's)."""
        name = context or self.name
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {"token": f"token-{name}"}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        }
        return yaml.safe_dump(config, sort_keys=False)
