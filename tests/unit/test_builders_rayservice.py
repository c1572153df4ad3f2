"""The RayService builder: every rendered object validates against KubeRay v1.7.0's CRD, and
the fields that matter (GPU workers, head without replicas, scaling, serve config, upgrade
strategy, labels, owner references) come out as the spec says."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
import yaml
from tests.conftest import EXAMPLES_DIR, KUBERAY_CRDS_DIR
from tests.unit.test_placement import h100, make_md

from tramontane_api.schema import SchemaValidator
from tramontane_api.v1alpha1 import ModelDeployment
from tramontane_api.v1alpha1.modeldeployment import (
    Adapter,
    AdapterRollout,
    RolloutStep,
    adapter_version,
)
from tramontane_operator.builders import (
    BuildSettings,
    build_rayservice,
    owner_selector,
    resolve_adapters,
)
from tramontane_operator.builders.rayservice import serve_config_yaml
from tramontane_operator.builders.serve import parse_quantity
from tramontane_operator.placement import ClusterView, PoolSize, place
from tramontane_operator.reconcile.rollout import Wanted, step_rollouts, with_versions
from tramontane_workers.contract.serve_config import GRPC_PORT, ServeAppConfig

HUB = ClusterView("hub", gpus_capacity={"H100": 8, "A100-80GB": 8}, in_cluster=True)
MEMBER = ClusterView("member", gpus_capacity={"H100": 8, "A100-80GB": 8})
SETTINGS = BuildSettings(worker_image="example.com/worker:1", hub_cluster="hub")


@cache
def rayservice_validator() -> SchemaValidator:
    # KubeRay's CRD is 1 MB of YAML: libyaml's loader reads it ten times faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((KUBERAY_CRDS_DIR / "ray.io_rayservices.yaml").read_text(), Loader=loader)
    return SchemaValidator.from_crd(crd, version="v1")


def example_deployments() -> list[ModelDeployment]:
    out = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ModelDeployment":
                out.append(ModelDeployment.model_validate(doc))
    return out


CPU_ONLY = {"resources": {"gpu": None, "cpu": "500m", "memory": "2Gi"},
            "runtime": {"engine": "transformers"}}  # fmt: skip
DEPLOYMENTS: dict[str, ModelDeployment] = {
    **{f"example-{md.metadata.name}": md for md in example_deployments()},
    "defaults": make_md(),
    "cpu-only": make_md(CPU_ONLY),
    "scale-to-zero": make_md({"scaling": {"minReplicas": 0, "maxReplicas": 4}}),
    "fixed-size": make_md({"scaling": {"replicas": 3, "minReplicas": 3, "maxReplicas": 3}}),
    "tensor-parallel": make_md(
        {"runtime": {"tensorParallelSize": 4}, "resources": {"gpu": {"type": "H100", "count": 4}}}
    ),
    "tolerations-and-selector": make_md(
        {
            "resources": {
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
                ],
            }
        }
    ),
    "adapters": make_md(
        {
            "adapters": [
                {"name": "uri-adapter", "uri": "s3://bucket/a"},
                {"name": "tuned", "fineTuneJobRef": {"name": "job-1"}},
                {"name": "pending", "fineTuneJobRef": {"name": "job-2"}},
            ]
        }
    ),
    "no-surge": make_md({"rollout": {"maxSurgePercent": 0}}),
    "custom-image": make_md({"runtime": {"image": "example.com/custom:2"}}),
    "no-uid": make_md(uid=None),
    "spread": make_md(
        {
            "scaling": {"replicas": 5, "minReplicas": 2, "maxReplicas": 10},
            "placement": {"strategy": "Spread", "maxClusters": 2},
        }
    ),
}


def worker_group(rs: dict[str, Any]) -> dict[str, Any]:
    groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert len(groups) == 1
    group: dict[str, Any] = groups[0]
    return group


def serve_config(rs: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return doc


def test_serve_config_yaml_is_the_plain_dump_and_follows_the_config() -> None:
    # Memoised on the JSON form: the text must stay what yaml.safe_dump writes, key order
    # included, and a changed config must never get the cached text of another.
    first = serve_config(build_rayservice(make_md(), MEMBER, 1, SETTINGS, None))
    assert serve_config_yaml(first) == yaml.safe_dump(first, sort_keys=False)
    second = serve_config(build_rayservice(make_md(), MEMBER, 3, SETTINGS, None))
    assert second != first
    assert yaml.safe_load(serve_config_yaml(second)) == second
    assert serve_config_yaml(first) == yaml.safe_dump(first, sort_keys=False)


@pytest.mark.parametrize("case", sorted(DEPLOYMENTS))
@pytest.mark.parametrize("cluster", [HUB, MEMBER], ids=["hub", "member"])
@pytest.mark.parametrize("gateway", [None, "istio"], ids=["no-gateway", "gateway"])
def test_every_rayservice_validates_against_kuberay_crd(
    case: str, cluster: ClusterView, gateway: str | None
) -> None:
    md = DEPLOYMENTS[case]
    settings = BuildSettings(worker_image="w:1", hub_cluster="hub", gateway_class_name=gateway)
    clusters = [cluster, h100("other")]
    decision = place(md, clusters) if md.spec.placement.clusters is None else None
    pool = decision.size(cluster.name) if decision and cluster.name in decision.replicas else 2
    rs = build_rayservice(md, cluster, pool, settings, "tenant-a", {"job-1": "az://out/job-1"})
    assert rayservice_validator().validate(rs) == []
    # The serve config parses back into the workers' contract.
    (app,) = serve_config(rs)["applications"]
    # Named after the ModelDeployment and its namespace: unique in the member cluster.
    expected = f"{md.metadata.namespace or 'default'}.{md.metadata.name}"
    assert ServeAppConfig.from_serve_args(app["args"]).name == expected == app["name"]


def test_gpu_worker_group() -> None:
    md = DEPLOYMENTS["tolerations-and-selector"]
    rs = build_rayservice(md, MEMBER, PoolSize(2, 1, 4), SETTINGS, None)
    group = worker_group(rs)
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 1, 4)
    assert group["rayStartParams"] == {"num-cpus": "4", "num-gpus": "1"}
    pod = group["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "example.com/worker:1"
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": 1}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_gpu_toleration_not_duplicated() -> None:
    (example,) = [md for md in example_deployments() if md.spec.resources.gpu is not None]
    pod = worker_group(build_rayservice(example, MEMBER, 2, SETTINGS, None))["template"]["spec"]
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu"]


def test_cpu_only_workers_have_no_gpu_and_no_gpu_toleration() -> None:
    rs = build_rayservice(DEPLOYMENTS["cpu-only"], MEMBER, 1, SETTINGS, None)
    group = worker_group(rs)
    pod = group["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod
    assert group["rayStartParams"] == {"num-cpus": "1", "num-gpus": "0"}
    assert group["groupName"] == "workers"
    app = serve_config(rs)["applications"][0]
    assert app["deployments"][0]["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_head_runs_no_replica_and_exposes_grpc() -> None:
    rs = build_rayservice(DEPLOYMENTS["defaults"], MEMBER, 1, SETTINGS, None)
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"} in container["ports"]
    assert "tolerations" not in head["template"]["spec"]


@pytest.mark.parametrize(
    ("scaling", "autoscale"),
    [
        ({"minReplicas": 2, "maxReplicas": 6}, True),
        ({"replicas": 3, "minReplicas": 3, "maxReplicas": 3}, False),
        ({"minReplicas": 0, "maxReplicas": 1}, True),
    ],
)
def test_autoscaling_follows_scaling(scaling: dict[str, int], autoscale: bool) -> None:
    md = make_md({"scaling": {**scaling, "targetOngoingRequests": 8, "scaleDownDelaySeconds": 60}})
    decision = place(md, [MEMBER])
    rs = build_rayservice(md, MEMBER, decision.size("member"), SETTINGS, None)
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is autoscale
    group = worker_group(rs)
    expected_replicas = scaling.get("replicas", scaling["minReplicas"])
    assert group["replicas"] == expected_replicas
    assert (group["minReplicas"], group["maxReplicas"]) == (
        scaling["minReplicas"],
        scaling["maxReplicas"],
    )
    auto = serve_config(rs)["applications"][0]["deployments"][0]["autoscaling_config"]
    assert auto["min_replicas"] == scaling["minReplicas"]
    assert auto["max_replicas"] == scaling["maxReplicas"]
    assert auto["initial_replicas"] == expected_replicas
    assert auto["target_ongoing_requests"] == 8
    assert auto["downscale_delay_s"] == 60


def test_spread_pools_get_their_share_of_the_bounds() -> None:
    md = DEPLOYMENTS["spread"]
    decision = place(md, [h100("a"), h100("b")])
    shares = [
        (g["replicas"], g["minReplicas"], g["maxReplicas"])
        for g in (
            worker_group(build_rayservice(md, ClusterView(n), decision.size(n), SETTINGS, None))
            for n in ("a", "b")
        )
    ]
    assert shares == [(3, 1, 5), (2, 1, 5)]


def test_serve_config_carries_model_runtime_and_adapters() -> None:
    (example,) = [md for md in example_deployments() if md.spec.resources.gpu is not None]
    rs = build_rayservice(example, MEMBER, 2, SETTINGS, None)
    doc = serve_config(rs)
    assert doc["grpc_options"]["port"] == GRPC_PORT
    app = ServeAppConfig.from_serve_args(doc["applications"][0]["args"])
    spec = example.spec
    assert app.engine.model_uri == spec.model.source
    assert app.engine.served_model_name == spec.model.name
    assert app.engine.engine == "vllm"
    assert app.engine.dtype == "bfloat16"
    assert app.engine.max_model_len == 32768
    assert app.engine.max_adapters_per_replica == 8
    uri = "az://adapters/search/query-rewriter-v3"  # each version under its own name
    assert [(a.name, a.uri) for a in app.engine.adapters] == [
        (f"search-query-rewriter@{adapter_version(uri)}", uri)
    ]
    assert app.resources.num_gpus == 1
    assert app.route_prefix == "/search/mistral-7b-instruct"
    assert app.name == "search.mistral-7b-instruct"


def test_fine_tuned_adapters_resolve_through_the_callers_mapping() -> None:
    md = DEPLOYMENTS["adapters"]
    resolved = resolve_adapters(md, {"job-1": "az://out/job-1"})
    a, tuned = adapter_version("s3://bucket/a"), adapter_version("az://out/job-1")
    assert [(a.name, a.uri) for a in resolved.served] == [
        (f"uri-adapter@{a}", "s3://bucket/a"),
        (f"tuned@{tuned}", "az://out/job-1"),
    ]
    assert resolved.unresolved == ["pending"]
    assert resolved.names == ["uri-adapter", "tuned"]
    rs = build_rayservice(md, MEMBER, 1, SETTINGS, None, {"job-1": "az://out/job-1"})
    adapters = serve_config(rs)["applications"][0]["args"]["engine"]["adapters"]
    assert [a["name"] for a in adapters] == [f"uri-adapter@{a}", f"tuned@{tuned}"]


def test_every_kept_version_is_served_under_its_own_name() -> None:
    """Kept versions (status.adapterVersions) load side by side, whatever their weights."""
    md = DEPLOYMENTS["adapters"]
    rows = step_rollouts(
        [Wanted("uri-adapter", "s3://bucket/a")], None, {}, datetime(2026, 1, 1, tzinfo=UTC)
    ).versions
    rows = step_rollouts(
        [Wanted("uri-adapter", "s3://bucket/b", AdapterRollout(steps=[RolloutStep(weight=10)]))],
        rows,
        {},
        datetime(2026, 1, 1, tzinfo=UTC),
    ).versions
    served = resolve_adapters(with_versions(md, rows)).served
    names = {a.name for a in served}
    assert {
        f"uri-adapter@{adapter_version(u)}" for u in ("s3://bucket/a", "s3://bucket/b")
    } <= names
    reweighted = [
        r.model_copy(update={"versions": [v.model_copy(update={"weight": 50}) for v in r.versions]})
        for r in rows or []
    ]
    assert resolve_adapters(with_versions(md, reweighted)).served == served


@pytest.mark.parametrize(
    ("case", "gateway", "expected"),
    [
        ("defaults", None, {"type": "NewCluster"}),
        ("no-surge", "istio", {"type": "NewCluster"}),
        (
            "defaults",
            "istio",
            {
                "type": "NewClusterWithIncrementalUpgrade",
                "clusterUpgradeOptions": {
                    "gatewayClassName": "istio",
                    "maxSurgePercent": 25,
                    "stepSizePercent": 25,
                    "intervalSeconds": 30,
                },
            },
        ),
    ],
)
def test_upgrade_strategy_from_rollout(
    case: str, gateway: str | None, expected: dict[str, Any]
) -> None:
    settings = BuildSettings(gateway_class_name=gateway)
    rs = build_rayservice(DEPLOYMENTS[case], MEMBER, 1, settings, None)
    assert rs["spec"]["upgradeStrategy"] == expected


def test_metadata_labels_and_owner_reference_only_in_hub() -> None:
    md = DEPLOYMENTS["defaults"]
    hub = build_rayservice(md, HUB, 1, SETTINGS, "tenant-a")
    member = build_rayservice(md, MEMBER, 1, SETTINGS, None)
    assert hub["apiVersion"] == "ray.io/v1"
    assert hub["kind"] == "RayService"
    assert (hub["metadata"]["name"], hub["metadata"]["namespace"]) == ("chat", "team-a")
    assert hub["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "tramontane",
        "tramontane.dev/owner-kind": "ModelDeployment",
        "tramontane.dev/owner-name": "chat",
        "tramontane.dev/owner-namespace": "team-a",
        "tramontane.dev/owner-uid": "uid-1",
        "tramontane.dev/cluster": "hub",
        "tramontane.dev/tenant": "tenant-a",
    }
    assert hub["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "tramontane.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "chat",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    config = hub["spec"]["rayClusterConfig"]
    for template in (config["headGroupSpec"]["template"], worker_group(hub)["template"]):
        assert template["metadata"]["labels"] == hub["metadata"]["labels"]
    assert "ownerReferences" not in member["metadata"]
    assert "tramontane.dev/tenant" not in member["metadata"]["labels"]
    assert member["metadata"]["labels"]["tramontane.dev/cluster"] == "member"
    # The hub is recognised by name too, and no owner reference without a uid.
    by_name = build_rayservice(md, ClusterView("hub"), 1, SETTINGS, None)
    assert "ownerReferences" in by_name["metadata"]
    assert (
        "ownerReferences"
        not in build_rayservice(DEPLOYMENTS["no-uid"], HUB, 1, SETTINGS, None)["metadata"]
    )


def test_owner_selector_matches_child_labels() -> None:
    md = DEPLOYMENTS["defaults"]
    labels = build_rayservice(md, MEMBER, 1, SETTINGS, None)["metadata"]["labels"]
    for term in owner_selector(md).split(","):
        key, value = term.split("=")
        assert labels[key] == value


def test_image_override_and_determinism() -> None:
    md = DEPLOYMENTS["custom-image"]
    first = build_rayservice(md, MEMBER, 2, SETTINGS, None)
    assert worker_group(first)["template"]["spec"]["containers"][0]["image"] == (
        "example.com/custom:2"
    )
    head = first["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == "example.com/custom:2"
    assert build_rayservice(md, MEMBER, 2, SETTINGS, None) == first


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", 0.5), ("4", 4.0), ("16Gi", 16 * 2**30), ("1.5", 1.5), ("2k", 2000.0)],
)
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text, "cpu") == value


def test_parse_quantity_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec.resources.cpu: 'x1' is not a Kubernetes"):
        parse_quantity("x1", "spec.resources.cpu")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "rayClusterConfig", "headGroupSpec", "replicas"), 1),  # no such field
        (("spec", "upgradeStrategy", "clusterUpgradeOptions"), {"maxSurgePercent": 25}),
        (("spec", "rayClusterConfig", "enableInTreeAutoscaling"), "yes"),
    ],
)
def test_the_crd_check_rejects_what_kuberay_would(path: tuple[str, ...], value: Any) -> None:
    rs = build_rayservice(DEPLOYMENTS["defaults"], MEMBER, 1, SETTINGS, None)
    node = rs
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert rayservice_validator().validate(rs) != []


@pytest.mark.parametrize(("target", "expected"), [(2, 16), (8, 16), (12.5, 25), (100, 200)])
def test_max_ongoing_requests_stays_above_the_autoscaling_target(
    target: float, expected: int
) -> None:
    md = make_md({"scaling": {"targetOngoingRequests": target}})
    deployment = serve_config(build_rayservice(md, MEMBER, 1, SETTINGS, None))["applications"][0]
    assert deployment["deployments"][0]["max_ongoing_requests"] == expected


AKS_SETTINGS = BuildSettings(
    worker_image="acr.azurecr.io/worker:1",
    gpu_worker_image="acr.azurecr.io/worker-gpu:1",
    hub_cluster="hub",
    gpu_node_selector={"kubernetes.azure.com/accelerator": "nvidia", "pool": "default-gpu"},
    gpu_tolerations=(
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ),
    worker_service_account="tramontane-worker",
    worker_pod_labels={"azure.workload.identity/use": "true", "tramontane.dev/tenant": "x"},
    worker_env=(
        {"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": "mlweights"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ),
)


def ray_pods(rs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod template of a RayService (head and workers)."""
    config = rs["spec"]["rayClusterConfig"]
    return [config["headGroupSpec"]["template"]] + [
        group["template"] for group in config["workerGroupSpecs"]
    ]


