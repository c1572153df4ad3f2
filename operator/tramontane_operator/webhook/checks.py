"""What the admission webhook refuses, beyond the CRD schema and CEL: pure, no I/O.

`review(operation, obj, old, facts)` returns a `Verdict`: the problems that refuse the request
(each `field: message`, in words a tenant understands) and warnings that do not. First every
check `tramontane validate` makes (`tramontane_api.validate.validate_object`: the pydantic
model, the structural schema, the CEL rules, transition rules included), so `kubectl apply`
and `tramontane validate` say the same thing; then what only the hub's state can tell, from
`Facts` (the hub caches):

- a ModelDeployment, FineTuneJob or Evaluation in a namespace no Tenant owns, once any
  Tenant exists
  (`tenant_required="auto"`; `"always"` and `"never"` are the other choices): the operator
  counts no quota for such a namespace, so it would be a way around every quota;
- a GPU type the tenant's quota does not list (or lists at 0) when the quota has `gpus` (an
  Evaluation's is its target ModelDeployment's `resources.gpu.type`);
- a request that can never fit the tenant's total quota (ModelDeployment: `maxReplicas x
  gpu.count`; FineTuneJob: `workers x gpusPerWorker`), or a quota of 0 ModelDeployments or
  concurrent FineTuneJobs;
- a cluster named in `spec.placement.clusters` outside the tenant's `allowedClusters`;
- a Tenant claiming a namespace another Tenant owns;
- a Tenant's API-key Secret outside the namespaces the router may read Secrets in
  (`key_namespaces`: the chart's `tenants.keyNamespaces`), and a ComputeCluster's kubeconfig
  Secret outside the operator's own namespace (`kubeconfig_namespace`): with the chart's narrow
  roles neither could ever be read.

References of our specs (`baseModel.modelDeploymentRef`, `autoDeploy.modelDeploymentRef`,
adapters' `fineTuneJobRef`) are names in the object's own namespace: they cannot reach
another tenant's namespace. One naming an object that does not exist (yet) is a warning, not
a refusal: `kubectl apply -f dir/` creates objects in any order.

Updates: a request that leaves `spec` as it was (finalizers, annotations, labels) is always
allowed, so the operator's own bookkeeping never depends on the webhook; a spec change is
refused only for problems the old object did not have already (ratcheting, like the API
server's CRD validation ratcheting): after a quota is lowered, a tenant can still scale down,
but not up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tramontane_api.schema import Problem
from tramontane_api.v1alpha1 import ComputeCluster, Evaluation, FineTuneJob, ModelDeployment, Tenant
from tramontane_api.validate import parse, validate_object

Operation = Literal["CREATE", "UPDATE"]
TenantRequired = Literal["auto", "always", "never"]
TENANT_REQUIRED_CHOICES: tuple[TenantRequired, ...] = ("auto", "always", "never")


@dataclass(frozen=True)
class Facts:
    """What the checks read of the hub: its Tenants, ComputeClusters and workloads."""

    tenants: Sequence[Tenant] = ()
    clusters: Sequence[ComputeCluster] = ()
    deployments: Sequence[ModelDeployment] = ()
    jobs: Sequence[FineTuneJob] = ()
    tenant_required: TenantRequired = "auto"
    # Where Secrets may be referenced from (None: anywhere): see the module docstring.
    key_namespaces: frozenset[str] | None = None
    kubeconfig_namespace: str | None = None

    def tenant_of(self, namespace: str) -> Tenant | None:
        """The Tenant owning `namespace` (with a conflict, the first by name, as the
        operator's `Indexes.tenant_of` picks it)."""
        owners = sorted(
            (t for t in self.tenants if namespace in t.spec.namespaces),
            key=lambda t: t.metadata.name,
        )
        return owners[0] if owners else None

    def has(self, kind: Literal["ModelDeployment", "FineTuneJob"], ns: str, name: str) -> bool:
        objects: Sequence[ModelDeployment | FineTuneJob] = (
            self.deployments if kind == "ModelDeployment" else self.jobs
        )
        return any(o.metadata.namespace == ns and o.metadata.name == name for o in objects)


@dataclass(frozen=True)
class Verdict:
    """Problems refuse the request; warnings reach the client (kubectl prints them)."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.problems


def review(
    operation: Operation,
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    facts: Facts,
) -> Verdict:
    """Whether to admit `obj` (created, or updated from `old`), and why not."""
    if operation == "UPDATE" and old is not None and obj.get("spec") == old.get("spec"):
        return Verdict()  # metadata only (finalizers, labels): never ours to refuse
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and meta.get("deletionTimestamp"):
        return Verdict()  # being deleted: let the finalizers finish
    old_typed = None
    if operation == "UPDATE" and old is not None:
        try:
            old_typed = parse(old)
        except ValueError:  # stored before a schema change: judge the new object alone
            old_typed = None
    problems = validate_object(obj, old if old_typed is not None else None)
    if problems:
        return Verdict([str(p) for p in problems])
    denied, warnings = _fact_checks(parse(obj), facts)
    if old_typed is not None:
        denied = _new_or_worse(denied, _fact_checks(old_typed, facts)[0])
    return Verdict([str(p) for p in denied], [str(w) for w in warnings])


@dataclass(frozen=True)
class Excess(Problem):
    """A problem with a size (GPUs asked beyond the quota): an update may shrink it."""

    amount: int = 0


def _new_or_worse(now: list[Problem], before: list[Problem]) -> list[Problem]:
    """The problems of `now` that `before` did not have at the same field, or had smaller."""
    had: dict[str, int] = {}
    for p in before:
        had[p.path] = max(had.get(p.path, 0), p.amount if isinstance(p, Excess) else 0)
    out = []
    for p in now:
        amount = p.amount if isinstance(p, Excess) else 0
        if p.path not in had or amount > had[p.path]:
            out.append(p)
    return out


def _fact_checks(obj: Any, facts: Facts) -> tuple[list[Problem], list[Problem]]:
    if isinstance(obj, ModelDeployment):
        return _model_deployment(obj, facts)
    if isinstance(obj, FineTuneJob):
        return _fine_tune_job(obj, facts)
    if isinstance(obj, Evaluation):
        return _evaluation(obj, facts)
    if isinstance(obj, Tenant):
        return _tenant(obj, facts)
    if isinstance(obj, ComputeCluster):
        return _compute_cluster(obj, facts), _gpu_types_told_apart(obj)
    return [], []


def _gpu_types_told_apart(cc: ComputeCluster) -> list[Problem]:
    """A warning where `gpus` lists several GPU types and `gpuNodeSelectors` does not say
    where each one's nodes are: a pool asking for one type may land on another's nodes."""
    types = [t for t, n in cc.spec.gpus.items() if n > 0]
    missing = [t for t in types if t not in (cc.spec.gpu_node_selectors or {})]
    if len(types) < 2 or not missing:
        return []
    return [
        Problem(
            "spec.gpuNodeSelectors",
            f"gpus lists {len(types)} GPU types and this does not give the nodes of "
            f"{', '.join(missing)}: their pools and jobs may be scheduled on another type's "
            "nodes",
        )
    ]


def _compute_cluster(cc: ComputeCluster, facts: Facts) -> list[Problem]:
    ref = cc.spec.connection.kubeconfig_secret_ref
    allowed = facts.kubeconfig_namespace
    if ref is None or allowed is None or ref.namespace == allowed:
        return []
    return [
        Problem(
            "spec.connection.kubeconfigSecretRef.namespace",
            f"the operator reads kubeconfig Secrets in namespace {allowed!r} only: create "
            f"Secret {ref.name!r} there",
        )
    ]


def _owner(namespace: str, facts: Facts) -> tuple[Tenant | None, list[Problem]]:
    tenant = facts.tenant_of(namespace)
    required = facts.tenant_required == "always" or (
        facts.tenant_required == "auto" and bool(facts.tenants)
    )
    if tenant is None and required:
        return None, [
            Problem(
                "metadata.namespace",
                f"namespace {namespace!r} belongs to no Tenant: ask your platform team to add "
                "it to a Tenant's spec.namespaces (quotas are counted per Tenant)",
            )
        ]
    return tenant, []


def _gpu_problems(
    tenant: Tenant, gpu_type: str, total: int, type_field: str, total_field: str, total_what: str
) -> list[Problem]:
    """The quota's `gpus` map: the type must be listed (above 0) and hold `total`."""
    quota = tenant.spec.quotas.gpus
    if quota is None or total <= 0:
        return []
    name = tenant.metadata.name
    limit = quota.get(gpu_type, 0)
    if limit == 0:
        allowed = ", ".join(f"{t} ({n})" for t, n in sorted(quota.items()) if n > 0) or "none"
        return [
            Problem(
                type_field,
                f"GPU type {gpu_type!r} is not in tenant {name!r}'s quota (GPU types allowed: "
                f"{allowed})",
            )
        ]
    if total > limit:
        return [
            Excess(
                total_field,
                f"{total_what} = {total} {gpu_type} GPUs can never fit tenant {name!r}'s "
                f"quota of {limit} {gpu_type} GPUs",
                total,
            )
        ]
    return []


def _cluster_problems(
    tenant: Tenant | None, clusters: Sequence[str] | None, facts: Facts
) -> tuple[list[Problem], list[Problem]]:
    denied, warnings = [], []
    allowed = tenant.spec.allowed_clusters if tenant is not None else None
    owner = tenant.metadata.name if tenant is not None else ""
    known = {cc.metadata.name for cc in facts.clusters}
    for i, cluster in enumerate(clusters or ()):
        where = f"spec.placement.clusters[{i}]"
        if allowed is not None and cluster not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            denied.append(
                Problem(
                    where,
                    f"cluster {cluster!r} is not in tenant {owner!r}'s allowedClusters ({names})",
                )
            )
        elif cluster not in known:
            warnings.append(Problem(where, f"no ComputeCluster named {cluster!r} exists (yet)"))
    return denied, warnings


def _gpu_type_warning(gpu_type: str, total: int, where: str, facts: Facts) -> list[Problem]:
    if total <= 0 or not facts.clusters:
        return []
    if any(cc.spec.gpus.get(gpu_type, 0) > 0 for cc in facts.clusters):
        return []
    return [Problem(where, f"no ComputeCluster has {gpu_type!r} GPUs: this will wait")]


def _model_deployment(md: ModelDeployment, facts: Facts) -> tuple[list[Problem], list[Problem]]:
    namespace = md.metadata.namespace or ""
    tenant, denied = _owner(namespace, facts)
    spec = md.spec
    warnings: list[Problem] = []
    gpu = spec.resources.gpu
    total = spec.scaling.max_replicas * gpu.count if gpu is not None else 0
    if tenant is not None:
        if tenant.spec.quotas.max_model_deployments == 0:
            denied.append(
                Problem(
                    "metadata.namespace",
                    f"tenant {tenant.metadata.name!r}'s quota allows no ModelDeployments "
                    "(maxModelDeployments: 0)",
                )
            )
        if gpu is not None:
            denied += _gpu_problems(
                tenant,
                gpu.type,
                total,
                "spec.resources.gpu.type",
                "spec.scaling.maxReplicas",
                f"maxReplicas x resources.gpu.count ({spec.scaling.max_replicas} x {gpu.count})",
            )
    more, warned = _cluster_problems(tenant, spec.placement.clusters, facts)
    denied += more
    warnings += warned
    if gpu is not None:
        warnings += _gpu_type_warning(gpu.type, total, "spec.resources.gpu.type", facts)
    for i, adapter in enumerate(spec.adapters or ()):
        ref = adapter.fine_tune_job_ref
        if ref is not None and not facts.has("FineTuneJob", namespace, ref.name):
            warnings.append(
                Problem(
                    f"spec.adapters[{i}].fineTuneJobRef.name",
                    f"no FineTuneJob {ref.name!r} in namespace {namespace!r} (yet): the "
                    "adapter is served once that job has produced it",
                )
            )
    return denied, warnings


def _fine_tune_job(job: FineTuneJob, facts: Facts) -> tuple[list[Problem], list[Problem]]:
    namespace = job.metadata.namespace or ""
    tenant, denied = _owner(namespace, facts)
    spec = job.spec
    res = spec.resources
    total = res.workers * res.gpus_per_worker
    warnings: list[Problem] = []
    if tenant is not None:
        if tenant.spec.quotas.max_concurrent_fine_tune_jobs == 0:
            denied.append(
                Problem(
                    "metadata.namespace",
                    f"tenant {tenant.metadata.name!r}'s quota allows no FineTuneJobs "
                    "(maxConcurrentFineTuneJobs: 0)",
                )
            )
        if res.gpu_type is not None:
            denied += _gpu_problems(
                tenant,
                res.gpu_type,
                total,
                "spec.resources.gpuType",
                "spec.resources.workers",
                f"workers x gpusPerWorker ({res.workers} x {res.gpus_per_worker})",
            )
    placement = spec.placement.clusters if spec.placement is not None else None
    more, warned = _cluster_problems(tenant, placement, facts)
    denied += more
    warnings += warned
    if res.gpu_type is not None:
        warnings += _gpu_type_warning(res.gpu_type, total, "spec.resources.gpuType", facts)
    refs = [("spec.baseModel.modelDeploymentRef.name", spec.base_model.model_deployment_ref)]
    if spec.auto_deploy is not None:
        refs.append(
            ("spec.autoDeploy.modelDeploymentRef.name", spec.auto_deploy.model_deployment_ref)
        )
    for where, ref in refs:
        if ref is not None and not facts.has("ModelDeployment", namespace, ref.name):
            warnings.append(
                Problem(where, f"no ModelDeployment {ref.name!r} in namespace {namespace!r} (yet)")
            )
    return denied, warnings


def _evaluation(ev: Evaluation, facts: Facts) -> tuple[list[Problem], list[Problem]]:
    """An Evaluation runs on one pool of its target ModelDeployment's GPUs: the tenant must
    own the namespace and that GPU type must be in its quota."""
    namespace = ev.metadata.namespace or ""
    tenant, denied = _owner(namespace, facts)
    warnings: list[Problem] = []
    spec = ev.spec
    models = [("spec.target", spec.target)]
    if spec.baseline is not None:
        models.append(("spec.baseline", spec.baseline))
    for where, model in models:
        ref = model.model_deployment_ref.name
        md = next(
            (m for m in facts.deployments
             if m.metadata.namespace == namespace and m.metadata.name == ref),
            None,
        )  # fmt: skip
        if md is None:
            warnings.append(
                Problem(
                    f"{where}.modelDeploymentRef.name",
                    f"no ModelDeployment {ref!r} in namespace {namespace!r} (yet): the "
                    "evaluation waits for it",
                )
            )
        elif where == "spec.target" and tenant is not None and md.spec.resources.gpu is not None:
            gpu = md.spec.resources.gpu
            denied += _gpu_problems(
                tenant,
                gpu.type,
                gpu.count,
                f"{where}.modelDeploymentRef.name",
                f"{where}.modelDeploymentRef.name",
                f"ModelDeployment {ref!r}'s resources.gpu.count",
            )
        job = model.fine_tune_job_ref
        if job is not None and not facts.has("FineTuneJob", namespace, job.name):
            warnings.append(
                Problem(
                    f"{where}.fineTuneJobRef.name",
                    f"no FineTuneJob {job.name!r} in namespace {namespace!r} (yet)",
                )
            )
    return denied, warnings


def _tenant(tenant: Tenant, facts: Facts) -> tuple[list[Problem], list[Problem]]:
    denied, warnings = [], []
    name = tenant.metadata.name
    for i, namespace in enumerate(tenant.spec.namespaces):
        others = sorted(
            t.metadata.name
            for t in facts.tenants
            if t.metadata.name != name and namespace in t.spec.namespaces
        )
        if others:
            denied.append(
                Problem(
                    f"spec.namespaces[{i}]",
                    f"namespace {namespace!r} already belongs to tenant {others[0]!r}; a "
                    "namespace belongs to one tenant",
                )
            )
    allowed = facts.key_namespaces
    for i, ref in enumerate(tenant.spec.api_key_secret_refs or ()):
        if allowed is not None and ref.namespace not in allowed:
            denied.append(
                Problem(
                    f"spec.apiKeySecretRefs[{i}].namespace",
                    f"the router reads API-key Secrets only in namespaces "
                    f"{', '.join(sorted(allowed)) or '(none)'} (the chart's "
                    f"tenants.keyNamespaces), not in {ref.namespace!r}",
                )
            )
    known = {cc.metadata.name for cc in facts.clusters}
    for i, cluster in enumerate(tenant.spec.allowed_clusters or ()):
        if facts.clusters and cluster not in known:
            warnings.append(
                Problem(
                    f"spec.allowedClusters[{i}]",
                    f"no ComputeCluster named {cluster!r} exists (yet)",
                )
            )
    return denied, warnings
