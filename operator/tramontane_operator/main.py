"""Kopf wiring: the operator's lifecycle, login and liveness, and `run` (one operator).

Kopf hosts the process: it logs in (with the credentials our hub client uses), serves the
liveness endpoint, and starts and stops our control loop (`handlers.manager.Manager`: the
controllers of every kind on our informers and work queues). Kopf watches no resource of
ours itself, so a standby replica costs nothing.

With leader election on (the default), the control loop runs only while this replica holds
the Lease (`tramontane_kube.leader`, as controller-runtime does); a replica that loses it
stops and `run` raises `LeadershipLost` (the process exits non-zero and is restarted as a
standby). On a graceful stop the Lease is released, so a standby takes over at once.

With `webhook_port` set (the default, 9443) every replica also serves the validating
admission webhook (`webhook/`) next to the hub caches it reads; the leader keeps the
ValidatingWebhookConfiguration's caBundle.

Everything is built per run (no handlers on Kopf's global registry), so tests and benchmarks
start, kill and restart operators in-process.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import kopf

from tramontane_kube import (
    ClusterConfig,
    CredentialError,
    KubeClient,
    LeaderElector,
    LeadershipLost,
)
from tramontane_operator.handlers.manager import Manager
from tramontane_operator.handlers.runtime import Runtime
from tramontane_operator.observability import serve_metrics
from tramontane_operator.settings import OperatorSettings
from tramontane_operator.webhook.service import Webhook

ANNOTATION_PREFIX = "tramontane.dev"
log = logging.getLogger(__name__)


def connection_info(
    config: ClusterConfig, token: str | None = None, expiration: datetime | None = None
) -> kopf.ConnectionInfo:
    """Kopf's login from our config; `token` (and its `expiration`) when an exec plugin gave
    it (Kopf logs in again when it expires or the server answers 401)."""
    token = token or config.bearer_token()
    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=config.ca_path,
        ca_data=config.ca_data,
        insecure=config.insecure or None,
        token=token,
        scheme="Bearer" if token else None,
        certificate_data=config.client_cert_data,
        private_key_data=config.client_key_data,
        default_namespace=config.default_namespace,
        expiration=expiration,
    )


class HubLogin:
    """Kopf's login with the hub client's credentials. With an exec plugin, Kopf gets the
    plugin's token and its expiry; Kopf logs in again when it expires or the server answers
    401, so a token already given to Kopf is asked to be replaced (the client's cache may
    hold a newer one already: then that one, without running the plugin)."""

    def __init__(self) -> None:
        self.given: str | None = None

    async def __call__(self, hub: KubeClient) -> kopf.ConnectionInfo:
        if hub.credentials is None:
            return connection_info(hub.config)
        try:
            token = await hub.bearer_token(stale=self.given)
        except CredentialError as exc:
            raise kopf.LoginError(str(exc)) from None
        self.given = token
        return connection_info(hub.config, token, hub.credentials.expiry)


def build_registry(rt: Runtime, lost: asyncio.Event | None = None) -> kopf.OperatorRegistry:
    """Kopf's registry for one run; `lost` is set if this replica loses its leadership."""
    registry = kopf.OperatorRegistry()

    hub_login = HubLogin()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await hub_login(rt.hub)

    running: list[asyncio.Task[None]] = []
    webhooks: list[Webhook] = []

    @kopf.on.startup(registry=registry)
    async def start_control_loop(**_: Any) -> None:
        rt.start()  # the hub caches, on every replica (warm standby, the webhook's facts)
        config = rt.settings.leader_election_config()
        webhook = Webhook(rt) if rt.settings.webhook_port else None
        if webhook is not None:
            await webhook.start()
            webhooks.append(webhook)

        async def lead() -> None:
            if webhook is None:
                await Manager(rt).run()
                return
            ca_bundle = asyncio.create_task(webhook.lead(), name="webhook caBundle")
            try:
                await Manager(rt).run()
            finally:
                ca_bundle.cancel()
                await asyncio.gather(ca_bundle, return_exceptions=True)

        async def elected() -> None:
            try:
                await LeaderElector(rt.hub, config).run(lead) if config else await lead()
            except LeadershipLost:
                log.error("leadership lost: stopping (a standby takes over)")
                if lost is not None:
                    lost.set()

        running.append(asyncio.create_task(elected(), name="control loop"))

    @kopf.on.cleanup(registry=registry)
    async def stop_control_loop(**_: Any) -> None:
        # Before Kopf's exit: our informers and workers are tasks Kopf would wait for.
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for webhook in webhooks:
            await webhook.stop()
        await rt.close()

    return registry


def configure(settings: kopf.OperatorSettings) -> None:
    """Our choices for Kopf's settings (annotation prefix, quiet event posting)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Log lines stay in the log; Events are the transitions we post ourselves.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 30.0


async def run(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    kopf_settings: kopf.OperatorSettings | None = None,
) -> None:
    """Run one operator until `stop_flag` is set (or the task is cancelled)."""
    if settings.webhook_port:
        settings.webhook_service_namespace()  # fail now, with its message, not in Kopf's startup
    rt = Runtime(settings)
    lost = asyncio.Event()
    stopping = asyncio.Event()  # Kopf's stop flag: stop asked, or leadership lost
    watch = asyncio.create_task(_either(stop_flag, lost, stopping))
    kopf_settings = kopf_settings or kopf.OperatorSettings()
    configure(kopf_settings)
    if settings.metrics_port:
        serve_metrics(settings.metrics_port)
    liveness = (
        f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    )
    try:
        await kopf.operator(
            registry=build_registry(rt, lost),
            settings=kopf_settings,
            standalone=True,
            clusterwide=settings.all_namespaces or not settings.namespaces,
            namespaces=() if settings.all_namespaces else settings.namespaces,
            liveness_endpoint=liveness,
            stop_flag=stopping,
            ready_flag=ready_flag,
        )
    finally:
        watch.cancel()
        await rt.close()
    if lost.is_set():
        raise LeadershipLost("this replica lost the operator's Lease")


async def _either(stop_flag: asyncio.Event | None, lost: asyncio.Event, out: asyncio.Event) -> None:
    """Set `out` once `stop_flag` (if any) or `lost` is set."""
    waits = [asyncio.create_task(lost.wait())]
    if stop_flag is not None:
        waits.append(asyncio.create_task(stop_flag.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        out.set()
    finally:
        for task in waits:
            task.cancel()
