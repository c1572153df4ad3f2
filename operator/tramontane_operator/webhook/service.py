"""The webhook in the operator process: server, certificate and facts, wired to the Runtime.

Started next to the hub caches on every replica (`main.py`), so any replica answers a review;
the leader alone also keeps the ValidatingWebhookConfiguration's caBundle (`lead_task`).
Reviews are answered from the hub caches (`rt.indexes`) once they have synced, never from a
half-filled cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tramontane_operator.handlers.runtime import Runtime

from .certs import service_hostnames
from .checks import Facts
from .keeper import CertificateKeeper
from .server import WebhookServer

log = logging.getLogger(__name__)


class Webhook:
    """One replica's webhook: HTTPS server, certificate keeper, facts from the hub caches."""

    def __init__(self, rt: Runtime) -> None:
        settings = rt.settings
        namespace = settings.webhook_service_namespace()
        self.rt = rt
        self.keeper = CertificateKeeper(
            rt.hub,
            namespace,
            settings.webhook_secret,
            service_hostnames(settings.webhook_service, namespace),
            self_managed=not settings.webhook_cert_manager,
        )
        self.server = WebhookServer(
            self.facts, self.keeper.ssl_context, settings.webhook_port or 0, settings.webhook_host
        )
        self._tasks: list[asyncio.Task[None]] = []

    def facts(self) -> Facts | None:
        """What the checks read; None until the hub caches have synced."""
        indexes, settings = self.rt.indexes, self.rt.settings
        if not indexes.is_synced():
            return None
        return Facts(
            tenants=indexes.tenants(),
            clusters=indexes.compute_clusters(),
            deployments=indexes.deployments(),
            jobs=indexes.jobs(),
            tenant_required=self.rt.settings.webhook_tenant_required,
            key_namespaces=(
                frozenset(settings.key_namespaces) if settings.key_namespaces is not None else None
            ),
            kubeconfig_namespace=settings.kubeconfig_secret_namespace,
        )

    async def start(self) -> None:
        await self.server.start()
        refresh = self.rt.settings.webhook_refresh_s
        self._tasks.append(asyncio.create_task(self.keeper.run(refresh), name="webhook cert"))

    async def lead(self) -> None:
        """The leader's part (runs until cancelled): the caBundle, when self-managed."""
        if self.rt.settings.webhook_cert_manager:
            return
        await self.keeper.publish_loop(
            self.rt.settings.webhook_configuration, self.rt.settings.webhook_refresh_s
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop()
