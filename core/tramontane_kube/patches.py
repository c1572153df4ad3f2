"""Pure helpers for writes: the smallest merge patch from an observed object to a desired one.

The operator owns a child's `spec` completely (keys it no longer renders are removed) and only
its own labels, annotations and owner references in `metadata` (keys others added are kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_OWNED_META_MAPS = ("labels", "annotations")
_OWNED_META_VALUES = ("ownerReferences",)


def merge_patch_diff(
    current: Mapping[str, Any], desired: Mapping[str, Any]
) -> dict[str, Any] | None:
    """A JSON merge patch turning `current` into `desired` for the parts we own; None if equal."""
    patch: dict[str, Any] = {}
    meta_patch: dict[str, Any] = {}
    current_meta = current.get("metadata") or {}
    desired_meta = desired.get("metadata") or {}
    for key in _OWNED_META_MAPS:
        want = desired_meta.get(key) or {}
        have = current_meta.get(key) or {}
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            meta_patch[key] = changed
    for key in _OWNED_META_VALUES:
        if key in desired_meta and current_meta.get(key) != desired_meta[key]:
            meta_patch[key] = desired_meta[key]
    if meta_patch:
        patch["metadata"] = meta_patch
    if "spec" in desired:
        spec_patch = _diff(current.get("spec"), desired["spec"])
        if spec_patch is not _SAME:
            patch["spec"] = spec_patch
    return patch or None


_SAME = object()


def diff(have: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning `have` into `want` entirely (removed keys become None)."""
    patch = _diff(have, want)
    return None if patch is _SAME else dict(patch)


def _diff(have: Any, want: Any) -> Any:
    """Merge patch from `have` to `want`, or _SAME when nothing changes."""
    if isinstance(have, Mapping) and isinstance(want, Mapping):
        out: dict[str, Any] = {}
        for key, value in want.items():
            sub = _diff(have.get(key, _SAME), value) if key in have else value
            if sub is not _SAME:
                out[key] = sub
        for key in have:
            if key not in want:
                out[key] = None
        return out or _SAME
    return _SAME if have == want else want


def matches_labels(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    """Whether `obj` carries every label in `labels` (an equality-based selector)."""
    if not labels:
        return True
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())
