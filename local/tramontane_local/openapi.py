"""The OpenAPI v3 discovery a real API server serves, as much as `kubectl apply` reads of it.

`kubectl apply` (and `create`, `replace`) validates on the server when the server says it can:
it reads `/openapi/v3`, then the document of the object's group/version, and looks there for a
PATCH operation of the object's kind (`x-kubernetes-group-version-kind`) that takes the
`fieldValidation` query parameter. Found, it sends `fieldValidation=Strict` and leaves the
checks to the server; not found (no OpenAPI at all), it refuses to run without
`--validate=false`. The emulator validates every write against the CRD schemas, unknown fields
included, which is what `Strict` asks; so these documents declare exactly that and nothing
more: one path per resource with its PATCH operation. Schemas are not served (`kubectl
explain` needs them; `tramontane crds print` shows them).

Pure: built from the resources the emulator serves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "Ignore, Warn or Strict: what to do with unknown or duplicate fields.",
    "schema": {"type": "string", "uniqueItems": True},
}


@dataclass(frozen=True)
class Served:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def group_version_path(self) -> str:
        """`api/v1` or `apis/<group>/<version>`, as `/openapi/v3` keys them."""
        return f"apis/{self.group}/{self.version}" if self.group else f"api/{self.version}"


def _document(served: Iterable[Served]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for s in served:
        scope = "/namespaces/{namespace}" if s.namespaced else ""
        operation = {
            "operationId": f"patch{s.kind}",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                FIELD_VALIDATION,
            ],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {
                "group": s.group,
                "version": s.version,
                "kind": s.kind,
            },
        }
        paths[f"/{s.group_version_path}{scope}/{s.plural}/{{name}}"] = {"patch": operation}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1"}, "paths": paths}


def documents(served: Iterable[Served]) -> dict[str, dict[str, Any]]:
    """The document of each group/version, keyed like `/openapi/v3` keys them."""
    by_gv: dict[str, list[Served]] = {}
    for s in served:
        by_gv.setdefault(s.group_version_path, []).append(s)
    return {gv: _document(items) for gv, items in sorted(by_gv.items())}


def root(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`/openapi/v3`: where each group/version's document is (with a content hash, as the
    real server adds so clients may cache it)."""
    return {
        "paths": {
            gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={_digest(doc)}"}
            for gv, doc in docs.items()
        }
    }


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
