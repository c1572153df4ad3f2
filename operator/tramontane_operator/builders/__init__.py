"""Builders: pure functions that turn a ModelDeployment into the child objects to apply."""

from __future__ import annotations

from .labels import FINALIZER, child_labels, owner_reference, owner_selector
from .rayservice import BuildSettings, build_rayservice
from .serve import ResolvedAdapters, resolve_adapters, serve_app

__all__ = [
    "FINALIZER",
    "BuildSettings",
    "ResolvedAdapters",
    "build_rayservice",
    "child_labels",
    "owner_reference",
    "owner_selector",
    "resolve_adapters",
    "serve_app",
]
