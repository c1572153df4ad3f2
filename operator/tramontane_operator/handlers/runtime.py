"""State the controllers share while the operator runs: clients, caches, members, the ledger.

One `Runtime` per operator run: the hub client, the hub caches (`indexes`), the Event
recorder, the member clusters, the one GPU ledger (`quotas.ledger`), the statuses we last
wrote, and the controllers of every kind (`controllers`, to wake keys of another kind). A
child event from any member cluster queues its owner; a member changing health queues every
ModelDeployment, FineTuneJob and Evaluation (at low priority: a refresh, not new work)
instead of polling.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from tramontane_api.v1alpha1 import ComputeCluster, Tenant
from tramontane_kube import (
    SECRET,
    ApiError,
    ClusterConfig,
    KubeClient,
    KubeconfigError,
    NotFound,
    ResourceRef,
    Unreachable,
)
from tramontane_kube.patches import diff
from tramontane_operator.builders.labels import OWNER_NAME_LABEL, OWNER_NAMESPACE_LABEL
from tramontane_operator.kube import ClusterRegistry, MemberCluster
from tramontane_operator.kube.clusters import NOT_PROBED
from tramontane_operator.kube.workqueue import HIGH, LOW, WorkQueue
from tramontane_operator.observability import PhaseTracker, set_cluster_reachable
from tramontane_operator.placement import ClusterView
from tramontane_operator.quotas import Workload
from tramontane_operator.quotas.ledger import Ledger
from tramontane_operator.reconcile.admission import admissible_now, unplaceable, waiting
from tramontane_operator.reconcile.evaluation_inputs import queued_workloads
from tramontane_operator.settings import OperatorSettings

from .controller import Controller, Key
from .events import EventRecorder
from .indexes import Indexes

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how late a refresh after a release comes (coalescing a burst of them)
# ModelDeployment phases that more GPUs or quota may change: queued, or short of capacity.
_MAY_GROW = frozenset({None, "Queued", "Pending", "Degraded", "Progressing"})

MODELDEPLOYMENTS = "ModelDeployment"
FINETUNEJOBS = "FineTuneJob"
EVALUATIONS = "Evaluation"
TENANTS = "Tenant"
COMPUTECLUSTERS = "ComputeCluster"


def _user_agent() -> str:
    """`tramontane-operator/VERSION`: API servers' audit logs (and the test tiers' RBAC
    check) tell the operator's requests from the router's and the CLI's by it."""
    try:
        version = importlib.metadata.version("tramontane")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        version = "dev"
    return f"tramontane-operator/{version}"


USER_AGENT = _user_agent()


class ClusterConnectionError(Exception):
    """The ComputeCluster's connection cannot be built (Secret missing, bad kubeconfig)."""


