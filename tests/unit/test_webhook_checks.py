"""The admission webhook's checks (`webhook.checks.review`): one row per refusal or warning.

Each row builds an object from a valid base, the facts the hub caches would hold, and says
which problems (`field: message` fragments) refuse it and which warnings come with it. An
empty list of problems means admitted; every row asserts both lists exactly by count.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from tramontane_api.v1alpha1 import ComputeCluster, ModelDeployment, Tenant
from tramontane_operator.webhook.checks import Facts, Operation, TenantRequired, review

NS = "team-a"


def tenant(name: str = "team", namespaces: tuple[str, ...] = (NS,), **spec: Any) -> Tenant:
    body = {"namespaces": list(namespaces), **spec}
    return Tenant.model_validate(
        {
            "apiVersion": "tramontane.dev/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def cluster(name: str, gpus: dict[str, int] | None = None) -> ComputeCluster:
    return ComputeCluster.model_validate(
        {
            "apiVersion": "tramontane.dev/v1alpha1",
            "kind": "ComputeCluster",
            "metadata": {"name": name},
            "spec": {
                "cloud": "azure",
                "region": "westeurope",
                "connection": {"inCluster": True},
                "gpus": gpus or {"H100": 8},
            },
        }
    )


def md(name: str = "chat", namespace: str = NS, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "mistral-7b", "source": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
        "resources": {"gpu": {"type": "H100", "count": 1}},
        "scaling": {"minReplicas": 1, "maxReplicas": 2},
    }
    base.update(spec)
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def ftj(name: str = "tune", namespace: str = NS, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "baseModel": {"uri": "hf://mistralai/Mistral-7B-v0.3"},
        "trainingFiles": [{"uri": "s3://data/train.jsonl"}],
        "hyperparameters": {"trainingSteps": 10},
        "resources": {"workers": 2, "gpusPerWorker": 2, "gpuType": "H100"},
        "output": {"uri": "s3://out/tune"},
    }
    base.update(spec)
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def ev(name: str = "qa", namespace: str = NS, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "target": {"modelDeploymentRef": {"name": "chat"}, "fineTuneJobRef": {"name": "tune"}},
        "dataset": {"uri": "s3://data/qa.jsonl"},
        "metrics": [{"name": "exactMatch", "min": 0.8}],
    }
    base.update(spec)
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "Evaluation",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def tenant_body(name: str, namespaces: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"namespaces": namespaces, **spec},
    }


def cc_body(name: str) -> dict[str, Any]:
    return cluster(name).model_dump(by_alias=True, exclude_none=True, mode="json")


def member_body(name: str, secret_namespace: str) -> dict[str, Any]:
    """A member ComputeCluster reached through a kubeconfig Secret in `secret_namespace`."""
    body = cc_body(name)
    ref = {"namespace": secret_namespace, "name": f"{name}-kubeconfig"}
    body["spec"]["connection"] = {"kubeconfigSecretRef": ref}
    return body


KEYS = [{"namespace": "tramontane-keys", "name": "k1"}, {"namespace": NS, "name": "k2"}]


QUOTA = {"gpus": {"H100": 4, "A100": 0}}
CLUSTERS = (cluster("aks"), cluster("onprem", {"L4": 4}))


@dataclass(frozen=True)
class Row:
    id: str
    obj: dict[str, Any]
    tenants: tuple[Tenant, ...] = (tenant(quotas=QUOTA),)
    problems: list[str] = field(default_factory=list)  # fragments, one per problem, in order
    warnings: list[str] = field(default_factory=list)
    old: dict[str, Any] | None = None
    required: TenantRequired = "auto"
    existing_md: tuple[str, ...] = ()
    existing_md_bodies: tuple[dict[str, Any], ...] = ()
    key_namespaces: frozenset[str] | None = None
    kubeconfig_namespace: str | None = None

    @property
    def operation(self) -> Operation:
        return "CREATE" if self.old is None else "UPDATE"


def _patched(obj: dict[str, Any], **spec: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["spec"].update(spec)
    return out


ROWS = [
    # --- admitted ---------------------------------------------------------------------------
    Row("md-fits", md()),
    Row("ftj-fits", ftj()),
    Row("md-cpu-only-any-quota", md(resources={}, runtime={"engine": "transformers"})),
    Row("md-no-gpus-map-means-unlimited", md(scaling={"maxReplicas": 100}), (tenant(),)),
    # --- namespace with no Tenant -----------------------------------------------------------
    Row("md-unowned-namespace", md(namespace="nobody"),
        problems=["metadata.namespace: namespace 'nobody' belongs to no Tenant"]),
    Row("ftj-unowned-namespace", ftj(namespace="nobody"),
        problems=["metadata.namespace: namespace 'nobody' belongs to no Tenant"]),
    Row("md-no-tenants-at-all-is-single-tenant", md(namespace="nobody"), tenants=()),
    Row("md-no-tenants-required-always", md(namespace="nobody"), tenants=(), required="always",
        problems=["metadata.namespace: namespace 'nobody' belongs to no Tenant"]),
    Row("md-unowned-allowed-with-never", md(namespace="nobody"), required="never"),
    # --- GPU types and total quota ----------------------------------------------------------
    Row("md-gpu-type-absent", md(resources={"gpu": {"type": "L4", "count": 1}}),
        problems=["spec.resources.gpu.type: GPU type 'L4' is not in tenant 'team''s quota (GPU types allowed: H100 (4))"]),
    Row("md-gpu-type-zero", md(resources={"gpu": {"type": "A100", "count": 1}}),
        problems=["spec.resources.gpu.type: GPU type 'A100' is not in tenant 'team''s quota"],
        warnings=["spec.resources.gpu.type: no ComputeCluster has 'A100' GPUs"]),
    Row("md-never-fits", md(scaling={"minReplicas": 1, "maxReplicas": 3}, resources={"gpu": {"type": "H100", "count": 2}}),
        problems=["spec.scaling.maxReplicas: maxReplicas x resources.gpu.count (3 x 2) = 6 H100 GPUs can never fit tenant 'team''s quota of 4 H100 GPUs"]),
    Row("ftj-never-fits", ftj(resources={"workers": 3, "gpusPerWorker": 2, "gpuType": "H100"}),
        problems=["spec.resources.workers: workers x gpusPerWorker (3 x 2) = 6 H100 GPUs can never fit"]),
    Row("ftj-gpu-type-absent", ftj(resources={"workers": 1, "gpusPerWorker": 1, "gpuType": "L4"}),
        problems=["spec.resources.gpuType: GPU type 'L4' is not in tenant 'team''s quota"]),
    Row("ftj-cpu-only-any-gpu-type", ftj(resources={"workers": 1, "gpusPerWorker": 0})),
    Row("md-no-deployments-allowed", md(), (tenant(quotas={"maxModelDeployments": 0}),),
        problems=["metadata.namespace: tenant 'team''s quota allows no ModelDeployments"]),
    Row("ftj-no-jobs-allowed", ftj(), (tenant(quotas={"maxConcurrentFineTuneJobs": 0}),),
        problems=["metadata.namespace: tenant 'team''s quota allows no FineTuneJobs"]),
    # --- clusters ----------------------------------------------------------------------------
    Row("md-cluster-not-allowed", md(placement={"clusters": ["aks", "onprem"]}),
        (tenant(quotas=QUOTA, allowedClusters=["aks"]),),
        problems=["spec.placement.clusters[1]: cluster 'onprem' is not in tenant 'team''s allowedClusters (aks)"]),
    Row("ftj-cluster-not-allowed", ftj(placement={"clusters": ["onprem"]}),
        (tenant(quotas=QUOTA, allowedClusters=[]),),
        problems=["spec.placement.clusters[0]: cluster 'onprem' is not in tenant 'team''s allowedClusters (none)"]),
    Row("md-unknown-cluster-warns", md(placement={"clusters": ["gke"]}),
        warnings=["spec.placement.clusters[0]: no ComputeCluster named 'gke' exists (yet)"]),
    Row("md-gpu-type-nowhere-warns", md(resources={"gpu": {"type": "H200", "count": 1}}), (tenant(),),
        warnings=["spec.resources.gpu.type: no ComputeCluster has 'H200' GPUs: this will wait"]),
    # --- references ---------------------------------------------------------------------------
    Row("md-adapter-of-missing-job-warns",
        md(adapters=[{"name": "support", "fineTuneJobRef": {"name": "later"}}]),
        warnings=["spec.adapters[0].fineTuneJobRef.name: no FineTuneJob 'later' in namespace 'team-a' (yet)"]),
    Row("ftj-base-of-missing-md-warns", ftj(baseModel={"modelDeploymentRef": {"name": "gone"}}),
        warnings=["spec.baseModel.modelDeploymentRef.name: no ModelDeployment 'gone'"]),
    Row("ftj-refs-to-existing-md", ftj(baseModel={"modelDeploymentRef": {"name": "chat"}},
        autoDeploy={"modelDeploymentRef": {"name": "chat"}, "adapterName": "a"}),
        existing_md=("chat",)),
    Row("ftj-auto-deploy-missing-md-warns", ftj(autoDeploy={"modelDeploymentRef": {"name": "x"}, "adapterName": "a"}),
        warnings=["spec.autoDeploy.modelDeploymentRef.name: no ModelDeployment 'x'"]),
    # --- Evaluations: the namespace's tenant, the GPU type of the target's ModelDeployment --------
    Row("ev-fits", ev(), existing_md=("chat",),
        warnings=["spec.target.fineTuneJobRef.name: no FineTuneJob 'tune' in namespace 'team-a' (yet)"]),
    Row("ev-unowned-namespace", ev(namespace="nobody"),
        problems=["metadata.namespace: namespace 'nobody' belongs to no Tenant"],
        warnings=["spec.target.modelDeploymentRef.name: no ModelDeployment 'chat' in namespace 'nobody' (yet)",
                  "spec.target.fineTuneJobRef.name: no FineTuneJob 'tune'"]),
    Row("ev-gpu-type-not-in-quota", ev(target={"modelDeploymentRef": {"name": "l4"}}),
        existing_md_bodies=(md("l4", resources={"gpu": {"type": "L4", "count": 1}}),),
        problems=["spec.target.modelDeploymentRef.name: GPU type 'L4' is not in tenant 'team''s quota"]),
    Row("ev-one-pool-never-fits", ev(target={"modelDeploymentRef": {"name": "big"}}),
        existing_md_bodies=(md("big", resources={"gpu": {"type": "H100", "count": 8}}, runtime={"tensorParallelSize": 8}),),
        problems=["spec.target.modelDeploymentRef.name: ModelDeployment 'big''s resources.gpu.count = 8 H100 GPUs can never fit"]),
    Row("ev-min-delta-needs-baseline", ev(metrics=[{"name": "tokenF1", "minDelta": 0.1}]),
        problems=["spec.metrics: metrics[].minDelta compares with a baseline"]),
    # --- what `tramontane validate` checks (schema, pydantic, CEL) ---------------------------
    Row("md-engine-format", md(runtime={"engine": "transformers"}, resources={},
        model={"name": "m", "source": "hf://m/m", "format": "mistral"}),
        problems=["spec.model.format: engine transformers needs a Hugging Face checkpoint"]),
    Row("md-vllm-without-gpu", md(resources={}),
        problems=["spec.runtime.engine: engine vllm needs resources.gpu"]),
    Row("md-unknown-field", md(replicas=3), problems=["spec.replicas: unknown field"]),
    Row("md-wrong-api-version", {**md(), "apiVersion": "tramontane.dev/v1"},
        problems=["apiVersion: expected tramontane.dev/v1alpha1 for kind ModelDeployment"]),
    # --- updates -------------------------------------------------------------------------------
    Row("update-metadata-only-always-allowed",
        {**md(namespace="nobody"), "metadata": {"name": "chat", "namespace": "nobody", "finalizers": ["x"]}},
        old=md(namespace="nobody")),
    Row("update-being-deleted-allowed",
        {**md(scaling={"maxReplicas": 9}), "metadata": {"name": "chat", "namespace": NS, "deletionTimestamp": "2025-01-01T00:00:00Z"}},
        old=md()),
    Row("update-scale-up-past-quota", md(scaling={"minReplicas": 1, "maxReplicas": 5}), old=md(),
        problems=["spec.scaling.maxReplicas: maxReplicas x resources.gpu.count (5 x 1) = 5 H100"]),
    Row("update-scale-down-still-over-a-lowered-quota-is-allowed",
        md(scaling={"minReplicas": 1, "maxReplicas": 5}), old=md(scaling={"minReplicas": 1, "maxReplicas": 6})),
    Row("update-scale-up-while-over-a-lowered-quota",
        md(scaling={"minReplicas": 1, "maxReplicas": 7}), old=md(scaling={"minReplicas": 1, "maxReplicas": 6}),
        problems=["spec.scaling.maxReplicas: maxReplicas x resources.gpu.count (7 x 1) = 7 H100"]),
    Row("update-other-change-while-over-a-lowered-quota",
        md(scaling={"minReplicas": 1, "maxReplicas": 6}, priority=5), old=md(scaling={"minReplicas": 1, "maxReplicas": 6})),
    Row("update-immutable-by-cel", _patched(ftj(), output={"uri": "s3://out/other"}), old=ftj(),
        problems=["spec.output: output is immutable; create a new object to change it"]),
    Row("update-resources-while-running-by-cel",
        _patched(ftj(), resources={"workers": 1, "gpusPerWorker": 1, "gpuType": "H100"}), old=ftj(),
        problems=["spec.resources: resources can change only while the job is suspended"]),
    # --- Tenants and ComputeClusters ------------------------------------------------------------
    Row("tenant-claims-owned-namespace", tenant_body("other", ["team-b", NS]),
        problems=["spec.namespaces[1]: namespace 'team-a' already belongs to tenant 'team'"]),
    Row("tenant-updates-itself", tenant_body("team", [NS, "team-b"]), old=tenant_body("team", [NS])),
    Row("tenant-unknown-allowed-cluster-warns", tenant_body("other", ["team-b"], allowedClusters=["gke"]),
        warnings=["spec.allowedClusters[0]: no ComputeCluster named 'gke' exists (yet)"]),
    Row("computecluster-valid", cc_body("gke")),
    # --- Secrets only where the chart's roles let them be read ---------------------------------
    Row("tenant-key-outside-key-namespaces", tenant_body("other", ["team-b"], apiKeySecretRefs=KEYS),
        key_namespaces=frozenset({"tramontane-keys"}),
        problems=["spec.apiKeySecretRefs[1].namespace: the router reads API-key Secrets only in namespaces tramontane-keys (the chart's tenants.keyNamespaces), not in 'team-a'"]),
    Row("tenant-keys-unchecked-without-key-namespaces", tenant_body("other", ["team-b"], apiKeySecretRefs=KEYS)),
    Row("tenant-keys-in-key-namespaces", tenant_body("other", ["team-b"], apiKeySecretRefs=KEYS[:1]),
        key_namespaces=frozenset({"tramontane-keys"})),
    Row("computecluster-kubeconfig-elsewhere", member_body("gke", NS),
        kubeconfig_namespace="tramontane-system",
        problems=["spec.connection.kubeconfigSecretRef.namespace: the operator reads kubeconfig Secrets in namespace 'tramontane-system' only: create Secret 'gke-kubeconfig' there"]),
    Row("computecluster-kubeconfig-in-operator-namespace", member_body("gke", "tramontane-system"),
        kubeconfig_namespace="tramontane-system"),
    Row("computecluster-kubeconfig-unchecked-outside-a-pod", member_body("gke", NS)),
    # --- GPU types told apart on a cluster with several --------------------------------------
    Row("computecluster-two-gpu-types-without-their-nodes",
        {**cc_body("gke"), "spec": {**cc_body("gke")["spec"], "gpus": {"H100": 8, "L4": 4}}},
        warnings=["spec.gpuNodeSelectors: gpus lists 2 GPU types and this does not give the nodes of H100, L4: their pools and jobs may be scheduled on another type's nodes"]),
    Row("computecluster-two-gpu-types-one-without-its-nodes",
        {**cc_body("gke"), "spec": {**cc_body("gke")["spec"], "gpus": {"H100": 8, "L4": 4},
                                    "gpuNodeSelectors": {"H100": {"pool": "h100"}}}},
        warnings=["does not give the nodes of L4:"]),
    Row("computecluster-two-gpu-types-with-their-nodes",
        {**cc_body("gke"), "spec": {**cc_body("gke")["spec"], "gpus": {"H100": 8, "L4": 4},
                                    "gpuNodeSelectors": {"H100": {"pool": "h100"},
                                                         "L4": {"pool": "l4"}}}}),
    Row("computecluster-node-selector-of-an-unlisted-type",
        {**cc_body("gke"), "spec": {**cc_body("gke")["spec"], "gpus": {"H100": 8},
                                    "gpuNodeSelectors": {"L4": {"pool": "l4"}}}},
        problems=["gpuNodeSelectors names a GPU type that gpus does not list"]),
]  # fmt: skip


def test_table_covers_each_kind_and_both_operations() -> None:
    kinds = {row.obj["kind"] for row in ROWS}
    assert kinds == {"ModelDeployment", "FineTuneJob", "Evaluation", "Tenant", "ComputeCluster"}
    assert {row.operation for row in ROWS} == {"CREATE", "UPDATE"}
    assert sum(1 for row in ROWS if row.problems) >= 20


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_review(row: Row) -> None:
    deployments = [ModelDeployment.model_validate(md(name)) for name in row.existing_md]
    deployments += [ModelDeployment.model_validate(body) for body in row.existing_md_bodies]
    facts = Facts(
        tenants=row.tenants,
        clusters=CLUSTERS,
        deployments=deployments,
        tenant_required=row.required,
        key_namespaces=row.key_namespaces,
        kubeconfig_namespace=row.kubeconfig_namespace,
    )
    verdict = review(row.operation, row.obj, row.old, facts)
    assert len(verdict.problems) == len(row.problems), verdict.problems
    for got, want in zip(verdict.problems, row.problems, strict=True):
        assert want in got
    assert verdict.allowed is (not row.problems)
    assert len(verdict.warnings) == len(row.warnings), verdict.warnings
    for got, want in zip(verdict.warnings, row.warnings, strict=True):
        assert want in got


def test_a_namespace_claimed_twice_is_judged_by_the_first_tenant_by_name() -> None:
    """Like the operator's `Indexes.tenant_of`: with a conflict, the first tenant by name."""
    strict = tenant("a-strict", quotas={"gpus": {"H100": 1}})
    loose = tenant("b-loose", quotas={"gpus": {"H100": 100}})
    verdict = review("CREATE", md(), None, Facts(tenants=(loose, strict)))
    assert verdict.problems and "tenant 'a-strict'" in verdict.problems[0]


def test_an_old_object_that_no_longer_parses_is_not_used_for_ratcheting() -> None:
    old = md()
    old["spec"]["bogus"] = True
    verdict = review("UPDATE", md(scaling={"maxReplicas": 5}), old, Facts(tenants=ROWS[0].tenants))
    assert verdict.problems and "5 H100 GPUs can never fit" in verdict.problems[0]
