"""Kubernetes Events about our objects, posted through Kopf's event queue.

An Event only needs the object's reference (apiVersion, kind, name, namespace, uid), so that
is all that is built: dumping the whole resource for each Event cost a visible share of a
reconcile's CPU when a thousand ModelDeployments were created at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from tramontane_operator.api.v1alpha1.common import Resource

log = logging.getLogger(__name__)

MAX_MESSAGE: int = 1024


def object_reference(obj: Resource | Mapping[str, Any]) -> dict[str, Any]:
    """apiVersion, kind and the identifying metadata of a resource (model or raw body)."""
    if isinstance(obj, Resource):
        meta = obj.metadata
        return {
            "apiVersion": obj.api_version,
            "kind": obj.KIND_INFO.kind,
            "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
        }
    raw_meta: Mapping[str, Any] = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: raw_meta.get(k) for k in ("name", "namespace", "uid")},
    }


def post_event(obj: Resource | Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    """Queue an Event (`kind` Normal or Warning) about `obj`; logged outside Kopf's context."""
    try:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, object_reference(obj))),
            type=kind,
            reason=reason,
            message=message[:MAX_MESSAGE],
        )
    except LookupError:  # outside Kopf's context (direct calls in tools): no event sink
        log.info("%s %s: %s", kind, reason, message)
