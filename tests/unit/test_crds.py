"""The generated CRDs: in sync with the models, structural, loadable, printer columns valid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonpath_ng.ext import parse as jsonpath

from tramontane_api import crdgen
from tramontane_api.schema import SchemaValidator
from tramontane_api.v1alpha1 import KINDS, Resource

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))

# Fields a structural schema node may carry (apiextensions.k8s.io/v1 JSONSchemaProps).
ALLOWED_KEYS = {
    "type", "description", "properties", "items", "additionalProperties", "required", "enum",
    "default", "nullable", "format", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "minProperties",
    "maxProperties", "uniqueItems", "multipleOf", "anyOf", "allOf", "oneOf", "not",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-validations",
    "x-kubernetes-map-type", "x-kubernetes-embedded-resource",
}  # fmt: skip


def structural_violations(node: dict[str, Any], path: str = "") -> list[str]:
    """Kubernetes' structural-schema rules that an API server enforces on CRD creation."""
    out = [f"{path}: key {k!r} not allowed" for k in node if k not in ALLOWED_KEYS]
    if "$ref" in node:
        out.append(f"{path}: $ref")
    if "type" not in node and not (
        node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: properties and additionalProperties together")
    if node.get("additionalProperties") is False:
        out.append(f"{path}: additionalProperties: false")
    for value in (node.get("exclusiveMinimum"), node.get("exclusiveMaximum")):
        if value is not None and not isinstance(value, bool):
            out.append(f"{path}: non-boolean exclusive bound")
    for name, sub in node.get("properties", {}).items():
        out += structural_violations(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += structural_violations(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += structural_violations(node["additionalProperties"], f"{path}{{}}")
    for entry in node.get("x-kubernetes-validations", []):
        if set(entry) - {"rule", "message", "fieldPath", "reason", "messageExpression"}:
            out.append(f"{path}: bad validation entry {entry}")
    return out


def test_crds_are_in_sync_with_the_models() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tramontane_cli.main", "crds", "generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_check_reports_drift(tmp_path: Path) -> None:
    target = tmp_path / "crds"
    assert crdgen.generate([target]) != []
    assert crdgen.generate([target], check=True) == []
    victim = target / crdgen.crd_filename(KINDS[0])
    victim.write_text(victim.read_text().replace("minReplicas", "minReplica"))
    (target / "stray.tramontane.dev.yaml").write_text("{}")
    drift = crdgen.generate([target], check=True)
    assert set(drift) == {victim, target / "stray.tramontane.dev.yaml"}


def test_one_crd_file_per_kind() -> None:
    assert [p.name for p in CRD_FILES] == sorted(crdgen.crd_filename(k) for k in KINDS)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_structural(path: Path) -> None:
    crd = yaml.safe_load(path.read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    assert structural_violations(root) == []
    assert "spec" in root["required"]
    assert version["subresources"]["status"] == {}
    assert crd["spec"]["names"]["categories"] == ["tramontane"]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_validates_as_a_kubernetes_object(path: Path) -> None:
    """Check the CRD object itself against Kubernetes' own JSON schema for CRDs."""
    kv = pytest.importorskip("kubernetes_validate")
    crd = yaml.safe_load(path.read_text())
    # Raises kubernetes_validate.ValidationError on any problem (unknown fields included).
    kv.validate(crd, "1.33.0", strict=True)


def test_short_names_and_scale() -> None:
    by_kind = {
        yaml.safe_load(p.read_text())["spec"]["names"]["kind"]: yaml.safe_load(p.read_text())
        for p in CRD_FILES
    }
    assert by_kind["ModelDeployment"]["spec"]["names"]["shortNames"] == ["md"]
    assert by_kind["FineTuneJob"]["spec"]["names"]["shortNames"] == ["ftj"]
    assert by_kind["Evaluation"]["spec"]["names"]["shortNames"] == ["ev"]
    assert by_kind["Tenant"]["spec"]["scope"] == "Cluster"
    assert by_kind["ComputeCluster"]["spec"]["scope"] == "Cluster"
    scale = by_kind["ModelDeployment"]["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.scaling.replicas",
        "statusReplicasPath": ".status.replicas",
    }


SAMPLE_STATUS: dict[str, dict[str, Any]] = {
    "ModelDeployment": {
        "phase": "Ready",
        "replicas": 3,
        "readyReplicas": 3,
        "gpus": 3,
        "clusterNames": "aks-we,onprem",
        "queuePosition": 2,  # set only while Queued; here for the column to find
        "conditions": [
            {
                "type": "Placed",
                "status": "True",
                "reason": "Placed",
                "lastTransitionTime": "2026-11-26T10:00:00Z",
            },
            {
                "type": "Ready",
                "status": "True",
                "reason": "AllPoolsReady",
                "lastTransitionTime": "2026-11-26T10:00:00Z",
            },
        ],
    },
    "FineTuneJob": {
        "phase": "Running",
        "cluster": "aks-we",
        "queuePosition": 0,
        "progress": {"step": 40, "totalSteps": 100, "percent": 40.0, "trainLoss": 1.25},
    },
    "Evaluation": {
        "phase": "Failed",
        "cluster": "aks-we",
        "samples": 500,
        "queuePosition": 1,  # set only while Queued; here for the column to find
        "results": [
            {
                "metric": "exactMatch",
                "score": 0.62,
                "baseline": 0.41,
                "delta": 0.21,
                "threshold": ">= 0.8",
                "passed": False,
            }
        ],
        "conditions": [
            {
                "type": "Passed",
                "status": "False",
                "reason": "ThresholdsMissed",
                "message": "exactMatch 0.62 misses >= 0.8 (baseline 0.41, delta 0.21)",
                "lastTransitionTime": "2026-11-26T10:00:00Z",
            }
        ],
    },
    "Tenant": {
        "phase": "Active",
        "gpusInUse": 4,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Active",
                "lastTransitionTime": "2026-11-26T10:00:00Z",
            }
        ],
    },
    "ComputeCluster": {
        "phase": "Ready",
        "gpuSummary": "H100 4/8",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reachable",
                "lastTransitionTime": "2026-11-26T10:00:00Z",
            }
        ],
    },
}


def _example(kind: type[Resource]) -> dict[str, Any]:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind.KIND_INFO.kind:
                return dict(doc)
    raise LookupError(kind)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.KIND_INFO.kind)
def test_every_printer_column_evaluates(kind: type[Resource]) -> None:
    obj = _example(kind)
    obj["metadata"]["creationTimestamp"] = "2026-11-26T09:00:00Z"
    obj["status"] = SAMPLE_STATUS[kind.KIND_INFO.kind]
    # The sample status is itself valid against the generated schema.
    validator = SchemaValidator.from_crd(crdgen.crd_for(kind))
    assert validator.validate(obj) == []
    for column in kind.KIND_INFO.printer_columns:
        found = jsonpath("$" + column.json_path).find(obj)
        assert found, f"{column.name}: {column.json_path} found nothing"
        value = found[0].value
        expected = {
            "integer": int,
            "number": (int, float),
            "string": str,
            "date": str,
            "boolean": bool,
        }
        assert isinstance(value, expected[column.type]), (column.name, value)


def test_crds_print_is_one_stream() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tramontane_cli.main", "crds", "print"],
        capture_output=True,
        text=True,
        check=True,
    )
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["name"] for d in docs] == [k.KIND_INFO.crd_name for k in KINDS]
    json.dumps(docs)  # plain data, nothing YAML-specific
