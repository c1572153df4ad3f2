"""The routing table: who a key belongs to, which models a tenant may call, where they run.

`build_table` is a pure function of the hub's objects (Tenants, the Secrets their
`apiKeySecretRefs` name, ModelDeployments with their status, ComputeClusters), so both routing
sources (the hub informers and local mode) build it the same way, and a table is never
updated in place: a source swaps in a new one and requests in flight keep the one they read.

Model names (the same on gRPC and HTTP): a base model is addressed by its served name
(`spec.model.name`); a LoRA adapter by `<served name>:<adapter name>`, as Ray Serve LLM does.
`/v1/models` lists both forms, so vLLM users who copy ids from it work unchanged.

Isolation: a tenant sees the ModelDeployments in its own namespaces, nothing else. A
namespace claimed by two tenants belongs to neither (the operator marks both `Invalid`), and a
key found in two tenants' Secrets authenticates neither: ambiguity never grants access.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tramontane_api.v1alpha1 import ComputeCluster, ModelDeployment, Tenant
from tramontane_api.v1alpha1.modeldeployment import RolloutAnalysis
from tramontane_api.v1alpha1.tenant import Quotas, namespace_conflicts
from tramontane_workers.contract.serve_config import application_name

from .errors import ModelNotFound, Unavailable
from .keys import MIN_KEY_LENGTH, Digest, KeyRing, digest

log = logging.getLogger(__name__)

ADAPTER_SEPARATOR = ":"
SecretKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Endpoint:
    """One pool of one ModelDeployment in one member cluster, behind its Serve gRPC ingress."""

    cluster: str
    address: str  # host:port
    tls: bool
    application: str  # the Serve application: `<namespace>.<name>` of the ModelDeployment
    ready_replicas: int
    region: str | None = None
    cloud: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.address, self.application)


@dataclass(frozen=True)
class Version:
    """One version of an adapter, as the operator publishes it (`status.adapterVersions`):
    the name the workers serve it under, its share of the adapter's traffic, its state."""

    served_as: str
    version: str
    weight: int
    state: str  # Stable | Canary | Previous | RolledBack


@dataclass(frozen=True)
class Versions:
    """An adapter's versions with traffic (weight > 0) in one deployment, and the analysis
    its canary is judged on (None: no rollout)."""

    adapter: str
    namespace: str
    deployment: str
    versions: tuple[Version, ...]
    analysis: RolloutAnalysis | None = None

    @property
    def canary(self) -> Version | None:
        return next((v for v in self.versions if v.state == "Canary"), None)

    @property
    def stable(self) -> Version | None:
        return next((v for v in self.versions if v.state == "Stable"), None)


@dataclass(frozen=True)
class Deployment:
    namespace: str
    name: str
    model: str  # served name
    adapters: frozenset[str]  # adapters the pools serve now (status.adapters)
    endpoints: tuple[Endpoint, ...]  # only pools with ready replicas
    max_model_len: int | None = None
    versions: Mapping[str, Versions] = field(default_factory=dict)  # by adapter name

    @property
    def application(self) -> str:
        return application_name(self.namespace, self.name)


@dataclass(frozen=True)
class TenantView:
    name: str
    namespaces: frozenset[str]
    quotas: Quotas = field(default_factory=Quotas)
    fair_share_weight: float = 1.0


@dataclass(frozen=True)
class Route:
    """Where one request goes: the model and adapter the worker sees, and the candidates."""

    tenant: str
    model_id: str  # as the client named it
    model: str  # served base name
    adapter: str | None
    endpoints: tuple[Endpoint, ...]
    max_model_len: int | None = None
    # The adapter's versions per Serve application (an endpoint's `application`); absent:
    # the workers serve the adapter under its bare name (no versions published).
    versions: Mapping[str, Versions] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    id: str
    root: str
    kind: str  # "base" | "adapter"
    ready: bool
    namespace: str
    deployment: str
    max_model_len: int | None = None


