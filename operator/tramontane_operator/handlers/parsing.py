"""Reading a watched object's body into its API model, as every handler does first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from tramontane_api.v1alpha1.common import Resource
from tramontane_operator.observability import Reconcile

from .controller import Invalid

R = TypeVar("R", bound=Resource)


def parse_resource(model: type[R], body: Mapping[str, Any], scope: Reconcile | None = None) -> R:
    """`body` as `model`; an invalid one marks `scope` invalid and is `Invalid` naming the
    kind and the fields (retried only when the object changes)."""
    try:
        return model.model_validate(dict(body))
    except ValidationError as exc:
        if scope is not None:
            scope.outcome = "invalid"
        raise Invalid(f"invalid {model.KIND_INFO.kind}: {exc}") from exc