class Runtime:
    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.build = settings.build_settings()
        self.clusters = ClusterRegistry(
            self._on_child_event,
            self._on_health_change,
            base_backoff_s=settings.backoff_base_s,
            max_backoff_s=settings.backoff_max_s,
            client_options=self._client_options(),
        )
        self.ledger = Ledger()
        self.phases = {
            kind: PhaseTracker(kind)
            for kind in (MODELDEPLOYMENTS, FINETUNEJOBS, EVALUATIONS, TENANTS, COMPUTECLUSTERS)
        }
        self._hub: KubeClient | None = None
        self._indexes: Indexes | None = None
        self._events: EventRecorder | None = None
        self.controllers: dict[str, Controller] = {}
        self._ready = asyncio.Event()
        self._member_locks: dict[str, asyncio.Lock] = {}
        self.connection_errors: dict[str, str] = {}
        self._connections: dict[str, str] = {}
        self._statuses: dict[tuple[str, Key], tuple[str | None, BaseModel]] = {}

    def work_queue(self, on_get: Callable[[int, float], None] | None = None) -> WorkQueue[Key]:
        """A controller's queue, with the operator's retry backoff."""
        return WorkQueue(
            on_get,
            base_delay_s=self.settings.retry_delay_s,
            max_delay_s=self.settings.backoff_max_s,
        )

    async def ready(self) -> None:
        """Wait until the caches are synced and the ledger rebuilt (see `handlers.startup`)."""
        await self._ready.wait()

    def set_ready(self) -> None:
        self._ready.set()

    @property
    def hub(self) -> KubeClient:
        if self._hub is None:
            self._hub = KubeClient("hub", self.settings.hub_config(), **self._client_options())
        return self._hub

    def _client_options(self) -> dict[str, Any]:
        return {
            "timeout_s": self.settings.request_timeout_s,
            "user_agent": USER_AGENT,
            **self.settings.client_options,
        }

    @property
    def indexes(self) -> Indexes:
        if self._indexes is None:
            watched = None if self.settings.all_namespaces else self.settings.namespaces
            self._indexes = Indexes(self.hub, watched or None)
        return self._indexes

    @property
    def events(self) -> EventRecorder:
        if self._events is None:
            # Events wait while new or changed objects do (see EventRecorder).
            self._events = EventRecorder(self.hub, busy=self._busy)
        return self._events

    def _busy(self) -> bool:
        return any(c.queue.waiting(HIGH) for c in self.controllers.values())

    def start(self) -> None:
        """Start the hub caches and the Event posters (in the operator's event loop)."""
        self.indexes.start()
        self.events.start()

    async def close(self) -> None:
        for controller in self.controllers.values():
            await controller.stop()
        if self._events is not None:
            await self._events.stop()
        if self._indexes is not None:
            await self._indexes.stop()
        await self.clusters.close()
        if self._hub is not None:
            await self._hub.close()
            self._hub = None

    async def write_status(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        previous: BaseModel | None,
        status: BaseModel,
    ) -> bool:
        """Merge-patch the status subresource from `previous` to `status`; False if gone."""
        before = (
            previous.model_dump(by_alias=True, exclude_none=True, mode="json") if previous else {}
        )
        patch = diff(before, status.model_dump(by_alias=True, exclude_none=True, mode="json"))
        if patch is None:
            return True
        try:
            await self.hub.patch(ref, namespace, name, {"status": patch}, "status")
        except NotFound:
            return False
        return True

    # Wake-ups: a refresh of objects whose spec did not change.
    def wake(self, kind: str, key: Key, priority: int = LOW) -> None:
        controller = self.controllers.get(kind)
        if controller is not None:
            controller.wake(key, priority)

    def wake_all(self, kind: str) -> None:
        controller = self.controllers.get(kind)
        if controller is not None:
            for key in self.indexes.cache(kind).object_keys():
                controller.wake(key)

    def wake_tenant(self, namespace: str) -> None:
        """Capacity or quota was released in `namespace`. The tenant's queue is decided once
        here: the waiting workloads that round admits are woken at once (Kueue's scheduler
        admits the heads of a queue the same way, instead of every workload re-deciding the
        whole queue); the others, whose queue positions moved, and the workloads of every
        tenant short of GPUs (ModelDeployments not fully placed, jobs waiting for a cluster:
        the freed ones may fit them) are refreshed a moment later, once per burst of
        releases. Those that run as asked are left alone."""
        idx = self.indexes
        tenant = idx.tenant_object(namespace)
        namespaces = sorted(set(tenant.spec.namespaces) if tenant is not None else {namespace})
        held = self.ledger.held_in(namespaces)
        queued = waiting_in(idx, namespaces, held)
        now = set(admissible_now(tenant, held, queued)) if tenant is not None else None
        for w in queued:
            key = (w.namespace, w.name)
            if now is None or w.key in now:
                self.wake(w.kind, key, HIGH)
            else:
                self.wake_later(w.kind, key)
        owned = set(namespaces)
        for md in idx.deployments():
            status = md.status  # the tenant's own ones too: a quota cap may lift
            ours = (md.metadata.namespace or "") in owned
            if ours or status is None or status.phase in _MAY_GROW:
                self.wake_later(MODELDEPLOYMENTS, (md.metadata.namespace or "", md.metadata.name))
        for job in idx.jobs():  # any tenant's job that waits for a cluster: GPUs were freed
            if unplaceable(job):
                self.wake_later(FINETUNEJOBS, (job.metadata.namespace or "", job.metadata.name))
        if tenant is not None:
            self.wake_later(TENANTS, ("", tenant.metadata.name))

    def wake_later(self, kind: str, key: Key) -> None:
        """A refresh after `REFRESH_S`: many wake-ups in that time make one pass."""
        controller = self.controllers.get(kind)
        if controller is not None:
            controller.queue.add_after(key, REFRESH_S, LOW)

    def release(self, kind: str, key: Key) -> None:
        """`key` no longer holds GPUs or quota: its tenant's waiting workloads may fit now."""
        if self.ledger.release(f"{kind}/{key[0]}/{key[1]}") is not None:
            self.wake_tenant(key[0])

    # The status we last wrote, per object: newer than the body of a watch event in flight.
    def last_status(self, kind: str, body: Mapping[str, Any]) -> BaseModel | None:
        key, uid = _identity(body)
        uid_and_status = self._statuses.get((kind, key))
        if uid_and_status is None or uid_and_status[0] != uid:
            return None
        return uid_and_status[1]

    def remember_status(self, kind: str, body: Mapping[str, Any], status: BaseModel) -> None:
        key, uid = _identity(body)
        self._statuses[(kind, key)] = (uid, status)

    def forget(self, kind: str, key: Key) -> None:
        """`key` is gone and cleaned up: drop its status, phase and ledger entry."""
        self._statuses.pop((kind, key), None)
        self.phases[kind].set(key[0] or None, key[1], None)
        controller = self.controllers.get(kind)
        if controller is not None:
            controller.forget(key)

    def _on_child_event(self, cluster: str, obj: Mapping[str, Any]) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        namespace, name = labels.get(OWNER_NAMESPACE_LABEL), labels.get(OWNER_NAME_LABEL)
        if namespace and name:
            self.wake(MODELDEPLOYMENTS, (namespace, name))

    def _on_health_change(self, cluster: str) -> None:
        member = self.clusters.get(cluster)
        set_cluster_reachable(cluster, member.probe.reachable if member else None)
        self.wake_all(MODELDEPLOYMENTS)
        self.wake_all(FINETUNEJOBS)
        self.wake_all(EVALUATIONS)

    # Member clusters.
    async def ensure_member(
        self, cc: ComputeCluster, refresh: bool = False
    ) -> MemberCluster | None:
        """The connected member for `cc`, probed at least once; None if it cannot be built.

        The connection (and its kubeconfig Secret) is read again only when `refresh` is set
        (the ComputeCluster's own handlers do) or the spec's connection changed.
        """
        name = cc.metadata.name
        connection = cc.spec.connection.model_dump_json()
        async with self._member_locks.setdefault(name, asyncio.Lock()):
            member = self.clusters.get(name)
            if refresh or member is None or self._connections.get(name) != connection:
                try:
                    config = await self._config_for(cc)
                except ClusterConnectionError as exc:
                    self.connection_errors[name] = str(exc)
                    self._connections.pop(name, None)
                    await self.clusters.remove(name)
                    return None
                self.connection_errors.pop(name, None)
                member = await self.clusters.connect(
                    name, config, bool(cc.spec.connection.in_cluster)
                )
                self._connections[name] = connection
            if refresh or member.probe.error == NOT_PROBED:
                await self.clusters.probe(name)
            return member

    async def remove_member(self, name: str) -> None:
        async with self._member_locks.setdefault(name, asyncio.Lock()):
            self._connections.pop(name, None)
            self.connection_errors.pop(name, None)
            await self.clusters.remove(name)

    async def _config_for(self, cc: ComputeCluster) -> ClusterConfig:
        connection = cc.spec.connection
        if connection.in_cluster:
            return self.hub.config
        ref = connection.kubeconfig_secret_ref
        if ref is None:  # the CRD's CEL rule forbids this; say so rather than crash
            raise ClusterConnectionError("spec.connection: set inCluster or kubeconfigSecretRef")
        allowed = self.settings.kubeconfig_secret_namespace
        if allowed is not None and ref.namespace != allowed:
            raise ClusterConnectionError(
                f"spec.connection.kubeconfigSecretRef: Secret {ref.namespace}/{ref.name} is "
                f"outside namespace {allowed}, the only one the operator reads kubeconfig "
                f"Secrets in: create the Secret in {allowed} and point the ComputeCluster at it"
            )
        try:
            secret = await self.hub.get(SECRET, ref.namespace, ref.name)
        except (ApiError, Unreachable) as exc:
            raise ClusterConnectionError(
                f"reading Secret {ref.namespace}/{ref.name}: {exc}"
            ) from exc
        if secret is None:
            raise ClusterConnectionError(f"Secret {ref.namespace}/{ref.name} not found")
        encoded = (secret.get("data") or {}).get(ref.key)
        if encoded is None:
            raise ClusterConnectionError(
                f"Secret {ref.namespace}/{ref.name} has no key {ref.key!r}"
            )
        try:
            text = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ClusterConnectionError(f"Secret {ref.namespace}/{ref.name}: {exc}") from exc
        # An exec plugin's errors (it runs later, when the client needs a token) name the
        # Secret themselves: they reach the status through the probe.
        source = f"Secret {ref.namespace}/{ref.name}"
        try:
            return ClusterConfig.from_kubeconfig_text(text, source=source)
        except KubeconfigError as exc:
            message = str(exc)
            prefix = "" if message.startswith(source) else f"{source}: "
            raise ClusterConnectionError(f"{prefix}{message}") from exc

    async def cluster_views(
        self, ccs: Iterable[ComputeCluster], allocations: Mapping[str, Mapping[str, int]]
    ) -> dict[str, ClusterView]:
        """A ClusterView per ComputeCluster, connecting (and probing) new ones first."""
        ccs = list(ccs)
        members = await asyncio.gather(*(self.ensure_member(cc) for cc in ccs))
        views = {}
        for cc, member in zip(ccs, members, strict=True):
            views[cc.metadata.name] = ClusterView.from_compute_cluster(
                cc,
                reachable=member is not None and member.probe.reachable,
                kuberay_installed=member is not None and member.probe.kuberay_installed,
                gpus_allocated=allocations.get(cc.metadata.name, {}),
            )
        return views


