"""A table of invalid manifests: each is rejected, naming the offending field.

Every case is checked twice: through `tramontane validate`'s path (pydantic model, schema, CEL
on the defaulted object) and through the generated CRD alone (what an API server would do
with `crds/*.yaml`), so the models and the CRDs cannot drift apart in what they accept.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tramontane_api.schema import SchemaValidator
from tramontane_api.validate import validate_object

CRDS = Path(__file__).resolve().parents[2] / "crds"

MD: dict[str, Any] = {
    "apiVersion": "tramontane.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "mistral", "namespace": "team-a"},
    "spec": {
        "model": {"name": "mistral-7b", "source": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
        "resources": {"gpu": {"type": "A100-80GB", "count": 1}},
    },
}
FTJ: dict[str, Any] = {
    "apiVersion": "tramontane.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "ft", "namespace": "team-a"},
    "spec": {
        "baseModel": {"modelDeploymentRef": {"name": "mistral"}},
        "trainingFiles": [{"uri": "file:///data/train.jsonl"}],
        "hyperparameters": {"trainingSteps": 100},
        "resources": {"gpuType": "A100-80GB"},
        "output": {"uri": "file:///out"},
    },
}
TENANT: dict[str, Any] = {
    "apiVersion": "tramontane.dev/v1alpha1",
    "kind": "Tenant",
    "metadata": {"name": "team-a"},
    "spec": {"namespaces": ["team-a"]},
}
CC: dict[str, Any] = {
    "apiVersion": "tramontane.dev/v1alpha1",
    "kind": "ComputeCluster",
    "metadata": {"name": "aks-we"},
    "spec": {
        "cloud": "azure",
        "region": "westeurope",
        "connection": {"inCluster": True},
        "gpus": {"H100": 8},
    },
}
EV: dict[str, Any] = {
    "apiVersion": "tramontane.dev/v1alpha1",
    "kind": "Evaluation",
    "metadata": {"name": "qa", "namespace": "team-a"},
    "spec": {
        "target": {"modelDeploymentRef": {"name": "mistral"}, "adapter": "support"},
        "baseline": {"modelDeploymentRef": {"name": "mistral"}},
        "dataset": {"uri": "s3://data/qa.jsonl"},
        "metrics": [{"name": "exactMatch", "min": 0.8}, {"name": "tokenF1", "minDelta": 0.05}],
    },
}
GATED: dict[str, Any] = {
    **FTJ,
    "spec": {
        **FTJ["spec"],
        "autoDeploy": {
            "modelDeploymentRef": {"name": "mistral"},
            "adapterName": "support",
            "evaluation": {
                "dataset": {"uri": "s3://data/qa.jsonl"},
                "metrics": [{"name": "exactMatch", "min": 0.8}],
            },
        },
    },
}
DELETE = object()


def mutate(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with the dotted `path` set to `value` (or removed with DELETE)."""
    obj = copy.deepcopy(base)
    parts = path.split(".")
    node = obj
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return obj


