"""The chart's router, worker values and AKS values: what `helm template` renders.

The router's command is parsed by the real `tramontane` CLI parser, its readiness probe names
the service the router's gRPC health service registers, its grace period follows its drain
setting; every pod template the chart renders passes the restricted Pod Security Standard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.pod_security import template_violations
from tests.unit.test_chart import (
    AKS_VALUES,
    FULL_VALUES,
    NAMESPACE,
    VALUE_SETS,
    by_kind,
    by_name,
    component_of,
    env_of,
    helm_template,
    render,
)

from tramontane_cli.main import build_parser
from tramontane_operator.settings import OperatorSettings
from tramontane_router.grpc_api import SERVICE

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}


def router_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(docs, "Deployment", "router")["spec"]["template"]["spec"]["containers"]
    return container


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (container,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return env_of(container)


def test_router_runs_the_real_router_command_with_its_defaults(helm: str) -> None:
    docs = render(helm)
    deployment = by_kind(docs, "Deployment", "router")
    pod = deployment["spec"]["template"]["spec"]
    container = router_container(docs)
    assert container["command"][:3] == ["tramontane", "router", "run"]
    # The CLI accepts exactly what the chart passes (a renamed flag fails here, not in a pod).
    args = build_parser().parse_args(container["command"][1:])
    assert (args.grpc_listen, args.http_listen) == ("0.0.0.0:8081", "0.0.0.0:8080")
    assert (args.drain_grace_seconds, args.metrics_port, args.source) == (30.0, 9090, ["hub"])
    assert args.tls_cert is None and args.usage_dir is None
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8081, "http": 8080, "metrics": 9090}
    # Readiness: the Kubernetes gRPC probe on the gRPC port, for the service the router's
    # health service turns NOT_SERVING when it drains; liveness stays up while draining.
    assert container["readinessProbe"]["grpc"] == {"port": 8081, "service": SERVICE}
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "http",
        "scheme": "HTTP",
    }
    # One value feeds the drain and the grace: preStop 5 s + drain 30 s + 10 s.
    assert pod["terminationGracePeriodSeconds"] == 45
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert downward == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    assert pod["serviceAccountName"] == "tramontane-router"
    assert by_kind(docs, "ServiceAccount", "router")["metadata"]["name"] == "tramontane-router"
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    assert (
        container["image"]
        == by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    )


@pytest.mark.parametrize(("drain", "sleep", "grace"), [(60, 0, 70), (0, 3, 13), (30, 5, 45)])
def test_the_grace_period_covers_the_sleep_and_the_drain(
    helm: str, drain: int, sleep: int, grace: int
) -> None:
    docs = render(
        helm, sets=[f"router.drainGraceSeconds={drain}", f"router.preStopSleepSeconds={sleep}"]
    )
    pod = by_kind(docs, "Deployment", "router")["spec"]["template"]["spec"]
    container = router_container(docs)
    assert pod["terminationGracePeriodSeconds"] == grace
    assert build_parser().parse_args(container["command"][1:]).drain_grace_seconds == drain
    assert ("lifecycle" in container) == (sleep > 0)


def test_router_tls_backend_ca_and_usage_are_mounted_where_the_flags_point(helm: str) -> None:
    docs = render(helm, [FULL_VALUES])
    pod = by_kind(docs, "Deployment", "router")["spec"]["template"]["spec"]
    container = router_container(docs)
    args = build_parser().parse_args(container["command"][1:])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        args.tls_cert == f"{mounts['tls']}/tls.crt" and args.tls_key == f"{mounts['tls']}/tls.key"
    )
    assert volumes["tls"]["secret"]["secretName"] == "router-tls"
    assert args.backend_ca == f"{mounts['backend-ca']}/ca.pem"
    assert volumes["backend-ca"]["secret"]["secretName"] == "member-ingress-ca"
    assert args.usage_dir == mounts["usage"]
    assert volumes["usage"]["persistentVolumeClaim"]["claimName"] == "router-usage"
    assert (args.region, args.cloud, args.log_level) == ("westeurope", "azure", "DEBUG")
    assert args.max_body_bytes == 8388608
    # The kubelet's gRPC probe has no TLS: readiness reads /readyz over HTTPS instead.
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "http",
        "scheme": "HTTPS",
    }
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["image"] == (
        "myregistry.azurecr.io/tramontane-router@sha256:"
        "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
    )
    service = by_name(docs, "Service", "tramontane-operator-router")
    assert {p["name"]: p["appProtocol"] for p in service["spec"]["ports"]} == {
        "grpc": "grpc",
        "http": "https",
    }


@pytest.mark.parametrize("values", VALUE_SETS)
def test_router_services_hpa_and_pdb_select_the_router_pods(
    helm: str, values: tuple[Path, ...]
) -> None:
    docs = render(helm, values)
    deployment = by_kind(docs, "Deployment", "router")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    operator_labels = by_kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in router_container(docs)["ports"]}
    services = [d for d in docs if d["kind"] == "Service" and component_of(d) == "router"]
    assert len(services) == 2  # the tenants' endpoint, and metrics inside the cluster
    for service in services:
        selector = service["spec"]["selector"]
        assert selector.items() <= labels.items()
        assert not selector.items() <= operator_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    (endpoint,) = [s for s in services if not s["metadata"]["name"].endswith("-metrics")]
    protocols = {p["targetPort"]: p["appProtocol"] for p in endpoint["spec"]["ports"]}
    assert protocols["grpc"] == "grpc" and protocols["http"] in ("http", "https")
    pdb = by_kind(docs, "PodDisruptionBudget", "router")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert "replicas" not in deployment["spec"]
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if not hpas:
        assert deployment["spec"]["replicas"] >= 1


def test_autoscaling_off_sets_the_replicas_and_bad_bounds_fail(helm: str) -> None:
    docs = render(helm, sets=["router.autoscaling.enabled=false", "router.replicaCount=3"])
    assert by_kind(docs, "Deployment", "router")["spec"]["replicas"] == 3
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    result = helm_template(
        helm, sets=["router.autoscaling.minReplicas=5", "router.autoscaling.maxReplicas=2"]
    )
    assert result.returncode != 0
    assert "router.autoscaling.minReplicas (5) must not exceed maxReplicas (2)" in result.stderr


def test_router_disabled_renders_none_of_it(helm: str) -> None:
    docs = render(helm, sets=["router.enabled=false", "tenants.keyNamespaces={keys}"])
    assert [d["kind"] for d in docs if component_of(d) == "router"] == []


def test_network_policy_lets_in_tenants_and_out_dns_the_api_server_and_workers(
    helm: str,
) -> None:
    assert not [d for d in render(helm) if d["kind"] == "NetworkPolicy"]
    docs = render(helm, [FULL_VALUES])
    values = yaml.safe_load(FULL_VALUES.read_text())["router"]["networkPolicy"]
    policy = by_kind(docs, "NetworkPolicy", "router")
    labels = by_kind(docs, "Deployment", "router")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    tenants, metrics = policy["spec"]["ingress"]
    assert [p["port"] for p in tenants["ports"]] == ["grpc", "http"]
    assert tenants["from"] == values["ingressFrom"]
    assert metrics == {"ports": [{"port": "metrics", "protocol": "TCP"}],
                       "from": values["metricsFrom"]}  # fmt: skip
    dns, api, *rest = policy["spec"]["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert api == {
        "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
        "to": values["apiServer"]["peers"],
    }
    assert rest == values["workerEgress"] + values["extraEgress"]
    # Defaults: tenants from anywhere (router ports only), no metrics ingress, API on 443.
    docs = render(helm, sets=["router.networkPolicy.enabled=true"])
    policy = by_kind(docs, "NetworkPolicy", "router")
    (tenants,) = policy["spec"]["ingress"]
    assert "from" not in tenants
    assert policy["spec"]["egress"][1] == {"ports": [{"port": 443, "protocol": "TCP"}]}
    assert policy["spec"]["egress"][2]["ports"] == [
        {"port": 9000, "protocol": "TCP"},
        {"port": 443, "protocol": "TCP"},
    ]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in docs:
        if doc["kind"] in POD_KINDS:
            spec = doc["spec"]
            if doc["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            out.append((f"{doc['kind']}/{doc['metadata']['name']}", spec["template"]))
    return out


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_pod_template_is_restricted(helm: str, values: tuple[Path, ...]) -> None:
    templates = pod_templates(render(helm, values))
    assert len(templates) >= 2  # the operator and the router
    assert {name: template_violations(t) for name, t in templates if template_violations(t)} == {}


def test_aks_values(helm: str) -> None:
    docs = render(helm, [AKS_VALUES])
    values = yaml.safe_load(AKS_VALUES.read_text())
    identity = "azure.workload.identity/client-id"
    # Workload Identity: each ServiceAccount names its identity, each pod opts in.
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert accounts["tramontane"]["metadata"]["annotations"][identity] == "<operator-client-id>"
    router_sa = accounts["tramontane-router"]["metadata"]["annotations"]
    assert router_sa[identity] == "<router-client-id>"
    workers = [d for d in docs if d["kind"] == "ServiceAccount" and component_of(d) == "workers"]
    assert sorted(d["metadata"]["namespace"] for d in workers) == ["search", "search-staging"]
    for worker_sa in workers:
        assert worker_sa["metadata"]["name"] == "tramontane-worker"
        assert worker_sa["metadata"]["annotations"][identity] == "<workers-client-id>"
    for component in ("operator", "router"):
        labels = by_kind(docs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert labels["azure.workload.identity/use"] == "true"
    # The router behind an internal Azure load balancer.
    service = by_name(docs, "Service", "tramontane-router")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/azure-load-balancer-internal": "true"
    }
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    # Images from ACR; the operator's settings carry the GPU pool and the workers' identity.
    assert router_container(docs)["image"].startswith("<registry>.azurecr.io/tramontane-aks:")
    settings = OperatorSettings.from_env(operator_env(docs)).build_settings()
    assert settings.image_for(0) == "<registry>.azurecr.io/tramontane-worker:0.1.0"
    assert settings.image_for(1) == "<registry>.azurecr.io/tramontane-worker-gpu:0.1.0"
    # Which pool holds which GPU type is each ComputeCluster's gpuNodeSelectors.
    assert settings.gpu_node_selector == {
        "kubernetes.azure.com/accelerator": "nvidia",
    }
    assert settings.gpu_tolerations == (
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    )
    assert settings.worker_service_account == "tramontane-worker"
    assert settings.worker_pod_labels == {"azure.workload.identity/use": "true"}
    assert settings.worker_env == (
        {"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": "<storage-account>"},
    )
    # The webhook refuses Tenants whose key Secrets the router could not read.
    assert values["tenants"]["keyNamespaces"] == ["tramontane-keys"]
    assert OperatorSettings.from_env(operator_env(docs)).key_namespaces == ("tramontane-keys",)
    assert "TRAMONTANE_KEY_NAMESPACES" not in operator_env(render(helm))  # none: unchecked


def test_worker_values_reach_the_operator_settings(helm: str) -> None:
    defaults = OperatorSettings.from_env(operator_env(render(helm))).build_settings()
    assert defaults.worker_image == "ghcr.io/tramontane/tramontane-worker:0.1.0"
    assert defaults.image_for(1) == defaults.worker_image
    assert (defaults.gpu_node_selector, defaults.gpu_tolerations) == ({}, ())
    assert defaults.worker_service_account is None
    docs = render(helm, [FULL_VALUES])
    env = operator_env(docs)
    values = yaml.safe_load(FULL_VALUES.read_text())["workers"]
    assert json.loads(env["TRAMONTANE_GPU_TOLERATIONS"]) == values["gpuTolerations"]
    assert json.loads(env["TRAMONTANE_WORKER_ENV"]) == values["env"]
    assert OperatorSettings.from_env(env).build_settings().worker_env == tuple(values["env"])
    assert "TRAMONTANE_WORKER_ENV" not in operator_env(render(helm))  # none by default
    accounts = [d for d in docs if d["kind"] == "ServiceAccount" and component_of(d) == "workers"]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["team-a", "team-b"]
    assert {a["metadata"]["name"] for a in accounts} == {"tramontane-worker"}
    assert not [a for a in accounts if a["metadata"]["namespace"] == NAMESPACE]


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["workers.serviceAccount.create=true"], "workers.serviceAccount.create needs"),
        (
            ["workers.serviceAccount.create=true", "workers.serviceAccount.name=w"],
            "workers.serviceAccount.create needs workers.serviceAccount.namespaces",
        ),
    ],
)
def test_worker_service_account_needs_a_name_and_namespaces(
    helm: str, sets: list[str], expected: str
) -> None:
    result = helm_template(helm, sets=sets)
    assert result.returncode != 0
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["router.replicas=2"], "additional properties 'replicas' not allowed"),
        (["router.autoscaling.targetCPU=50"], "additional properties 'targetCPU' not allowed"),
        (["router.service.grpcport=443"], "additional properties 'grpcport' not allowed"),
        (["workers.gpuimage=x"], "additional properties 'gpuimage' not allowed"),
        (["tenants.keyNamespace={a}"], "additional properties 'keyNamespace' not allowed"),
        (["router.networkPolicy.ingressFrom[0].ipblock.cidr=10.0.0.0/8"], "'ipblock' not allowed"),
        (["workers.gpuTolerations[0].efect=NoSchedule"], "'efect' not allowed"),
        (["workers.env[0].name=AZURE_STORAGE_ACCOUNT_NAME"], "missing property 'value'"),
        (
            ["workers.env[0].name=A", "workers.env[0].valueFrom=x", "workers.env[0].value=b"],
            "'valueFrom' not allowed",
        ),
        (["router.logLevel=LOUD"], "/router/logLevel"),
        (["router.drainGraceSeconds=-1"], "/router/drainGraceSeconds"),
        (["router.service.type=Ingress"], "/router/service/type"),
        (["tenants.keyNamespaces={Not_A_Namespace}"], "/tenants/keyNamespaces/0"),
        (["workers.image=has space:1"], "/workers/image"),
    ],
    ids=lambda value: value if isinstance(value, str) and "=" not in value else None,
)
def test_schema_rejects_misspelled_router_and_worker_values(
    helm: str, sets: list[str], expected: str
) -> None:
    result = helm_template(helm, sets=sets)
    assert result.returncode != 0
    assert "don't meet the specifications of the schema" in result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com:5000/tramontane-worker:1.0",
        "<registry>.azurecr.io/tramontane-worker-gpu:0.1.0",
        "ghcr.io/t/w@sha256:" + "a" * 64,
    ],
)
def test_worker_images_with_a_registry_port_or_a_digest_are_accepted(helm: str, image: str) -> None:
    env = operator_env(render(helm, sets=[f"workers.image={image}", f"workers.gpuImage={image}"]))
    assert env["TRAMONTANE_WORKER_IMAGE"] == env["TRAMONTANE_GPU_WORKER_IMAGE"] == image