@pytest.mark.parametrize(
    ("name", "image"),
    [("defaults", "acr.azurecr.io/worker-gpu:1"), ("cpu-only", "acr.azurecr.io/worker:1")],
)
def test_the_gpu_image_runs_gpu_pools_and_the_cpu_image_the_others(name: str, image: str) -> None:
    rs = build_rayservice(DEPLOYMENTS[name], MEMBER, 1, AKS_SETTINGS, None)
    assert [pod["spec"]["containers"][0]["image"] for pod in ray_pods(rs)] == [image, image]
    rayservice_validator().validate(rs)


@pytest.mark.parametrize("name", ["defaults", "cpu-only"])
def test_worker_env_reaches_every_container_of_every_ray_pod(name: str) -> None:
    rs = build_rayservice(DEPLOYMENTS[name], MEMBER, 1, AKS_SETTINGS, None)
    assert rayservice_validator().validate(rs) == []
    containers = [c for pod in ray_pods(rs) for c in pod["spec"]["containers"]]
    assert len(containers) == 2
    for container in containers:
        assert container["env"] == [dict(e) for e in AKS_SETTINGS.worker_env]
    plain = build_rayservice(DEPLOYMENTS[name], MEMBER, 1, SETTINGS, None)
    assert all("env" not in c for pod in ray_pods(plain) for c in pod["spec"]["containers"])


