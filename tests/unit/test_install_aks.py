"""docs/install-aks.md against the code: what it applies exists and validates, its `helm
install` renders (valid Kubernetes, restricted pods, no placeholder left, every `--set` a value
the schema knows), its identities are federated with the ServiceAccounts the chart creates, its
node pools are the ComputeClusters' capacities, its `tramontane` commands parse, its Python
compiles against the real `mistralai` SDK; and the examples agree with each other and with
values-aks.yaml (quotas cover the workloads, the failover cluster has the GPU type, the key
Secret's namespace is one the router reads, the admission webhook admits them all).
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from tests.unit.pod_security import template_violations
from tests.unit.shell_doc import Command, Script, blocks, parse
from tests.unit.test_chart import (
    APP_VERSION,
    CHART_DIR,
    KUBE_VERSIONS,
    SCHEMA,
    run_helm,
)

from tramontane_api.v1alpha1 import ComputeCluster, FineTuneJob, ModelDeployment, Tenant
from tramontane_api.validate import validate_text
from tramontane_cli.main import build_parser
from tramontane_operator.webhook.checks import Facts, review

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "install-aks.md"
INSTALL_DOC = REPO / "docs" / "install.md"
EXAMPLES = REPO / "examples"
AKS_VALUES_PATH = CHART_DIR / "values-aks.yaml"
AKS_VALUES: dict[str, Any] = yaml.safe_load(AKS_VALUES_PATH.read_text())
IDENTITY = "azure.workload.identity/client-id"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# What `az ... --query ... -o tsv` and friends would print, for the doc's `"$(...)"` values.
COMPUTED = {
    "HUB_OIDC_ISSUER": "https://westeurope.oic.prod-aks.azure.com/tenant/hub/",
    "MEMBER_OIDC_ISSUER": "https://swedencentral.oic.prod-aks.azure.com/tenant/member/",
    "OPERATOR_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
    "ROUTER_CLIENT_ID": "22222222-2222-2222-2222-222222222222",
    "WORKER_CLIENT_ID": "33333333-3333-3333-3333-333333333333",
    "OPERATOR_PRINCIPAL_ID": "44444444-4444-4444-4444-444444444444",
    "STORAGE_ID": "/subscriptions/0/resourceGroups/ml-platform/providers/Microsoft.Storage/x",
    "MISTRAL_API_KEY": "0123456789abcdef0123456789abcdef",
    "ROUTER_IP": "10.224.0.50",
}
# GPU VM sizes of Azure: (Tramontane GPU type, GPUs per node).
AZURE_GPU_VMS = {
    "Standard_NC24ads_A100_v4": ("A100-80GB", 1),
    "Standard_NC48ads_A100_v4": ("A100-80GB", 2),
    "Standard_NC96ads_A100_v4": ("A100-80GB", 4),
    "Standard_ND96amsr_A100_v4": ("A100-80GB", 8),
    "Standard_NC40ads_H100_v5": ("H100", 1),
    "Standard_NC80adis_H100_v5": ("H100", 2),
    "Standard_ND96isr_H100_v5": ("H100", 8),
}


@cache
def script() -> Script:
    return parse(DOC.read_text(), COMPUTED)


def examples_of(kind: str) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == kind
    ]


def example(path: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]
    return dict(doc)


def applied() -> list[str]:
    """The examples/ files the walk-through applies, in order."""
    return [
        path
        for c in script().commands
        if c.words[:1] == ["kubectl"] and "apply" in c.words
        for path in c.flags("-f")
        if path.startswith("examples/")
    ]


# ---------------------------------------------------------------------------- the examples
def test_every_example_the_doc_names_exists_and_validates() -> None:
    named = sorted(set(re.findall(r"examples/[\w./-]+\.yaml", DOC.read_text())))
    assert named
    for path in named:
        assert (REPO / path).is_file(), path
        checked, problems = validate_text((REPO / path).read_text())
        assert checked >= 1 and problems == [], (path, problems)
    kinds = {example(path)["kind"] for path in applied()}
    assert kinds == {"Tenant", "ComputeCluster", "ModelDeployment", "FineTuneJob"}


def walkthrough() -> tuple[Tenant, list[ComputeCluster], ModelDeployment, FineTuneJob]:
    objects = [example(path) for path in applied()]
    (tenant,) = [Tenant.model_validate(o) for o in objects if o["kind"] == "Tenant"]
    clusters = [ComputeCluster.model_validate(o) for o in objects if o["kind"] == "ComputeCluster"]
    (md,) = [ModelDeployment.model_validate(o) for o in objects if o["kind"] == "ModelDeployment"]
    (job,) = [FineTuneJob.model_validate(o) for o in objects if o["kind"] == "FineTuneJob"]
    return tenant, clusters, md, job


def test_the_failover_clusters_have_the_gpu_type_for_every_replica() -> None:
    _, clusters, md, _ = walkthrough()
    gpu = md.spec.resources.gpu
    assert gpu is not None and md.spec.placement is not None
    assert md.spec.placement.strategy == "Failover"
    by_name = {c.metadata.name: c for c in clusters}
    wanted = md.spec.scaling.max_replicas * gpu.count
    for name in md.spec.placement.clusters or []:
        assert name in by_name, f"{name}: no ComputeCluster in the walk-through"
        assert by_name[name].spec.gpus.get(gpu.type, 0) >= wanted, name
    assert "onprem-paris" not in (md.spec.placement.clusters or [])


def test_the_tenant_quota_covers_the_deployment_and_every_fine_tune() -> None:
    tenant, _, md, _ = walkthrough()
    gpu = md.spec.resources.gpu
    assert gpu is not None and tenant.spec.quotas is not None
    need = {gpu.type: md.spec.scaling.max_replicas * gpu.count}
    for raw in examples_of("FineTuneJob"):
        job = FineTuneJob.model_validate(raw)
        assert job.metadata.namespace in tenant.spec.namespaces
        res = job.spec.resources
        if res.gpus_per_worker and res.gpu_type:
            need[res.gpu_type] = need.get(res.gpu_type, 0) + res.workers * res.gpus_per_worker
    quota = tenant.spec.quotas.gpus or {}
    assert {t: (quota.get(t, 0), n) for t, n in need.items() if quota.get(t, 0) < n} == {}
    assert set(md.spec.placement.clusters or []) <= set(tenant.spec.allowed_clusters or [])


def test_key_secret_and_namespaces_agree_with_values_aks() -> None:
    tenant, _, md, job = walkthrough()
    key_namespaces = AKS_VALUES["tenants"]["keyNamespaces"]
    refs = tenant.spec.api_key_secret_refs or []
    assert refs and {r.namespace for r in refs} <= set(key_namespaces)
    # The doc creates that Secret, with the key the router reads (`api-key`).
    created = {
        (c.flag("-n"), c.words[c.words.index("generic") + 1]): c.flags("--from-literal")
        for c in script().commands
        if c.words[:1] == ["kubectl"] and "secret" in c.words and "generic" in c.words
    }
    for ref in refs:
        literals = created[(ref.namespace, ref.name)]
        assert [lit.split("=", 1)[0] for lit in literals] == [ref.key or "api-key"]
    workers = AKS_VALUES["workers"]["serviceAccount"]["namespaces"]
    assert sorted(tenant.spec.namespaces) == sorted(workers)
    assert {md.metadata.namespace, job.metadata.namespace} <= set(tenant.spec.namespaces)


def test_the_deployment_relies_on_the_charts_gpu_placement() -> None:
    _, ccs, md, job = walkthrough()
    assert not md.spec.resources.node_selector and not md.spec.resources.tolerations
    assert AKS_VALUES["workers"]["gpuTolerations"] == [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]
    # In every cluster they may run in, the pool its ComputeCluster names for their GPU type
    # (gpuNodeSelectors) exists with that type and is tainted as the workers' tolerations
    # expect; and every GPU type a cluster lists has its pool named.
    pools = node_pools()
    gpu = md.spec.resources.gpu
    assert gpu is not None and md.spec.placement is not None
    assert gpu.type == job.spec.resources.gpu_type
    clusters = {cc.metadata.name: cc for cc in ccs}
    for name in md.spec.placement.clusters or []:
        selectors = clusters[name].spec.gpu_node_selectors or {}
        assert set(selectors) == set(clusters[name].spec.gpus), name
        pool = selectors[gpu.type]["kubernetes.azure.com/agentpool"]
        assert (name, pool) in pools, f"{name} has no node pool {pool}"
        gpu_type, _, taints = pools[(name, pool)]
        assert gpu_type == gpu.type
        assert taints == "sku=gpu:NoSchedule"


def test_the_admission_webhook_admits_the_walkthrough() -> None:
    """Each object, in the doc's order, against what was applied before it."""
    facts = Facts(
        tenant_required="always",
        key_namespaces=frozenset(AKS_VALUES["tenants"]["keyNamespaces"]),
        kubeconfig_namespace=release_namespace(),
    )
    for path in applied():
        obj = example(path)
        verdict = review("CREATE", obj, None, facts)
        assert verdict.problems == [], path
        kind = obj["kind"]
        if kind == "Tenant":
            facts = replace(facts, tenants=(*facts.tenants, Tenant.model_validate(obj)))
        elif kind == "ComputeCluster":
            facts = replace(facts, clusters=(*facts.clusters, ComputeCluster.model_validate(obj)))
        elif kind == "ModelDeployment":
            md = ModelDeployment.model_validate(obj)
            facts = replace(facts, deployments=(*facts.deployments, md))