@dataclass(frozen=True)
class RoutingTable:
    keys: KeyRing = field(default_factory=KeyRing)
    tenants: Mapping[str, TenantView] = field(default_factory=dict)
    by_namespace: Mapping[str, tuple[Deployment, ...]] = field(default_factory=dict)

    def tenant(self, key: str) -> TenantView | None:
        name = self.keys.tenant(key)
        return self.tenants.get(name) if name is not None else None

    def deployments(self, tenant: TenantView) -> list[Deployment]:
        return [d for ns in sorted(tenant.namespaces) for d in self.by_namespace.get(ns, ())]

    def models(self, tenant: TenantView) -> list[ModelEntry]:
        """Every model id this tenant may call, bases first, each id once."""
        seen: dict[str, ModelEntry] = {}
        for d in self.deployments(tenant):
            ready = bool(d.endpoints)
            entries = [
                ModelEntry(d.model, d.model, "base", ready, d.namespace, d.name, d.max_model_len)
            ]
            entries += [
                ModelEntry(f"{d.model}{ADAPTER_SEPARATOR}{a}", d.model, "adapter", ready,
                           d.namespace, d.name, d.max_model_len)
                for a in sorted(d.adapters)
            ]  # fmt: skip
            for e in entries:
                prior = seen.get(e.id)
                if prior is None or (e.ready and not prior.ready):
                    seen[e.id] = e
        return sorted(seen.values(), key=lambda e: (e.kind != "base", e.id))

    def resolve(self, tenant: TenantView, model_id: str) -> Route:
        """The route for `model_id`; `ModelNotFound` if this tenant has no such model (whether
        or not another tenant does), `Unavailable` if it has one but no pool is ready."""
        mine = self.deployments(tenant)
        base, adapter = model_id, None
        matches = [d for d in mine if d.model == model_id]
        if not matches and ADAPTER_SEPARATOR in model_id:
            base, _, adapter = model_id.rpartition(ADAPTER_SEPARATOR)
            matches = [d for d in mine if d.model == base and adapter in d.adapters]
        if not matches:
            raise ModelNotFound(
                f"model: {model_id!r} is not a model you can use (GET /v1/models lists yours)",
                param="model",
            )
        endpoints = tuple(e for d in matches for e in d.endpoints)
        if not endpoints:
            raise Unavailable(f"model: {model_id!r} has no ready replica yet", retry_after_s=5)
        lengths = [d.max_model_len for d in matches if d.max_model_len]
        versions = {
            d.application: d.versions[adapter]
            for d in matches
            if adapter is not None and adapter in d.versions
        }
        return Route(tenant.name, model_id, base, adapter, endpoints, min(lengths, default=None),
                     versions)  # fmt: skip