def test_a_spec_image_wins_over_both_default_images() -> None:
    rs = build_rayservice(DEPLOYMENTS["custom-image"], MEMBER, 1, AKS_SETTINGS, None)
    assert {pod["spec"]["containers"][0]["image"] for pod in ray_pods(rs)} == {
        "example.com/custom:2"
    }


def test_gpu_node_defaults_join_the_specs_own_on_gpu_workers_only() -> None:
    md = DEPLOYMENTS["tolerations-and-selector"]
    rs = build_rayservice(md, MEMBER, 1, AKS_SETTINGS, None)
    rayservice_validator().validate(rs)
    pod = worker_group(rs)["template"]["spec"]
    # The spec's `pool: gpu` wins over the default's `pool`; the accelerator label is added.
    assert pod["nodeSelector"] == {"kubernetes.azure.com/accelerator": "nvidia", "pool": "gpu"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    ]  # the nvidia.com/gpu default is not repeated
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "nodeSelector" not in head and "tolerations" not in head  # no GPU: any node
    cpu = worker_group(build_rayservice(DEPLOYMENTS["cpu-only"], MEMBER, 1, AKS_SETTINGS, None))
    assert "nodeSelector" not in cpu["template"]["spec"]
    assert "tolerations" not in cpu["template"]["spec"]


def test_worker_service_account_and_labels_on_every_ray_pod() -> None:
    md = DEPLOYMENTS["defaults"]
    rs = build_rayservice(md, MEMBER, 1, AKS_SETTINGS, "team")
    for pod in ray_pods(rs):
        assert pod["spec"]["serviceAccountName"] == "tramontane-worker"
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        # The operator's own labels cannot be overridden by the extra ones.
        assert pod["metadata"]["labels"]["tramontane.dev/tenant"] == "team"
    plain = build_rayservice(md, MEMBER, 1, SETTINGS, "team")
    assert all("serviceAccountName" not in pod["spec"] for pod in ray_pods(plain))


def test_an_adapter_named_like_the_served_model_is_refused() -> None:
    md = DEPLOYMENTS["adapters"]
    clash = Adapter(name=md.spec.model.name, uri="s3://bucket/a")
    bad = md.model_copy(update={"spec": md.spec.model_copy(update={"adapters": [clash]})})
    with pytest.raises(ValueError, match=r"equals spec\.model\.name"):
        build_rayservice(bad, MEMBER, 1, SETTINGS, None)