# ---------------------------------------------------------------------------- node pools
def node_pools() -> dict[tuple[str, str], tuple[str, int, str | None]]:
    """(cluster, pool) -> (GPU type, GPUs, taints) of every GPU pool the doc adds."""
    out = {}
    for c in script().starting("az", "aks", "nodepool", "add"):
        size = c.flag("--node-vm-size")
        assert size in AZURE_GPU_VMS, f"unknown GPU VM size {size}: add it to AZURE_GPU_VMS"
        gpu_type, per_node = AZURE_GPU_VMS[size]
        count = int(c.flag("--node-count") or 0)
        key = (str(c.flag("--cluster-name")), str(c.flag("--name")))
        out[key] = (gpu_type, per_node * count, c.flag("--node-taints"))
    return out


def test_declared_capacities_are_the_node_pools_the_doc_creates() -> None:
    created: dict[str, dict[str, int]] = {}
    for (cluster, _), (gpu_type, gpus, _) in node_pools().items():
        created.setdefault(cluster, {})
        created[cluster][gpu_type] = created[cluster].get(gpu_type, 0) + gpus
    _, clusters, _, _ = walkthrough()
    assert {c.metadata.name: dict(c.spec.gpus) for c in clusters} == created
    made = {c.flag("--name") for c in script().starting("az", "aks", "create")}
    assert made == set(created)
    # The hub's own ComputeCluster is the chart's clusterName and the in-cluster one.
    (hub,) = [c for c in clusters if c.spec.connection.in_cluster]
    assert hub.metadata.name == AKS_VALUES["clusterName"]


