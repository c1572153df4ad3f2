"""The chart's roles grant exactly what the operator and the router send to the hub.

`charts/tramontane/ci/rbac-<component>.txt` is what the operator and router test tiers
observed (every request to the emulated hub, by User-Agent: tests/rbac.py); those tiers also
fail if any request is refused by the rendered roles. Here, the other way: every grant the
chart renders is one that was observed (nothing more), none is a wildcard, and no Secret is
readable cluster-wide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.rbac import (
    CHECK_SETS,
    KEY_NAMESPACES,
    NAMESPACE,
    OBSERVED_DIR,
    SERVICE_ACCOUNTS,
    render,
)
from tests.unit.test_chart import VALUE_SETS


def observed(component: str) -> set[str]:
    path = OBSERVED_DIR / f"rbac-{component}.txt"
    return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}


def required(lines: Iterable[str]) -> set[str]:
    """The grants `lines` need: a request in `any` namespace needs a cluster-wide grant, and
    one in the own or a key namespace is covered when the same is granted cluster-wide."""
    needed = {line.replace(" any", " cluster") if line.endswith(" any") else line for line in lines}
    cluster = {line.rsplit(" ", 1)[0] for line in needed if line.endswith(" cluster")}
    return {line for line in needed if line.endswith(" cluster") or line.rsplit(" ", 1)[0]
            not in cluster}  # fmt: skip


def granted(docs: list[dict[str, Any]], account: str) -> set[str]:
    """`verb group resource scope` for every rule bound to `account` in the rendered chart."""
    rules: dict[tuple[str, str | None, str], list[Mapping[str, Any]]] = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("rules") or []
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    out = set()
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding["subjects"]:
            continue
        ref, where = binding["roleRef"], binding["metadata"].get("namespace")
        role = rules[(ref["kind"], where if ref["kind"] == "Role" else None, ref["name"])]
        scope = "cluster" if where is None else ("own" if where == NAMESPACE else "keys")
        if where is not None and where != NAMESPACE:
            assert where in KEY_NAMESPACES, f"a RoleBinding in {where}"
        for rule in role:
            for verb in rule["verbs"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        out.add(f"{verb} {group or 'core'} {resource} {scope}")
    return out


@pytest.mark.parametrize("component", sorted(SERVICE_ACCOUNTS))
def test_roles_grant_exactly_what_the_tests_observed(helm: str, component: str) -> None:
    docs = render(helm, CHECK_SETS)
    chart = granted(docs, SERVICE_ACCOUNTS[component])
    wanted = required(observed(component))
    assert sorted(chart - wanted) == [], "granted but never sent: remove from the chart"
    assert sorted(wanted - chart) == [], "sent but not granted: the test tiers would fail"


def test_observed_sets_are_well_formed() -> None:
    for component in SERVICE_ACCOUNTS:
        lines = observed(component)
        assert len(lines) >= 5, component
        for line in lines:
            verb, _group, _resource, scope = line.split(" ")
            assert verb in {"get", "list", "watch", "create", "update", "patch", "delete"}, line
            assert scope in {"cluster", "own", "keys", "any"}, line
            assert "*" not in line


@pytest.mark.parametrize("values", VALUE_SETS)
def test_no_wildcard_and_no_secret_readable_cluster_wide(
    helm: str, values: tuple[Path, ...]
) -> None:
    docs = render(helm, CHECK_SETS, values)
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        for rule in role.get("rules") or []:
            for key in ("verbs", "apiGroups", "resources"):
                assert "*" not in rule[key], (role["metadata"]["name"], rule)
    cluster_roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        role = cluster_roles[binding["roleRef"]["name"]]
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"], (role["metadata"]["name"], rule)


def test_key_namespaces_get_one_role_binding_each_for_the_router_only(helm: str) -> None:
    docs = render(helm, ["tenants.keyNamespaces={keys-a,keys-b}"])
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["namespace"]
                != NAMESPACE]  # fmt: skip
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["keys-a", "keys-b"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "tramontane-router", "namespace": NAMESPACE}
        ]
        role = next(
            d for d in docs
            if d["kind"] == "ClusterRole" and d["metadata"]["name"] == binding["roleRef"]["name"]
        )  # fmt: skip
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}
        ]
    # Bound per namespace only: no ClusterRoleBinding to the keys role.
    assert not [
        d for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"].endswith("-keys")
    ]  # fmt: skip
