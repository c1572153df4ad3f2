"""The Helm chart: lints strictly, renders, rejects typos, and renders valid Kubernetes.

helm comes from `.ci/install-tools.sh` (`<repo>/.tools/bin/helm`) or PATH. Without helm these
tests skip on a developer machine but fail in CI (`CI` set), so a broken install cannot pass
silently. Rendered manifests are validated offline against the strict Kubernetes JSON schemas
shipped by `kubernetes-validate`, for the oldest Kubernetes the chart supports and the newest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate.utils import (  # type: ignore[import-untyped]
    SchemaNotFoundError,
    latest_version,
)
from tests.conftest import CRDS_DIR, REPO_ROOT

CHART_DIR = REPO_ROOT / "charts" / "tramontane"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
FULL_VALUES = CHART_DIR / "ci" / "full-values.yaml"
INSTALL_DOC = REPO_ROOT / "docs" / "install.md"
NAMESPACE = "tramontane-system"
AKS_VALUES = CHART_DIR / "values-aks.yaml"
CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
APP_VERSION: str = CHART["appVersion"]
DEFAULTS: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
SCHEMA: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
# Kinds with no schema in kubernetes-validate; each has its own test below instead.
NON_CORE_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
WEBHOOK_KINDS = ["modeldeployments", "finetunejobs", "evaluations", "tenants", "computeclusters"]


def _min_kube_version() -> str:
    match = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", CHART["kubeVersion"])
    if match is None:
        raise ValueError(f"Chart.yaml kubeVersion {CHART['kubeVersion']!r} is not '>=X.Y.Z-0'")
    return match.group(1)


KUBE_VERSIONS = (_min_kube_version(), latest_version())


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def helm_template(
    helm: str,
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    include_crds: bool = False,
) -> subprocess.CompletedProcess[str]:
    args = ["template", "tramontane", str(CHART_DIR), "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    if include_crds:
        args.append("--include-crds")
    return run_helm(helm, *args)


def render(
    helm: str,
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """`helm template` the chart; the rendered objects, in order."""
    result = helm_template(helm, values, sets, include_crds)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, got {len(matches)}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {env["name"]: env["value"] for env in container["env"] if "value" in env}


def component_of(doc: dict[str, Any]) -> str | None:
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def by_kind(docs: list[dict[str, Any]], kind: str, component: str = "operator") -> dict[str, Any]:
    """The one `kind` object of `component` (operator, router)."""
    matches = [doc for doc in docs if doc["kind"] == kind and component_of(doc) == component]
    assert len(matches) == 1, f"expected one {component} {kind}, got {len(matches)}"
    return matches[0]


def value_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the chart's options, from values.schema.json: the chart's own objects
    are walked into; a Kubernetes type (resources, affinity...) or a map is one option."""
    for key, node in schema.get("properties", {}).items():
        if key == "global":  # Helm's, for subcharts
            continue
        if "properties" in node:
            yield from value_paths(node, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def has_path(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


VALUE_SETS = (
    [pytest.param((), id="defaults")]
    + [pytest.param((path,), id=path.stem) for path in CI_VALUES]
    + [pytest.param((AKS_VALUES,), id="values-aks")]
)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(helm: str, values: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    for path in values:
        args += ["--values", str(path)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_defaults_render_the_operator_and_nothing_optional(helm: str) -> None:
    docs = render(helm)
    kinds = sorted(doc["kind"] for doc in docs if component_of(doc) == "operator")
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "Service",
        "ServiceAccount",
        "ValidatingWebhookConfiguration",
    ]
    # The router by default too; no NetworkPolicy, no key namespaces, no worker accounts.
    assert sorted(doc["kind"] for doc in docs if component_of(doc) == "router") == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "Service",
        "ServiceAccount",
    ]
    assert {component_of(doc) for doc in docs} == {"operator", "router"}
    deployment = by_kind(docs, "Deployment")
    # Two replicas (one leads, one stands by) that a drain cannot take down together, and an
    # upgrade that starts the new pod before stopping the old one.
    assert deployment["spec"]["replicas"] == 2
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/tramontane/tramontane:{APP_VERSION}"
    assert container["command"] == ["tramontane", "operator", "run", "--all-namespaces"]
    assert {"name": "TRAMONTANE_CLUSTER_NAME", "value": "hub"} in container["env"]
    # Leader election: the Lease's namespace and the pod's identity, from the downward API.
    downward = {
        env["name"]: env["valueFrom"]["fieldRef"]["fieldPath"]
        for env in container["env"]
        if "valueFrom" in env
    }
    assert downward == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 9090, "healthz": 8080, "webhook": 9443}
    assert env_of(container)["TRAMONTANE_WEBHOOK_PORT"] == "9443"
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "webhook",
        "scheme": "HTTPS",
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    # Restricted pod security: non-root, read-only root FS, no capabilities, seccomp.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["serviceAccountName"] == by_kind(docs, "ServiceAccount")["metadata"]["name"]


def test_full_values_reach_the_manifests(helm: str) -> None:
    values = yaml.safe_load(FULL_VALUES.read_text())
    docs = render(helm, [FULL_VALUES])
    assert {doc["kind"] for doc in docs} >= {"ServiceMonitor", "PodDisruptionBudget"}
    fullname = values["fullnameOverride"]
    operator_docs = [doc for doc in docs if component_of(doc) == "operator"]
    assert {d["metadata"]["name"] for d in operator_docs if d["kind"] != "ServiceAccount"} == {
        fullname,
        f"{fullname}-metrics",
        f"{fullname}-webhook",  # its Service and cert-manager Certificate
        f"{fullname}-selfsigned",  # cert-manager Issuer
    }
    deployment = by_kind(docs, "Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    image = values["image"]
    assert container["image"] == f"{image['repository']}@{image['digest']}"
    assert container["imagePullPolicy"] == image["pullPolicy"]
    namespaces = [arg for ns in values["watchNamespaces"] for arg in ("--namespace", ns)]
    assert container["command"] == ["tramontane", "operator", "run", *namespaces, "--verbose"]
    assert container["env"][0]["value"] == values["clusterName"]
    assert [env["name"] for env in container["env"][1:3]] == ["POD_NAMESPACE", "POD_NAME"]
    assert container["env"][-len(values["extraEnv"]) :] == values["extraEnv"]
    assert env_of(container)["TRAMONTANE_WEBHOOK_TENANT_REQUIRED"] == "always"
    assert env_of(container)["TRAMONTANE_WEBHOOK_CERT_MANAGER"] == "true"
    (hook,) = by_kind(docs, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == values["webhook"]["failurePolicy"]
    assert hook["timeoutSeconds"] == values["webhook"]["timeoutSeconds"]
    assert container["resources"] == values["resources"]
    assert container["securityContext"] == values["containerSecurityContext"]
    assert container["livenessProbe"]["failureThreshold"] == 6
    assert deployment["spec"]["replicas"] == values["replicaCount"]
    assert template["metadata"]["annotations"] == values["podAnnotations"]
    assert values["podLabels"].items() <= template["metadata"]["labels"].items()
    for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
        assert pod[key] == values[key], key
    assert pod["securityContext"] == values["podSecurityContext"]
    assert pod["priorityClassName"] == values["priorityClassName"]
    account = by_kind(docs, "ServiceAccount")
    assert account["metadata"]["name"] == pod["serviceAccountName"] == "tramontane"
    assert account["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    metrics = by_name(docs, "Service", f"{fullname}-metrics")
    assert metrics["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    monitor = by_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_values_yaml_and_full_values_set_every_option() -> None:
    """values.yaml gives every option of the schema a default; ci/full-values.yaml sets each."""
    options = list(value_paths(SCHEMA))
    assert len(options) > 30
    assert [path for path in options if not has_path(DEFAULTS, path)] == []
    full = yaml.safe_load(FULL_VALUES.read_text())
    assert [path for path in options if not has_path(full, path)] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_manifests_are_valid_kubernetes(
    helm: str, values: tuple[Path, ...], kube_version: str
) -> None:
    docs = render(helm, values, include_crds=True)
    problems = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in NON_CORE_KINDS:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problems.append(f"{name}: {path}: {error.message}")
        except SchemaNotFoundError:
            problems.append(f"{name}: no schema for {doc['apiVersion']} in {kube_version}")
    assert problems == []


@pytest.mark.parametrize("values", VALUE_SETS)
def test_services_select_the_operator_pod(helm: str, values: tuple[Path, ...]) -> None:
    docs = render(helm, values)
    deployment = by_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {port["name"] for port in container["ports"]}
    services = [doc for doc in docs if doc["kind"] == "Service" and component_of(doc) == "operator"]
    assert len(services) == 2  # metrics and webhook
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports
    service = next(s for s in services if s["metadata"]["name"].endswith("-metrics"))
    for monitor in (doc for doc in docs if doc["kind"] == "ServiceMonitor"):
        # No schema for ServiceMonitor offline: check that it really scrapes our Service.
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (
            service["metadata"]["labels"].items()
        )
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        service_ports = {port["name"] for port in service["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= service_ports


def test_cluster_role_is_least_privilege(helm: str) -> None:
    """The shape of the operator's ClusterRole (test_chart_rbac.py checks it grants exactly
    what the operator sends)."""
    docs = render(helm)
    rules = by_kind(docs, "ClusterRole")["rules"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert not any(
        "*" in (group, resource) or "*" in verbs for (group, resource), verbs in granted.items()
    )
    # No Secret anywhere cluster-wide: kubeconfigs and the webhook's live in its namespace.
    assert ("", "secrets") not in granted
    assert granted[("apiextensions.k8s.io", "customresourcedefinitions")] == {"list", "watch"}
    # create, never delete: the operator makes missing pool namespaces and leaves them.
    assert granted[("", "namespaces")] == {"get", "list", "watch", "create"}
    assert granted[("", "events")] == {"create"}
    # pvc:// datasets: a validation Job, its pod's result, the RayJob submitter's log.
    assert granted[("batch", "jobs")] == {"get", "list", "create", "delete"}
    assert granted[("", "pods")] == {"list"}
    assert granted[("", "pods/log")] == {"get"}
    assert {"create", "patch", "delete", "watch"} <= granted[("ray.io", "rayservices")]
    for plural in ("modeldeployments", "finetunejobs", "evaluations", "tenants", "computeclusters"):
        assert {"list", "watch"} <= granted[("tramontane.dev", plural)]
        assert granted[("tramontane.dev", f"{plural}/status")] == {"patch"}
    for plural in ("modeldeployments", "finetunejobs"):
        assert "patch" in granted[("tramontane.dev", plural)]  # finalizers
        assert granted[("tramontane.dev", f"{plural}/finalizers")] == {"update"}
    groups = {group for group, _ in granted}
    assert groups == {
        "",
        "tramontane.dev",
        "ray.io",
        "batch",
        "apiextensions.k8s.io",
        "admissionregistration.k8s.io",
    }  # no kopf.dev peerings (Kopf runs standalone), no leases cluster-wide
    # The webhook's caBundle: one configuration, by name, get and patch only.
    (webhook_rule,) = [r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"]]
    assert webhook_rule["resourceNames"] == [
        by_kind(docs, "ValidatingWebhookConfiguration")["metadata"]["name"]
    ]
    assert webhook_rule["verbs"] == ["get", "patch"]
    binding = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == by_kind(docs, "ClusterRole")["metadata"]["name"]
    account = by_kind(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]


LEASE_RULE = {
    "apiGroups": ["coordination.k8s.io"],
    "resources": ["leases"],
    "verbs": ["get", "list", "create", "update"],
}
# Member clusters' kubeconfig Secrets and the webhook's: read in the release namespace only.
SECRET_READ_RULE = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}


def test_leader_election_and_secrets_are_granted_in_the_release_namespace_only(
    helm: str,
) -> None:
    docs = render(helm)
    role = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    # The self-managed webhook certificate: renewed by name; created (RBAC cannot name it).
    assert role["rules"] == [
        LEASE_RULE,
        SECRET_READ_RULE,
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["tramontane-webhook-tls"],
            "verbs": ["update"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    binding = by_kind(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = by_kind(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]
    cluster_wide = by_kind(docs, "ClusterRole")["rules"]
    assert not any("coordination.k8s.io" in rule["apiGroups"] for rule in cluster_wide)
    assert "Role" not in {doc["kind"] for doc in render(helm, sets=["rbac.create=false"])}


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["replicas=2"], "additional properties 'replicas' not allowed"),
        (["metrics.serviceMonitor.enable=true"], "additional properties 'enable' not allowed"),
        (["image.tags=1.0"], "additional properties 'tags' not allowed"),
        (["podSecurityContext.runAsNonroot=true"], "'runAsNonroot' not allowed"),
        (["affinity.nodeAffinity.required=x"], "additional properties 'required' not allowed"),
        (["extraEnv[0].name=A", "extraEnv[0].vaule=b"], "'vaule' not allowed"),
        (["replicaCount=two"], "/replicaCount"),
        (["replicaCount=-1"], "/replicaCount"),
        (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["podDisruptionBudget.maxUnavailable=half"], "/podDisruptionBudget/maxUnavailable"),
        (["clusterName=Not_A_Name"], "/clusterName"),
        (["webhook.failurePolicy=Sometimes"], "/webhook/failurePolicy"),
        (["webhook.timeoutSeconds=31"], "/webhook/timeoutSeconds"),
        (["webhook.tenantRequired=maybe"], "/webhook/tenantRequired"),
        (["webhook.certmanager.enabled=true"], "additional properties 'certmanager' not allowed"),
    ],
    ids=lambda value: value if isinstance(value, str) and "=" not in value else None,
)
def test_schema_rejects_misspelled_or_mistyped_values(
    helm: str, sets: list[str], expected: str
) -> None:
    result = helm_template(helm, sets=sets)
    assert result.returncode != 0
    assert "don't meet the specifications of the schema" in result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (
            [
                "podDisruptionBudget.enabled=true",
                "podDisruptionBudget.minAvailable=1",
                "podDisruptionBudget.maxUnavailable=1",
            ],
            "set minAvailable or maxUnavailable, not both",
        ),
        (
            ["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
        (["replicaCount=1"], "minAvailable (1) must be below replicaCount (1)"),
    ],
    ids=["pdb-both-bounds", "servicemonitor-without-service", "pdb-blocks-every-eviction"],
)
def test_contradictory_values_fail_with_a_message(
    helm: str, sets: list[str], expected: str
) -> None:
    result = helm_template(helm, sets=sets)
    assert result.returncode != 0
    assert expected in result.stderr


def object_schemas(node: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(JSON pointer, schema) for every subschema whose type allows an object."""
    if isinstance(node, dict):
        types = node.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types):
            yield pointer or "/", node
        for key, value in node.items():
            yield from object_schemas(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from object_schemas(item, f"{pointer}/{index}")


def test_schema_closes_every_object() -> None:
    """Each object is closed (additionalProperties: false) or a map with typed values."""
    open_objects = [
        pointer
        for pointer, node in object_schemas(SCHEMA)
        if node.get("additionalProperties") is not False
        and not isinstance(node.get("additionalProperties"), dict)
    ]
    assert open_objects == []
    assert len(list(object_schemas(SCHEMA))) > 30  # the walk really saw the nested types


def test_schema_vendored_kubernetes_types_are_in_sync() -> None:
    script = CHART_DIR / "hack" / "k8s_schema_defs.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_chart_crds_are_a_copy_of_the_generated_crds() -> None:
    generated = {path.name: path.read_bytes() for path in sorted(CRDS_DIR.glob("*.yaml"))}
    if not generated:
        pytest.skip("crds/ is empty: `tramontane crds generate` has not run yet")
    chart = {path.name: path.read_bytes() for path in sorted((CHART_DIR / "crds").glob("*.yaml"))}
    assert sorted(chart) == sorted(generated), "run `tramontane crds generate` to sync the chart"
    stale = [name for name, content in generated.items() if chart[name] != content]
    assert stale == [], "run `tramontane crds generate` to sync the chart"


def test_install_doc_lists_every_value() -> None:
    doc = INSTALL_DOC.read_text()
    missing = [path for path in value_paths(SCHEMA) if f"| `{path}` |" not in doc]
    assert missing == []


def test_notes_name_examples_that_exist(helm: str) -> None:
    result = run_helm(
        helm, "install", "tramontane", str(CHART_DIR), "--dry-run=client", "-n", NAMESPACE
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert 'ComputeCluster named "hub"' in notes
    mentioned = set(re.findall(r"examples/[\w./-]+\.yaml", notes))
    assert mentioned, "NOTES.txt should point at the examples"
    assert sorted(path for path in mentioned if not (REPO_ROOT / path).is_file()) == []


def test_webhook_self_managed_by_default(helm: str) -> None:
    """Our four kinds, CREATE and UPDATE, spec changes only; the operator writes the caBundle
    for the Service's name it is told (the same four DNS names the operator's check wants)."""
    docs = render(helm)
    vwc = by_kind(docs, "ValidatingWebhookConfiguration")
    assert "annotations" not in vwc["metadata"]  # no cert-manager injection
    (hook,) = vwc["webhooks"]
    assert hook["name"] == "validate.tramontane.dev"
    assert "caBundle" not in hook["clientConfig"]
    assert hook["clientConfig"]["service"] == {
        "name": "tramontane-webhook",
        "namespace": NAMESPACE,
        "path": "/validate",
        "port": 443,
    }
    assert hook["rules"] == [
        {
            "apiGroups": ["tramontane.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": WEBHOOK_KINDS,
            "scope": "*",
        }
    ]
    assert {k: hook[k] for k in ("failurePolicy", "matchPolicy", "sideEffects")} == {
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
    }
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["timeoutSeconds"] == 5
    assert "object.spec != oldObject.spec" in hook["matchConditions"][0]["expression"]
    service = by_name(docs, "Service", "tramontane-webhook")
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    (container,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["TRAMONTANE_WEBHOOK_SERVICE"] == service["metadata"]["name"]
    assert env["TRAMONTANE_WEBHOOK_CONFIGURATION"] == vwc["metadata"]["name"]
    assert env["TRAMONTANE_WEBHOOK_SECRET"] == "tramontane-webhook-tls"
    assert env["TRAMONTANE_WEBHOOK_CERT_MANAGER"] == "false"


def test_webhook_with_cert_manager_only_reads_the_secret(helm: str) -> None:
    from tramontane_operator.webhook.certs import service_hostnames

    docs = render(helm, sets=["webhook.certManager.enabled=true"])
    certificate = by_kind(docs, "Certificate")
    vwc = by_kind(docs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{certificate['metadata']['name']}"
    }
    assert certificate["spec"]["dnsNames"] == service_hostnames("tramontane-webhook", NAMESPACE)
    assert certificate["spec"]["secretName"] == "tramontane-webhook-tls"
    issuer = by_kind(docs, "Issuer")
    assert certificate["spec"]["issuerRef"] == {
        "kind": "Issuer",
        "name": issuer["metadata"]["name"],
    }
    assert issuer["spec"] == {"selfSigned": {}}
    assert by_kind(docs, "Role")["rules"] == [LEASE_RULE, SECRET_READ_RULE]  # only reads
    cluster_rules = by_kind(docs, "ClusterRole")["rules"]
    assert not any("admissionregistration.k8s.io" in rule["apiGroups"] for rule in cluster_rules)


def test_webhook_disabled_renders_none_of_it(helm: str) -> None:
    docs = render(helm, sets=["webhook.enabled=false"])
    kinds = [doc["kind"] for doc in docs if component_of(doc) == "operator"]
    assert "ValidatingWebhookConfiguration" not in kinds
    assert kinds.count("Service") == 1
    (container,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["TRAMONTANE_WEBHOOK_PORT"] == "0"
    assert "readinessProbe" not in container
    assert "webhook" not in {port["name"] for port in container["ports"]}
    assert by_kind(docs, "Role")["rules"] == [LEASE_RULE, SECRET_READ_RULE]