def test_the_hub_and_member_support_workload_identity() -> None:
    for c in script().starting("az", "aks", "create"):
        assert {"--enable-oidc-issuer", "--enable-workload-identity"} <= set(c.words), c.line


# ---------------------------------------------------------------------------- helm
def release_namespace() -> str:
    (install,) = tramontane_installs(script())
    return str(install.flag("--namespace"))


def tramontane_installs(s: Script) -> list[Command]:
    return [
        c
        for c in s.commands
        if c.words[:2] in (["helm", "install"], ["helm", "upgrade"], ["helm", "template"])
        and "charts/tramontane" in c.words
    ]


def template_args(c: Command) -> list[str]:
    """The `helm template` equivalent of an install or upgrade command."""
    dropped = ("--create-namespace", "--wait", "--atomic", "--reuse-values")
    words = [w for w in c.words[2:] if w not in dropped]
    out, skip = [], False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word == "--kube-context":
            skip = True
            continue
        if word.startswith("--kube-context="):
            continue
        out.append(str(REPO / word) if word.startswith("charts/") else word)
        if word in ("-f", "--values") and i + 1 < len(words):
            out.append(str(REPO / words[i + 1]))
            skip = True
    return ["template", *out]


def set_paths(c: Command) -> Iterator[list[str]]:
    """The value path of each `--set` (Helm's `\\.` escapes a dot inside a key)."""
    for item in c.flags("--set"):
        key = item.split("=", 1)[0]
        yield [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", key)]


def schema_knows(parts: list[str]) -> bool:
    """Whether values.schema.json has the value path (list indices and map keys allowed)."""
    node: dict[str, Any] = SCHEMA
    defs = SCHEMA.get("$defs", {})

    def resolved(n: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in n:
            n = defs[n["$ref"].rsplit("/", 1)[1]]
        return n

    for part in parts:
        name, bracket, _ = part.partition("[")
        node = resolved(node)
        props = node.get("properties")
        if props is not None and name in props:
            node = props[name]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
        if bracket:
            node = resolved(node).get("items", {})
    return True


def test_schema_knows_detects_typos() -> None:
    assert schema_knows(["workers", "env[0]", "name"])
    assert schema_knows(["serviceAccount", "annotations", "azure.workload.identity/client-id"])
    assert not schema_knows(["workers", "envs[0]", "name"])
    assert not schema_knows(["workers", "env[0]", "valueFrom"])
    assert not schema_knows(["router", "usage", "existingclaim"])
    assert not schema_knows(["serviceAccount", "annotations", "a", "b"])  # a string has no keys


@cache
def rendered(helm: str, doc: Path, index: int) -> list[dict[str, Any]]:
    s = script() if doc == DOC else parse(doc.read_text(), COMPUTED)
    result = run_helm(helm, *template_args(tramontane_installs(s)[index]))
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


INSTALLS = [
    pytest.param(doc, i, id=f"{doc.name}-{i}")
    for doc in (DOC, INSTALL_DOC)
    for i, _ in enumerate(tramontane_installs(parse(doc.read_text(), COMPUTED)))
]


def test_each_doc_installs_the_chart() -> None:
    assert [p.values[0] for p in INSTALLS].count(DOC) == 1
    assert [p.values[0] for p in INSTALLS].count(INSTALL_DOC) >= 1


@pytest.mark.parametrize(("doc", "index"), INSTALLS)
def test_the_docs_helm_install_renders_valid_restricted_manifests(
    helm: str, doc: Path, index: int
) -> None:
    s = script() if doc == DOC else parse(doc.read_text(), COMPUTED)
    command = tramontane_installs(s)[index]
    unknown = [p for p in set_paths(command) if not schema_knows(p)]  # a typo fails helm too
    assert unknown == [], f"--set of values the chart does not have: {unknown}"
    docs = rendered(helm, doc, index)
    # Helm's toJson writes < and > as \u003c and \u003e (in the operator's JSON settings).
    text = re.sub(r"\\+u003c", "<", re.sub(r"\\+u003e", ">", json.dumps(docs)))
    assert re.findall(r"<[a-z][a-z-]*>", text) == [], "a values-aks placeholder is left"
    problems = []
    for obj in docs:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
        if obj["kind"] in POD_KINDS:
            violations = template_violations(obj["spec"]["template"])
            assert violations == {}, (obj["metadata"]["name"], violations)
    assert problems == []


def test_the_images_the_chart_runs_are_the_images_the_doc_builds(helm: str) -> None:
    docs = rendered(helm, DOC, 0)
    built = set()
    for c in script().starting("az", "acr", "build"):
        dockerfile = REPO / str(c.flag("--file"))
        assert dockerfile.is_file() and c.words[-1] == "."  # the repository root
        target = c.flag("--target")
        if target:
            assert re.search(rf"^FROM .* AS {target}$", dockerfile.read_text(), re.M)
        built.add(f"{c.flag('--registry')}.azurecr.io/{c.flag('--image')}")
    assert f"{script().variables['VERSION']}" == APP_VERSION
    images = {
        container["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for container in d["spec"]["template"]["spec"]["containers"]
    }
    (operator,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tramontane"
    ]
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    images |= {env["TRAMONTANE_WORKER_IMAGE"], env["TRAMONTANE_GPU_WORKER_IMAGE"]}
    assert images <= built, images - built
    assert json.loads(env["TRAMONTANE_WORKER_ENV"]) == [
        {"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": script().variables["STORAGE_ACCOUNT"]}
    ]


def test_identities_are_federated_with_the_charts_service_accounts(helm: str) -> None:
    s = script()
    client_ids = {  # client id -> identity name, from `export X_CLIENT_ID="$(az identity show`
        COMPUTED[name]: re.search(r"--name (\S+)", c_line).group(1)  # type: ignore[union-attr]
        for name, c_line in _assignments(DOC.read_text())
        if name.endswith("_CLIENT_ID")
    }
    federated = {
        (c.flag("--identity-name"), c.flag("--issuer"), c.flag("--subject"))
        for c in s.starting("az", "identity", "federated-credential", "create")
    }
    for c in s.starting("az", "identity", "federated-credential", "create"):
        assert c.flag("--audiences") == "api://AzureADTokenExchange"
    wanted = set()
    for d in rendered(helm, DOC, 0):
        if d["kind"] == "ServiceAccount" and IDENTITY in d["metadata"].get("annotations", {}):
            identity = client_ids[d["metadata"]["annotations"][IDENTITY]]
            subject = f"system:serviceaccount:{d['metadata']['namespace']}:{d['metadata']['name']}"
            wanted.add((identity, s.variables["HUB_OIDC_ISSUER"], subject))
    assert len(wanted) == 4  # operator, router, workers in two namespaces
    # The member's workers: the ServiceAccounts the doc creates there, annotated alike.
    for c in s.commands:
        if c.words[-2:] == ["serviceaccount", "tramontane-worker"] and "create" in c.words:
            subject = f"system:serviceaccount:{c.flag('-n')}:tramontane-worker"
            wanted.add(("tramontane-worker", s.variables["MEMBER_OIDC_ISSUER"], subject))
    assert len(wanted) == 6
    assert wanted == federated
    roles = s.starting("az", "role", "assignment", "create")
    assert any(c.flag("--role") == "Storage Blob Data Contributor" and "tramontane-worker"
               in c.line for c in roles)  # fmt: skip


def _assignments(markdown: str) -> Iterator[tuple[str, str]]:
    for block in blocks(markdown, "bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        yield from re.findall(r"^export (\w+)=(.*)$", joined, re.M)


# ---------------------------------------------------------------------------- other steps
def test_inline_manifests_are_valid_kubernetes() -> None:
    manifests = [c.stdin for c in script().commands if c.stdin and "apiVersion:" in c.stdin]
    assert len(manifests) == 3  # device plugin, usage claim, member ClusterRole
    for text in manifests:
        for obj in yaml.safe_load_all(text):
            kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


def test_the_member_role_grants_what_the_operator_sends_to_members() -> None:
    (role,) = [
        o
        for c in script().commands
        if c.stdin
        for o in yaml.safe_load_all(c.stdin)
        if o["kind"] == "ClusterRole"
    ]
    granted = {
        (verb, group or "core", resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    member_resources = {("ray.io", "rayservices"), ("ray.io", "rayjobs"), ("batch", "jobs"),
                        ("core", "pods"), ("core", "pods/log")}  # fmt: skip
    needed = {("get", "core", "namespaces"), ("create", "core", "namespaces")}
    for line in (CHART_DIR / "ci" / "rbac-operator.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            verb, group, resource, _ = line.split()
            if (group, resource) in member_resources:
                needed.add((verb, group, resource))
    assert needed - granted == set()
    (binding,) = [c for c in script().commands if {"create", "clusterrolebinding"} <= set(c.words)]
    assert binding.flag("--user") == COMPUTED["OPERATOR_PRINCIPAL_ID"]


def test_the_member_kubeconfig_secret_is_the_one_its_compute_cluster_names() -> None:
    _, clusters, _, _ = walkthrough()
    (member,) = [c for c in clusters if not c.spec.connection.in_cluster]
    ref = member.spec.connection.kubeconfig_secret_ref
    assert ref is not None and ref.namespace == release_namespace()
    (secret,) = [
        c
        for c in script().commands
        if c.words[:1] == ["kubectl"] and ref.name in c.words and "generic" in c.words
    ]
    assert secret.flag("-n") == ref.namespace
    (source,) = secret.flags("--from-file")
    assert source.split("=", 1)[0] == ref.key
    converted = script().starting("kubelogin", "convert-kubeconfig")
    assert [(c.flag("-l"), c.flag("--kubeconfig")) for c in converted] == [
        ("workloadidentity", source.split("=", 1)[1])
    ]


def test_tramontane_commands_parse_with_the_real_cli() -> None:
    commands = script().starting("tramontane")
    assert {c.words[1] for c in commands} >= {"usage", "dataset"}
    for c in commands:
        argv = c.words[1:]
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit as exc:  # argparse's way of refusing
            pytest.fail(f"{c.line}: refused ({exc.code})")


def test_the_python_snippet_compiles_and_uses_the_sdk_as_it_is() -> None:
    from mistralai.client import Mistral

    (snippet,) = blocks(DOC.read_text(), "python")
    tree = ast.parse(snippet)
    compile(tree, str(DOC), "exec")
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {("mistralai.client", "Mistral")}
    client = Mistral(api_key="k" * 32, server_url="http://127.0.0.1:9")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    constructor = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "Mistral"]
    allowed = set(inspect.signature(Mistral.__init__).parameters)
    assert constructor and all(k.arg in allowed for c in constructor for k in c.keywords)
    used = 0
    for call in calls:
        chain = []
        node: ast.expr = call.func
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "client":
            target: Any = client
            for attr in chain:
                assert hasattr(target, attr), f"client.{'.'.join(chain)}: no such attribute"
                target = getattr(target, attr)
            params = set(inspect.signature(target).parameters)
            assert {k.arg for k in call.keywords} <= params, chain
            used += 1
    assert used >= 1
    # The environment it reads is what the bash steps export.
    for name in re.findall(r'os\.environ\["(\w+)"\]', snippet):
        assert name in script().variables, name


def test_values_keys_the_doc_mentions_exist() -> None:
    top = set(SCHEMA["properties"])
    mentioned = {
        m
        for m in re.findall(r"`([a-zA-Z]+(?:\.[a-zA-Z]+)+)`", DOC.read_text())
        if m.split(".")[0] in top
    }
    assert mentioned, "the doc names chart values"
    assert sorted(m for m in mentioned if not schema_knows(m.split("."))) == []


def test_what_the_workloads_read_is_what_the_doc_uploads() -> None:
    """The model's az:// source and the fine-tune's datasets are uploaded, to the storage
    account the workers are given, and every container they name (the output's too) exists."""
    _, _, md, job = walkthrough()
    account = script().variables["STORAGE_ACCOUNT"]
    uploads = script().starting("az", "storage", "blob")
    assert {c.flag("--account-name") for c in uploads} == {account}
    uploaded = set()
    for c in uploads:
        if c.words[3] == "upload-batch":
            uploaded.add(f"az://{c.flag('--destination')}/{c.flag('--destination-path')}")
        else:
            uploaded.add(f"az://{c.flag('--container-name')}/{c.flag('--name')}")
    reads = [md.spec.model.source, *(f.uri for f in job.spec.training_files)]
    reads += [f.uri for f in job.spec.validation_files or []]
    assert sorted(set(reads) - uploaded) == []
    containers = {c.flag("--name") for c in script().starting("az", "storage", "container")}
    for uri in [*reads, job.spec.output.uri]:
        assert uri.startswith("az://") and uri[5:].split("/", 1)[0] in containers, uri
