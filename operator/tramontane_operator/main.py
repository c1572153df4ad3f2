"""Kopf wiring: the registry of our handlers, Kopf's settings, and `run` (one operator).

Kopf runs the ComputeCluster, Tenant and FineTuneJob handlers; ModelDeployments have a
controller of our own (`handlers/modeldeployment.py`), started with the hub caches when Kopf
starts and stopped before it exits.

Everything is built per run (no handlers on Kopf's global registry), so tests and benchmarks
start, kill and restart operators in-process. Kopf logs in with the same credentials our hub
client uses; its progress and diff-base annotations use the `tramontane.dev` prefix, and its
finalizer (on FineTuneJobs) is ours on ModelDeployments too: `tramontane.dev/cleanup`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from tramontane_kube import ClusterConfig
from tramontane_operator.builders.labels import FINALIZER
from tramontane_operator.handlers import computecluster, finetunejob, tenant
from tramontane_operator.handlers.modeldeployment import ModelDeploymentController
from tramontane_operator.handlers.runtime import Runtime
from tramontane_operator.observability import serve_metrics
from tramontane_operator.settings import OperatorSettings

ANNOTATION_PREFIX = "tramontane.dev"


def connection_info(config: ClusterConfig) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=config.ca_path,
        ca_data=config.ca_data,
        insecure=config.insecure or None,
        token=config.bearer_token(),
        scheme="Bearer" if config.bearer_token() else None,
        certificate_data=config.client_cert_data,
        private_key_data=config.client_key_data,
        default_namespace=config.default_namespace,
    )


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(rt.hub.config)

    controller = ModelDeploymentController(rt)

    @kopf.on.startup(registry=registry)
    async def start_caches(**_: Any) -> None:
        rt.start()
        controller.start()

    @kopf.on.cleanup(registry=registry)
    async def close_clients(**_: Any) -> None:
        # Before Kopf's exit: our informers and workers are tasks Kopf would wait for.
        await controller.stop()
        await rt.close()

    computecluster.register(registry, rt)
    finetunejob.register(registry, rt)
    tenant.register(registry, rt)
    return registry


def configure(settings: kopf.OperatorSettings) -> None:
    """Our choices for Kopf's settings (annotation prefix, finalizer, quiet event posting)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # Handler log lines stay in the log; Events are the transitions we post ourselves.
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
    rt = Runtime(settings)
    kopf_settings = kopf_settings or kopf.OperatorSettings()
    configure(kopf_settings)
    if settings.metrics_port:
        serve_metrics(settings.metrics_port)
    liveness = (
        f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    )
    try:
        await kopf.operator(
            registry=build_registry(rt),
            settings=kopf_settings,
            standalone=True,
            clusterwide=settings.all_namespaces or not settings.namespaces,
            namespaces=() if settings.all_namespaces else settings.namespaces,
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await rt.close()
