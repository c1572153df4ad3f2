"""Vendor the Kubernetes types that the chart's values.schema.json refers to into its $defs.

values.schema.json points at Kubernetes types (Affinity, EnvVar, SecurityContext, ...) as
`#/$defs/io.k8s...`. This script copies each of them, and every type they refer to, from the
strict (closed-object) JSON schemas that the `kubernetes-validate` package ships offline,
drops descriptions and `x-kubernetes-*` extensions, and writes them into `$defs`. So a typo
at any depth of `affinity` or `extraEnv` fails `helm install`, with no network access.
Hand-written `$defs` (names not starting with `io.k8s.`) are kept as they are.

Usage:  python charts/tramontane/hack/k8s_schema_defs.py [--check]
        --check: write nothing; exit 1 if values.schema.json is not what this would write.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
from pathlib import Path
from typing import Any

# Kubernetes release whose types are vendored; within the chart's kubeVersion range.
K8S_SCHEMA_VERSION = "1.33.0"
K8S_PREFIX = "io.k8s."
REF_PREFIX = "#/$defs/"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "values.schema.json"


def load_k8s_defs(version: str = K8S_SCHEMA_VERSION) -> dict[str, Any]:
    """The strict Kubernetes type definitions kubernetes-validate ships for `version`."""
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = folder / f"v{version}-local-strict" / "_definitions.json"
    if not path.is_file():
        raise FileNotFoundError(f"kubernetes-validate ships no strict schemas for {version}")
    defs: dict[str, Any] = json.loads(path.read_text())["$defs"]
    return defs


def refs_in(node: Any) -> set[str]:
    """Names of the `#/$defs/...` definitions that `node` refers to, at any depth."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            found.add(ref.removeprefix(REF_PREFIX))
        for value in node.values():
            found |= refs_in(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs_in(item)
    return found


def strip(node: Any) -> Any:
    """`node` without descriptions and `x-kubernetes-*` extensions (not used for validation)."""
    if isinstance(node, dict):
        return {
            key: strip(value)
            for key, value in node.items()
            if key != "description" and not key.startswith("x-kubernetes-")
        }
    if isinstance(node, list):
        return [strip(item) for item in node]
    return node


def k8s_closure(roots: set[str], k8s_defs: dict[str, Any]) -> dict[str, Any]:
    """Every Kubernetes definition reachable from `roots`, stripped, sorted by name."""
    pending = sorted(name for name in roots if name.startswith(K8S_PREFIX))
    picked: dict[str, Any] = {}
    while pending:
        name = pending.pop()
        if name in picked:
            continue
        if name not in k8s_defs:
            raise KeyError(f"values.schema.json refers to unknown Kubernetes type {name!r}")
        picked[name] = strip(k8s_defs[name])
        pending.extend(sorted(refs_in(picked[name]) - picked.keys()))
    return dict(sorted(picked.items()))


def vendored(schema: dict[str, Any], k8s_defs: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` holding exactly the Kubernetes types it needs."""
    own_defs = {
        name: value
        for name, value in schema.get("$defs", {}).items()
        if not name.startswith(K8S_PREFIX)
    }
    body = {key: value for key, value in schema.items() if key != "$defs"}
    roots = refs_in(body) | refs_in(own_defs)
    return {**body, "$defs": {**own_defs, **k8s_closure(roots, k8s_defs)}}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail on drift, write nothing")
    args = parser.parse_args(argv)
    current = SCHEMA_PATH.read_text()
    wanted = render(vendored(json.loads(current), load_k8s_defs()))
    if args.check:
        if current != wanted:
            print(f"{SCHEMA_PATH} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
