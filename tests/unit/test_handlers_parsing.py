"""Handlers read bodies with one helper: a bad object is a permanent error naming the field."""

from __future__ import annotations

import pytest

from tramontane_api.v1alpha1 import Tenant
from tramontane_operator.handlers.controller import Invalid
from tramontane_operator.handlers.parsing import parse_resource
from tramontane_operator.observability import Reconcile

GOOD = {
    "apiVersion": "tramontane.dev/v1alpha1",
    "kind": "Tenant",
    "metadata": {"name": "team"},
    "spec": {"namespaces": ["team-a"]},
}


def test_a_valid_body_parses_and_leaves_the_outcome() -> None:
    scope = Reconcile("Tenant")
    tenant = parse_resource(Tenant, GOOD, scope)
    assert tenant.spec.namespaces == ["team-a"] and scope.outcome == "ok"


def test_an_invalid_body_is_permanent_names_kind_and_field_and_marks_the_scope() -> None:
    scope = Reconcile("Tenant")
    bad = {**GOOD, "spec": {"namespaces": ["team-a"], "colour": "blue"}}
    with pytest.raises(Invalid) as raised:
        parse_resource(Tenant, bad, scope)
    message = str(raised.value)
    assert message.startswith("invalid Tenant: ") and "colour" in message
    assert scope.outcome == "invalid"
