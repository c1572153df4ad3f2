"""A pool or job asking for one GPU type runs on that type's nodes: the labels a ComputeCluster
gives each type (`spec.gpuNodeSelectors`) reach the GPU workers of every builder (RayService,
fine-tuning RayJob, evaluation RayJob), between the operator's GPU defaults and the spec's own
node selector; other clusters and CPU pods are untouched."""

from __future__ import annotations

from typing import Any

from tests.unit.test_builders_rayjob import AKS_SETTINGS, JOBS, rayjob_validator
from tests.unit.test_builders_rayservice import DEPLOYMENTS, rayservice_validator
from tests.unit.test_reconcile_evaluation import RESOLVED, TARGET, make_ev, make_md

from tramontane_api.v1alpha1 import ComputeCluster
from tramontane_operator.builders import build_rayservice
from tramontane_operator.builders.evaluation_rayjob import build_eval_config, build_eval_rayjob
from tramontane_operator.builders.rayjob import build_rayjob, build_train_config
from tramontane_operator.placement import ClusterView

POOLS = {"H100": {"kubernetes.azure.com/agentpool": "h100"},
         "A100-80GB": {"kubernetes.azure.com/agentpool": "a100"}}  # fmt: skip
TWO_POOLS = ClusterView("aks", gpus_capacity={"H100": 8, "A100-80GB": 16},
                        gpu_node_selectors=POOLS)  # fmt: skip
ACCELERATOR = {"kubernetes.azure.com/accelerator": "nvidia"}  # AKS_SETTINGS' GPU default


def workers(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    return dict(group["template"]["spec"])


def test_a_model_pool_lands_on_its_gpu_types_nodes() -> None:
    md = DEPLOYMENTS["defaults"]  # one H100 per replica
    rs = build_rayservice(md, TWO_POOLS, 1, AKS_SETTINGS, None)
    rayservice_validator().validate(rs)
    assert workers(rs)["nodeSelector"] == {**ACCELERATOR, **POOLS["H100"]}
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "nodeSelector" not in head
    # Another cluster without selectors: only the defaults.
    plain = ClusterView("gke", gpus_capacity={"H100": 8})
    assert workers(build_rayservice(md, plain, 1, AKS_SETTINGS, None))["nodeSelector"] == ACCELERATOR
    # The spec's own node selector wins for its keys.
    mine = md.model_copy(update={"spec": md.spec.model_copy(update={
        "resources": md.spec.resources.model_copy(
            update={"node_selector": {"kubernetes.azure.com/agentpool": "reserved"}})})})  # fmt: skip
    assert workers(build_rayservice(mine, TWO_POOLS, 1, AKS_SETTINGS, None))["nodeSelector"] == {
        **ACCELERATOR, "kubernetes.azure.com/agentpool": "reserved"}  # fmt: skip
    # A CPU pool asks for no GPU nodes.
    cpu = build_rayservice(DEPLOYMENTS["cpu-only"], TWO_POOLS, 1, AKS_SETTINGS, None)
    assert "nodeSelector" not in workers(cpu)


def test_a_fine_tune_job_lands_on_its_gpu_types_nodes() -> None:
    job = JOBS["defaults"]  # H100 workers
    obj = build_rayjob(job, build_train_config(job, "hf://m/x"), TWO_POOLS, AKS_SETTINGS, "t")
    rayjob_validator().validate(obj)
    assert workers(obj)["nodeSelector"] == {**ACCELERATOR, **POOLS["H100"]}


def test_an_evaluation_lands_on_its_deployments_gpu_types_nodes() -> None:
    md = make_md(resources={"gpu": {"type": "A100-80GB", "count": 1}})
    ev = make_ev()
    config = build_eval_config(ev, TARGET, RESOLVED.baseline, md)
    obj = build_eval_rayjob(ev, config, md, TWO_POOLS, AKS_SETTINGS, "t")
    assert rayjob_validator().validate(obj) == []
    assert workers(obj)["nodeSelector"] == {**ACCELERATOR, **POOLS["A100-80GB"]}


def test_the_cluster_view_carries_the_selectors_of_its_compute_cluster() -> None:
    cc = ComputeCluster.model_validate({
        "apiVersion": "tramontane.dev/v1alpha1", "kind": "ComputeCluster",
        "metadata": {"name": "aks"},
        "spec": {"cloud": "azure", "region": "westeurope", "connection": {"inCluster": True},
                 "gpus": {"H100": 8, "A100-80GB": 16}, "gpuNodeSelectors": POOLS},
    })  # fmt: skip
    view = ClusterView.from_compute_cluster(cc, reachable=True, kuberay_installed=True)
    assert view.gpu_nodes("H100") == POOLS["H100"] and view.gpu_nodes("L4") == {}
    assert view.gpu_nodes(None) == {}
