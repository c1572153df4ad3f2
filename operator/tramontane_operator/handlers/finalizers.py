"""Our finalizer on the kinds that own children: added before any child, removed after all.

JSON patches, so that other controllers' finalizers added meanwhile stay; the removal first
tests that ours is still where it was seen. A failure is a `Retry` (backed off); an object
deleted meanwhile ends the pass (its DELETED event finishes the work).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from tramontane_kube import ApiError, NotFound, ResourceRef, Unreachable
from tramontane_operator.builders.labels import FINALIZER

from .controller import Retry, key_of
from .runtime import Runtime


async def add_finalizer(rt: Runtime, ref: ResourceRef, raw: Mapping[str, Any]) -> None:
    namespace, name = key_of(raw)
    finalizers = (raw.get("metadata") or {}).get("finalizers") or []
    path = "/metadata/finalizers"
    ops = (
        [{"op": "add", "path": f"{path}/-", "value": FINALIZER}]
        if finalizers
        else [{"op": "add", "path": path, "value": [FINALIZER]}]
    )
    try:
        await rt.hub.patch(ref, namespace, name, ops)
    except NotFound:
        raise Retry("deleted meanwhile", 0.0) from None
    except (ApiError, Unreachable) as exc:
        raise Retry(f"finalizer not added yet: {exc}") from exc


async def remove_finalizer(rt: Runtime, ref: ResourceRef, raw: Mapping[str, Any]) -> None:
    namespace, name = key_of(raw)
    finalizers = (raw.get("metadata") or {}).get("finalizers") or []
    path = f"/metadata/finalizers/{finalizers.index(FINALIZER)}"
    ops = [{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}]
    try:
        with contextlib.suppress(NotFound):
            await rt.hub.patch(ref, namespace, name, ops)
    except (ApiError, Unreachable) as exc:
        raise Retry(f"finalizer not removed yet: {exc}") from exc


def has_finalizer(raw: Mapping[str, Any]) -> bool:
    return FINALIZER in ((raw.get("metadata") or {}).get("finalizers") or [])