def _identity(body: Mapping[str, Any]) -> tuple[Key, str | None]:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "", meta["name"]), meta.get("uid")


def allowed_views(
    views: Mapping[str, ClusterView], tenant: Tenant | None
) -> dict[str, ClusterView]:
    """The clusters the tenant may use (`spec.allowedClusters`; every one when unset)."""
    allowed = tenant.spec.allowed_clusters if tenant is not None else None
    if allowed is None:
        return dict(views)
    names = set(allowed)
    return {name: view for name, view in views.items() if name in names}


def with_allocations(
    views: Mapping[str, ClusterView], allocations: Mapping[str, Mapping[str, int]]
) -> dict[str, ClusterView]:
    """`views` with the GPUs `allocations` holds in each cluster."""
    return {
        name: dataclasses.replace(view, gpus_allocated=dict(allocations.get(name, {})))
        for name, view in views.items()
    }


def waiting_in(idx: Indexes, namespaces: Sequence[str], held: Sequence[Workload]) -> list[Workload]:
    """The workloads of `namespaces` (a tenant's) waiting for quota: ModelDeployments,
    FineTuneJobs and Evaluations wanting to run that hold nothing (`held`)."""
    holding = [w.key for w in held]
    deployments = idx.modeldeployments.parsed_in(namespaces)
    out = waiting(namespaces, idx.finetunejobs.parsed_in(namespaces), deployments, holding)
    return out + queued_workloads(idx.evaluations.parsed_in(namespaces), deployments, holding)
