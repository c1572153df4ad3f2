"""Every member cluster the operator talks to: its client, its child cache, its health.

One `MemberCluster` per ComputeCluster: an async `KubeClient`, an `Informer` caching the
RayServices we manage there, and the last probe result (reachable, KubeRay installed). A
cluster that fails is probed again with exponential backoff (capped), and its failure never
blocks another cluster: each has its own connection pool and its calls are bounded by timeouts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tramontane_kube.client import ApiError, Conflict, KubeClient, Unreachable
from tramontane_kube.config import ClusterConfig
from tramontane_kube.informer import Informer, OnEvent
from tramontane_kube.resources import NAMESPACE, RAYSERVICE
from tramontane_operator.builders.labels import MANAGED_BY, MANAGED_BY_LABEL

log = logging.getLogger(__name__)

MANAGED_BY_LABELS: Mapping[str, str] = {MANAGED_BY_LABEL: MANAGED_BY}
NOT_PROBED = "not probed"


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    kuberay_installed: bool
    kubernetes_version: str | None = None
    error: str | None = None


@dataclass
class MemberCluster:
    name: str
    config: ClusterConfig
    in_cluster: bool
    client: KubeClient
    informer: Informer
    probe: ProbeResult = field(default_factory=lambda: ProbeResult(False, False, error=NOT_PROBED))
    failures: int = 0
    next_probe_at: float = 0.0
    namespaces: set[str] = field(default_factory=set)  # known to exist here

    @property
    def usable(self) -> bool:
        """Reachable with KubeRay installed: children may be written here."""
        return self.probe.reachable and self.probe.kuberay_installed

    async def ensure_namespace(self, namespace: str) -> None:
        """Create `namespace` here when it is missing, so a child can be created in it.

        A ModelDeployment's namespace exists on the hub but not necessarily in a member. The
        operator creates it (labelled as managed by Tramontane) and never deletes it: other
        things may come to live there. Known namespaces are remembered, so this costs one
        request per namespace and cluster while the operator runs.
        """
        if namespace in self.namespaces:
            return
        if await self.client.get(NAMESPACE, None, namespace) is None:
            body = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "labels": dict(MANAGED_BY_LABELS)},
            }
            try:
                await self.client.create(NAMESPACE, body)
                log.info("cluster %s: created namespace %s", self.name, namespace)
            except Conflict:
                pass  # created meanwhile (by someone else, or a retried request that landed)
        self.namespaces.add(namespace)


class ClusterRegistry:
    """Clients and health of all member clusters, keyed by ComputeCluster name."""

    def __init__(
        self,
        on_child_event: OnEvent,
        on_health_change: Callable[[str], None],
        *,
        base_backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._on_child_event = on_child_event
        self._on_health_change = on_health_change
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.client_options = dict(client_options or {})
        self.members: dict[str, MemberCluster] = {}

    def get(self, name: str) -> MemberCluster | None:
        return self.members.get(name)

    async def connect(self, name: str, config: ClusterConfig, in_cluster: bool) -> MemberCluster:
        """The member for `name`, (re)built when its connection changed."""
        member = self.members.get(name)
        if member is not None and member.config == config and member.in_cluster == in_cluster:
            return member
        if member is not None:
            await self.remove(name)
        client = KubeClient(name, config, **self.client_options)
        informer = Informer(client, RAYSERVICE, MANAGED_BY_LABELS, self._on_child_event)
        member = MemberCluster(name, config, in_cluster, client, informer)
        self.members[name] = member
        informer.start()
        return member

    async def remove(self, name: str) -> None:
        member = self.members.pop(name, None)
        if member is not None:
            await member.informer.stop()
            await member.client.close()
            self._on_health_change(name)

    async def close(self) -> None:
        for name in list(self.members):
            await self.remove(name)

    def probe_due(self, name: str) -> bool:
        member = self.members.get(name)
        return member is not None and time.monotonic() >= member.next_probe_at

    async def probe(self, name: str) -> ProbeResult:
        """Probe the API server and KubeRay's CRDs; on failure back off before the next probe."""
        member = self.members[name]
        try:
            version = await member.client.version()
            kuberay = await member.client.serves(RAYSERVICE)
            result = ProbeResult(True, kuberay, str(version.get("gitVersion") or "") or None)
        except Unreachable as exc:
            result = ProbeResult(False, False, error=exc.cause)
        except ApiError as exc:
            result = ProbeResult(False, False, error=f"HTTP {exc.status} {exc.reason}".strip())
        self._record(member, result)
        return result

    def report_unreachable(self, name: str, cause: str) -> None:
        """A call to the cluster failed outside a probe: mark it now, probe again later."""
        member = self.members.get(name)
        if member is not None and member.probe.reachable:
            self._record(member, ProbeResult(False, False, error=cause))

    def _record(self, member: MemberCluster, result: ProbeResult) -> None:
        before = member.usable, member.probe.reachable
        member.probe = result
        if result.reachable:
            member.failures = 0
            member.next_probe_at = 0.0
        else:
            member.failures += 1
            delay = min(self.base_backoff_s * 2 ** (member.failures - 1), self.max_backoff_s)
            member.next_probe_at = time.monotonic() + delay
        if result.reachable and not before[1]:
            member.informer.retry_now()
        if (member.usable, member.probe.reachable) != before:
            log.info(
                "cluster %s: reachable=%s kuberay=%s %s",
                member.name,
                result.reachable,
                result.kuberay_installed,
                result.error or "",
            )
            self._on_health_change(member.name)