def secret_values(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's `data` decoded (base64, UTF-8); undecodable entries are left out."""
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
    for key, value in (secret.get("stringData") or {}).items():  # local-mode manifests
        out[str(key)] = str(value)
    return out


def build_table(
    tenants: Sequence[Tenant],
    secrets: Mapping[SecretKey, Mapping[str, str]],
    deployments: Iterable[ModelDeployment],
    clusters: Iterable[ComputeCluster],
) -> RoutingTable:
    """The routing table of these objects (see the module docstring for the rules)."""
    conflicts = namespace_conflicts(tenants)
    for ns, names in conflicts.items():
        log.warning("namespace %s is claimed by tenants %s: serving it to none", ns, names)
    contested = set(conflicts)

    views = {
        t.metadata.name: TenantView(
            name=t.metadata.name,
            namespaces=frozenset(t.spec.namespaces) - contested,
            quotas=t.spec.quotas,
            fair_share_weight=t.spec.fair_share_weight,
        )
        for t in tenants
    }
    return RoutingTable(
        keys=_keyring(tenants, secrets),
        tenants=views,
        by_namespace=_deployments(deployments, {c.metadata.name: c for c in clusters}),
    )


def _keyring(tenants: Sequence[Tenant], secrets: Mapping[SecretKey, Mapping[str, str]]) -> KeyRing:
    owners: dict[Digest, set[str]] = defaultdict(set)
    for t in tenants:
        for ref in t.spec.api_key_secret_refs or []:
            value = (secrets.get((ref.namespace, ref.name)) or {}).get(ref.key)
            where = f"tenant {t.metadata.name}: Secret {ref.namespace}/{ref.name} key {ref.key}"
            if value is None:
                log.info("%s: not found", where)
                continue
            value = value.strip()
            if len(value) < MIN_KEY_LENGTH:
                log.warning("%s: shorter than %d characters, refused", where, MIN_KEY_LENGTH)
                continue
            owners[digest(value)].add(t.metadata.name)
    keys: dict[Digest, str] = {}
    for d, names in owners.items():
        if len(names) > 1:
            log.warning("one API key is referenced by tenants %s: refused for all", sorted(names))
            continue
        keys[d] = next(iter(names))
    return KeyRing(keys)


def _deployments(
    deployments: Iterable[ModelDeployment], clusters: Mapping[str, ComputeCluster]
) -> dict[str, tuple[Deployment, ...]]:
    out: dict[str, list[Deployment]] = defaultdict(list)
    for md in deployments:
        namespace = md.metadata.namespace or "default"
        status = md.status
        endpoints: list[Endpoint] = []
        for pool in (status.clusters if status else None) or []:
            cc = clusters.get(pool.name)
            if cc is None or not pool.endpoint or pool.ready_replicas <= 0:
                continue
            endpoints.append(
                Endpoint(
                    cluster=pool.name,
                    address=pool.endpoint,
                    tls=cc.spec.ingress.tls if cc.spec.ingress else True,
                    application=application_name(namespace, md.metadata.name),
                    ready_replicas=pool.ready_replicas,
                    region=cc.spec.region,
                    cloud=cc.spec.cloud,
                )
            )
        out[namespace].append(
            Deployment(
                namespace=namespace,
                name=md.metadata.name,
                model=md.spec.model.name,
                adapters=frozenset((status.adapters if status else None) or []),
                endpoints=tuple(endpoints),
                max_model_len=md.spec.runtime.max_model_len,
                versions=_versions(md, namespace),
            )
        )
    return {ns: tuple(sorted(ds, key=lambda d: d.name)) for ns, ds in out.items()}


def _versions(md: ModelDeployment, namespace: str) -> dict[str, Versions]:
    """Each adapter's versions with traffic, from the status the operator wrote."""
    rollouts = {a.name: a.rollout for a in md.spec.adapters or []}
    out: dict[str, Versions] = {}
    for row in (md.status.adapter_versions if md.status else None) or []:
        live = tuple(
            Version(v.served_as, v.version, v.weight, v.state) for v in row.versions if v.weight > 0
        )
        if live:
            rollout = rollouts.get(row.name)
            out[row.name] = Versions(row.name, namespace, md.metadata.name, live,
                                     rollout.analysis if rollout else None)  # fmt: skip
    return out


def table_from_objects(objects: Iterable[Mapping[str, Any]]) -> RoutingTable:
    """The table of a list of manifests (Tenants, Secrets, ModelDeployments with status,
    ComputeClusters); other kinds are ignored, an invalid object is skipped with a warning."""
    tenants: list[Tenant] = []
    mds: list[ModelDeployment] = []
    ccs: list[ComputeCluster] = []
    secrets: dict[SecretKey, dict[str, str]] = {}
    for obj in objects:
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        try:
            if kind == "Secret":
                key = (str(meta.get("namespace") or "default"), str(meta.get("name")))
                secrets[key] = secret_values(obj)
            elif kind == "Tenant":
                tenants.append(Tenant.model_validate(obj))
            elif kind == "ModelDeployment":
                mds.append(ModelDeployment.model_validate(obj))
            elif kind == "ComputeCluster":
                ccs.append(ComputeCluster.model_validate(obj))
        except ValidationError as exc:
            log.warning("%s %s: skipped, invalid: %s", kind, meta.get("name"), exc.errors()[:1])
    return build_table(tenants, secrets, mds, ccs)