# (case id, base, dotted path to set, value, expected problem path, expected message fragment)
CASES: list[tuple[str, dict[str, Any], str, Any, str, str]] = [
    # --- ModelDeployment -------------------------------------------------------------------
    ("md-unknown-spec-field", MD, "spec.replicaCount", 2, "spec.replicaCount", "unknown field"),
    (
        "md-unknown-nested",
        MD,
        "spec.model.revision",
        "main",
        "spec.model.revision",
        "unknown field",
    ),
    ("md-missing-model", MD, "spec.model", DELETE, "spec.model", ""),
    ("md-missing-source", MD, "spec.model.source", DELETE, "spec.model.source", ""),
    ("md-bad-scheme", MD, "spec.model.source", "http://x/y", "spec.model.source", "hf://"),
    ("md-bad-format", MD, "spec.model.format", "gguf", "spec.model.format", "gguf"),
    ("md-bad-engine", MD, "spec.runtime.engine", "tgi", "spec.runtime.engine", "tgi"),
    ("md-bad-dtype", MD, "spec.runtime.dtype", "int4", "spec.runtime.dtype", "int4"),
    ("md-tp-zero", MD, "spec.runtime.tensorParallelSize", 0, "spec.runtime.tensorParallelSize", ""),
    (
        "md-tp-transformers",
        mutate(MD, "spec.runtime.engine", "transformers"),
        "spec.runtime.tensorParallelSize",
        2,
        "spec.runtime.tensorParallelSize",
        "needs engine vllm",
    ),
    (
        "md-tp-over-gpus",
        MD,
        "spec.runtime.tensorParallelSize",
        2,
        "spec.resources.gpu.count",
        "at least runtime.tensorParallelSize",
    ),
    (
        "md-vllm-no-gpu",
        MD,
        "spec.resources.gpu",
        DELETE,
        "spec.runtime.engine",
        "needs resources.gpu",
    ),
    ("md-max-len-small", MD, "spec.runtime.maxModelLen", 4, "spec.runtime.maxModelLen", ""),
    ("md-bad-cpu", MD, "spec.resources.cpu", "lots", "spec.resources.cpu", ""),
    ("md-bad-memory", MD, "spec.resources.memory", "16GB", "spec.resources.memory", ""),
    ("md-gpu-count-high", MD, "spec.resources.gpu.count", 64, "spec.resources.gpu.count", ""),
    (
        "md-bad-gpu-type",
        MD,
        "spec.resources.gpu.type",
        "nvidia a100",
        "spec.resources.gpu.type",
        "",
    ),
    (
        "md-bad-toleration",
        MD,
        "spec.resources.tolerations",
        [{"key": "nvidia.com/gpu", "operator": "Sometimes"}],
        "spec.resources.tolerations[0].operator",
        "",
    ),
    (
        "md-min-over-max",
        MD,
        "spec.scaling",
        {"minReplicas": 3, "maxReplicas": 2},
        "spec.scaling.minReplicas",
        "must not exceed maxReplicas",
    ),
    (
        "md-replicas-out-of-range",
        MD,
        "spec.scaling",
        {"minReplicas": 1, "maxReplicas": 2, "replicas": 5},
        "spec.scaling.replicas",
        "between minReplicas and maxReplicas",
    ),
    ("md-negative-min", MD, "spec.scaling.minReplicas", -1, "spec.scaling.minReplicas", ""),
    ("md-max-zero", MD, "spec.scaling.maxReplicas", 0, "spec.scaling.maxReplicas", ""),
    (
        "md-target-zero",
        MD,
        "spec.scaling.targetOngoingRequests",
        0,
        "spec.scaling.targetOngoingRequests",
        "",
    ),
    (
        "md-adapter-both",
        MD,
        "spec.adapters",
        [{"name": "a", "uri": "file:///a", "fineTuneJobRef": {"name": "ft"}}],
        "spec.adapters[0]",
        "exactly one of uri or fineTuneJobRef",
    ),
    (
        "md-adapter-neither",
        MD,
        "spec.adapters",
        [{"name": "a"}],
        "spec.adapters[0]",
        "exactly one of uri or fineTuneJobRef",
    ),
    (
        "md-adapter-duplicate",
        MD,
        "spec.adapters",
        [{"name": "a", "uri": "file:///a"}, {"name": "a", "uri": "file:///b"}],
        "spec.adapters[1]",
        "duplicate",
    ),
    (
        "md-placement-both",
        MD,
        "spec.placement",
        {"clusters": ["a"], "clusterSelector": {"matchLabels": {"x": "y"}}},
        "spec.placement",
        "not both",
    ),
    (
        "md-pinned-no-clusters",
        MD,
        "spec.placement",
        {"strategy": "Pinned"},
        "spec.placement.clusters",
        "Pinned needs clusters",
    ),
    ("md-bad-strategy", MD, "spec.placement.strategy", "Random", "spec.placement.strategy", ""),
    (
        "md-bad-cluster-name",
        MD,
        "spec.placement.clusters",
        ["AKS_WE"],
        "spec.placement.clusters[0]",
        "",
    ),
    ("md-surge-high", MD, "spec.rollout.maxSurgePercent", 150, "spec.rollout.maxSurgePercent", ""),
    ("md-long-name", MD, "metadata.name", "m" * 41, "metadata.name", "at most 40 characters"),
    ("md-wrong-type", MD, "spec.scaling.maxReplicas", "three", "spec.scaling.maxReplicas", ""),
    # --- FineTuneJob ------------------------------------------------------------------------
    (
        "ftj-base-both",
        FTJ,
        "spec.baseModel.uri",
        "hf://mistralai/x",
        "spec.baseModel",
        "exactly one of modelDeploymentRef or uri",
    ),
    ("ftj-no-training-files", FTJ, "spec.trainingFiles", [], "spec.trainingFiles", ""),
    (
        "ftj-too-many-clusters",
        FTJ,
        "spec.placement",
        {"clusters": [f"c{i}" for i in range(65)]},
        "spec.placement.clusters",
        "",
    ),
    (
        "ftj-hf-dataset",
        FTJ,
        "spec.trainingFiles",
        [{"uri": "hf://datasets/x"}],
        "spec.trainingFiles[0].uri",
        "az://",
    ),
    (
        "ftj-weight-zero",
        FTJ,
        "spec.trainingFiles",
        [{"uri": "file:///d.jsonl", "weight": 0}],
        "spec.trainingFiles[0].weight",
        "",
    ),
    (
        "ftj-steps-and-epochs",
        FTJ,
        "spec.hyperparameters",
        {"trainingSteps": 10, "epochs": 2},
        "spec.hyperparameters",
        "exactly one of trainingSteps or epochs",
    ),
    (
        "ftj-neither-steps-nor-epochs",
        FTJ,
        "spec.hyperparameters",
        {"learningRate": 0.001},
        "spec.hyperparameters",
        "exactly one of trainingSteps or epochs",
    ),
    (
        "ftj-lr-high",
        FTJ,
        "spec.hyperparameters.learningRate",
        5,
        "spec.hyperparameters.learningRate",
        "",
    ),
    (
        "ftj-warmup-high",
        FTJ,
        "spec.hyperparameters.warmupFraction",
        1.5,
        "spec.hyperparameters.warmupFraction",
        "",
    ),
    ("ftj-rank-zero", FTJ, "spec.method.lora", {"rank": 0}, "spec.method.lora.rank", ""),
    ("ftj-dropout-one", FTJ, "spec.method.lora", {"dropout": 1.0}, "spec.method.lora.dropout", ""),
    (
        "ftj-full-with-lora",
        FTJ,
        "spec.method",
        {"type": "full", "lora": {"rank": 8}},
        "spec.method.lora",
        "only to type lora",
    ),
    (
        "ftj-autodeploy-full",
        mutate(FTJ, "spec.method", {"type": "full"}),
        "spec.autoDeploy",
        {"modelDeploymentRef": {"name": "mistral"}, "adapterName": "x"},
        "spec.autoDeploy",
        "needs method lora",
    ),
    (
        "ftj-gpu-no-type",
        FTJ,
        "spec.resources",
        {"gpusPerWorker": 2},
        "spec.resources.gpuType",
        "gpuType is required",
    ),
    ("ftj-no-output", FTJ, "spec.output", DELETE, "spec.output", ""),
    ("ftj-deadline-zero", FTJ, "spec.activeDeadlineSeconds", 0, "spec.activeDeadlineSeconds", ""),
    ("ftj-priority-high", FTJ, "spec.priority", 5000, "spec.priority", ""),
    ("ftj-suspend-string", FTJ, "spec.suspend", "yes", "spec.suspend", ""),
    # --- Evaluation ---------------------------------------------------------------------------
    (
        "ev-two-adapters",
        EV,
        "spec.target.adapterUri",
        "s3://a/adapter",
        "spec.target",
        "at most one of adapter, adapterUri or fineTuneJobRef",
    ),
    (
        "ev-baseline-adapter-and-job",
        EV,
        "spec.baseline",
        {"modelDeploymentRef": {"name": "m"}, "adapter": "a", "fineTuneJobRef": {"name": "j"}},
        "spec.baseline",
        "at most one of",
    ),
    (
        "ev-min-delta-without-baseline",
        EV,
        "spec.baseline",
        DELETE,
        "spec.metrics",
        "minDelta compares with a baseline",
    ),
    ("ev-unknown-metric", EV, "spec.metrics", [{"name": "bleu"}], "spec.metrics[0].name", "bleu"),
    (
        "ev-duplicate-metric",
        EV,
        "spec.metrics",
        [{"name": "exactMatch", "min": 0.5}, {"name": "exactMatch", "max": 0.9}],
        "spec.metrics[1]",
        "duplicate",
    ),
    (
        "ev-min-over-max",
        EV,
        "spec.metrics",
        [{"name": "exactMatch", "min": 0.9, "max": 0.5}],
        "spec.metrics[0].min",
        "min must not exceed max",
    ),
    ("ev-no-metrics", EV, "spec.metrics", [], "spec.metrics", ""),
    (
        "ev-no-target-md",
        EV,
        "spec.target.modelDeploymentRef",
        DELETE,
        "spec.target.modelDeploymentRef",
        "",
    ),
    ("ev-hf-dataset", EV, "spec.dataset.uri", "hf://datasets/x", "spec.dataset.uri", "az://"),
    ("ev-failing-samples-high", EV, "spec.failingSamples", 51, "spec.failingSamples", ""),
    ("ev-long-name", EV, "metadata.name", "e" * 48, "metadata.name", "at most 47 characters"),
    (
        "ftj-gate-min-delta-without-baseline",
        GATED,
        "spec.autoDeploy.evaluation",
        {
            "dataset": {"uri": "s3://data/qa.jsonl"},
            "metrics": [{"name": "tokenF1", "minDelta": 0.05}],
            "baseline": "None",
        },
        "spec.autoDeploy.evaluation.metrics",
        "set baseline to BaseModel or Current",
    ),
    (
        "ftj-gate-bad-baseline",
        GATED,
        "spec.autoDeploy.evaluation.baseline",
        "Previous",
        "spec.autoDeploy.evaluation.baseline",
        "",
    ),
    # --- Tenant -------------------------------------------------------------------------------
    ("tenant-no-namespaces", TENANT, "spec.namespaces", [], "spec.namespaces", ""),
    (
        "tenant-dup-namespace",
        TENANT,
        "spec.namespaces",
        ["a", "a"],
        "spec.namespaces[1]",
        "duplicate",
    ),
    ("tenant-bad-namespace", TENANT, "spec.namespaces", ["Team_A"], "spec.namespaces[0]", ""),
    ("tenant-weight-zero", TENANT, "spec.fairShareWeight", 0, "spec.fairShareWeight", ""),
    (
        "tenant-negative-quota",
        TENANT,
        "spec.quotas",
        {"requestsPerMinute": -5},
        "spec.quotas.requestsPerMinute",
        "",
    ),
    (
        "tenant-bad-gpu-key",
        TENANT,
        "spec.quotas",
        {"gpus": {"A100 80GB": 2}},
        "spec.quotas.gpus",
        "",
    ),
    (
        "tenant-secret-no-namespace",
        TENANT,
        "spec.apiKeySecretRefs",
        [{"name": "keys"}],
        "spec.apiKeySecretRefs[0].namespace",
        "",
    ),
    # --- ComputeCluster -------------------------------------------------------------------------
    ("cc-bad-cloud", CC, "spec.cloud", "ibm", "spec.cloud", ""),
    ("cc-no-region", CC, "spec.region", DELETE, "spec.region", ""),
    (
        "cc-both-connections",
        CC,
        "spec.connection",
        {"inCluster": True, "kubeconfigSecretRef": {"namespace": "a", "name": "b"}},
        "spec.connection",
        "exactly one of inCluster",
    ),
    ("cc-no-connection", CC, "spec.connection", {}, "spec.connection", "exactly one of inCluster"),
    ("cc-negative-gpus", CC, "spec.gpus", {"H100": -1}, "spec.gpus.H100", ""),
    (
        "cc-price-unknown-gpu",
        CC,
        "spec.pricing",
        {"gpuHour": {"A100": 2.5}},
        "spec.pricing.gpuHour",
        "names a GPU type that gpus does not list",
    ),
    ("cc-bad-currency", CC, "spec.pricing", {"currency": "euro"}, "spec.pricing.currency", ""),
    (
        "cc-bad-endpoint",
        CC,
        "spec.ingress",
        {"grpcEndpoint": "https://serve.example.com"},
        "spec.ingress.grpcEndpoint",
        "",
    ),
]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@cache
def crd_validator(kind: str) -> SchemaValidator:
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            return SchemaValidator.from_crd(crd)
    raise LookupError(kind)


@pytest.mark.parametrize("base", [MD, FTJ, EV, GATED, TENANT, CC], ids=lambda b: b["kind"])
def test_bases_are_valid(base: dict[str, Any]) -> None:
    assert validate_object(base) == []
    assert crd_validator(base["kind"]).validate(base) == []


@pytest.mark.parametrize(
    ("case", "base", "path", "value", "where", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_rejected_naming_the_field(
    case: str, base: dict[str, Any], path: str, value: Any, where: str, fragment: str
) -> None:
    obj = mutate(base, path, value)

    problems = validate_object(obj)
    assert problems, f"{case}: accepted"
    assert any(p.path == where for p in problems), f"{case}: {problems}"
    if fragment:
        assert any(fragment in p.message for p in problems if p.path == where), problems

    # The generated CRD alone (as an API server would apply it) rejects it at the same field.
    crd_problems = crd_validator(obj["kind"]).validate(obj)
    assert any(p.path == where for p in crd_problems), f"{case}: CRD gave {crd_problems}"
