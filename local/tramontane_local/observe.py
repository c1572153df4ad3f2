"""What local mode shows: objects with their phases and conditions, and the models served.

Pure functions of the objects listed from the local API server (`tramontane local status` and
the live view of `tramontane local up` both use them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def ready(obj: Mapping[str, Any]) -> bool:
    """Whether the object's `Ready` condition is True."""
    return condition(obj, "Ready").get("status") == "True"


def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any]:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found.get("type") == type_:
            return dict(found)
    return {}


def summary(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """One object as `status` shows it: kind, name, phase, and its conditions."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    name = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta.get("name")
    out: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "phase": status.get("phase") or "",
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")}
            for c in status.get("conditions") or []
        ],
    }
    progress = status.get("progress")
    if isinstance(progress, Mapping) and progress:
        out["progress"] = {
            k: progress[k] for k in ("step", "percent", "trainLoss") if k in progress
        }
    return out


def tenant_of(namespace: str, tenants: Sequence[Mapping[str, Any]]) -> str | None:
    """The Tenant owning `namespace` (None when none or several claim it)."""
    owners = [
        str(t["metadata"]["name"])
        for t in tenants
        if namespace in ((t.get("spec") or {}).get("namespaces") or [])
    ]
    return owners[0] if len(owners) == 1 else None


def models(
    deployments: Sequence[Mapping[str, Any]], tenants: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Every model a client can call, by the name it sends: each ModelDeployment's served
    model, and `<model>:<adapter>` for each adapter it serves."""
    out = []
    for md in deployments:
        meta, spec, status = md["metadata"], md.get("spec") or {}, md.get("status") or {}
        model = str((spec.get("model") or {}).get("name"))
        tenant = tenant_of(str(meta.get("namespace") or "default"), tenants)
        is_ready = ready(md)
        out.append({"name": model, "tenant": tenant, "ready": is_ready,
                    "modelDeployment": f"{meta.get('namespace')}/{meta['name']}"})  # fmt: skip
        for adapter in status.get("adapters") or []:
            out.append({"name": f"{model}:{adapter}", "tenant": tenant, "ready": is_ready,
                        "modelDeployment": f"{meta.get('namespace')}/{meta['name']}"})  # fmt: skip
    return out
