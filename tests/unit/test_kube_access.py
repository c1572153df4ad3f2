"""How the emulator reads a request as RBAC does (`tramontane_local.kube_access`), and how the
chart's RBAC check grants or refuses it (`tests/rbac.py`): the test tiers' RBAC verdicts are
only as good as these two."""

from __future__ import annotations

import json

import pytest
from tests.rbac import Grants, Rule, observed, scope_of

from tramontane_local.kube_access import (
    Access,
    AccessRecorder,
    component_of,
    owner_accesses,
    request_access,
)


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/secrets/s", {}, ("get", "", "secrets", "ns", "s")),
        ("GET", "/api/v1/namespaces/ns/secrets", {}, ("list", "", "secrets", "ns", None)),
        ("GET", "/api/v1/namespaces/ns/secrets", {"watch": "true"},
         ("watch", "", "secrets", "ns", None)),
        ("GET", "/apis/tramontane.dev/v1alpha1/modeldeployments", {"watch": "1"},
         ("watch", "tramontane.dev", "modeldeployments", None, None)),
        ("PATCH", "/apis/tramontane.dev/v1alpha1/namespaces/a/modeldeployments/m/status", {},
         ("patch", "tramontane.dev", "modeldeployments/status", "a", "m")),
        ("PATCH", "/apis/tramontane.dev/v1alpha1/tenants/t/status", {},
         ("patch", "tramontane.dev", "tenants/status", None, "t")),
        ("GET", "/api/v1/namespaces/a/pods/p/log", {"tailLines": "5"},
         ("get", "", "pods/log", "a", "p")),
        ("POST", "/api/v1/namespaces", {}, ("create", "", "namespaces", None, None)),
        ("GET", "/api/v1/namespaces/team-a", {}, ("get", "", "namespaces", None, "team-a")),
        ("PUT", "/api/v1/namespaces/team-a/finalize", {},
         ("update", "", "namespaces/finalize", None, "team-a")),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/s/leases/l", {},
         ("update", "coordination.k8s.io", "leases", "s", "l")),
        ("DELETE", "/apis/ray.io/v1/namespaces/a/rayservices/r", {},
         ("delete", "ray.io", "rayservices", "a", "r")),
        ("DELETE", "/apis/ray.io/v1/namespaces/a/rayservices", {},
         ("deletecollection", "ray.io", "rayservices", "a", None)),
        ("GET", "/api", {}, None),
        ("GET", "/apis/ray.io/v1", {}, None),
        ("GET", "/version", {}, None),
    ],
)  # fmt: skip
def test_requests_read_as_the_api_server_reads_them(
    method: str,
    path: str,
    query: dict[str, str],
    expected: tuple[str, str, str, str | None, str | None] | None,
) -> None:
    assert request_access(method, path, query) == expected


def test_components_come_from_the_user_agent_product() -> None:
    assert component_of("tramontane-operator/0.1.0") == "tramontane-operator"
    assert component_of("kopf/1.45.0") == "kopf"
    assert component_of("Python/3.11 aiohttp/3.9") == "Python"
    assert component_of("") == "unknown"


PLURALS = {("tramontane.dev", "ModelDeployment"): "modeldeployments"}
OWNER = {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment", "name": "chat"}


def test_block_owner_deletion_needs_update_on_the_owners_finalizers() -> None:
    blocking = {"metadata": {"ownerReferences": [{**OWNER, "blockOwnerDeletion": True}]}}
    assert owner_accesses(blocking, PLURALS, "team-a") == [
        ("update", "tramontane.dev", "modeldeployments/finalizers", "team-a", "chat")
    ]
    ops = [{"op": "add", "path": "/metadata/ownerReferences",
            "value": [{**OWNER, "blockOwnerDeletion": True}]}]  # fmt: skip
    assert len(owner_accesses(ops, PLURALS, "team-a")) == 1
    assert owner_accesses({"metadata": {"ownerReferences": [OWNER]}}, PLURALS, "a") == []
    other = {**OWNER, "kind": "Deployment", "apiVersion": "apps/v1", "blockOwnerDeletion": True}
    assert owner_accesses({"metadata": {"ownerReferences": [other]}}, PLURALS, "a") == []


def test_the_recorder_keeps_nothing_unless_enabled_and_adds_owner_checks() -> None:
    recorder = AccessRecorder()
    path = "/apis/ray.io/v1/namespaces/team-a/rayservices"
    body = json.dumps({"metadata": {"ownerReferences": [{**OWNER, "blockOwnerDeletion": True}]}})
    recorder.record("hub", "tramontane-operator/1", "POST", path, {}, body.encode(), PLURALS)
    assert recorder.take() == set()
    recorder.enabled = True
    recorder.record("hub", "tramontane-operator/1", "POST", path, {}, body.encode(), PLURALS)
    recorder.record("hub", "tramontane-operator/1", "GET", "/apis", {})
    taken = recorder.take()
    assert {(a.verb, a.resource) for a in taken} == {
        ("create", "rayservices"),
        ("update", "modeldeployments/finalizers"),
    }
    assert recorder.take() == set()
    assert observed(taken, "operator") == {
        "create ray.io rayservices any",
        "update tramontane.dev modeldeployments/finalizers any",
    }


def access(verb: str, resource: str, namespace: str | None, name: str | None = None) -> Access:
    return Access("hub", "tramontane-router", verb, "", resource, namespace, name)


def test_grants_honour_scope_and_resource_names() -> None:
    grants = Grants(
        cluster=[Rule.parse({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]})],
        namespaced={
            "keys": [Rule.parse({"apiGroups": [""], "resources": ["secrets"],
                                 "verbs": ["list", "watch"]})],
            "own": [Rule.parse({"apiGroups": [""], "resources": ["secrets"],
                                "resourceNames": ["tls"], "verbs": ["update"]})],
        },
    )  # fmt: skip
    assert grants.allows(access("list", "pods", None))
    assert grants.allows(access("list", "pods", "anywhere"))
    assert grants.allows(access("watch", "secrets", "keys"))
    assert not grants.allows(access("watch", "secrets", None))  # not cluster-wide
    assert not grants.allows(access("watch", "secrets", "other"))
    assert grants.allows(access("update", "secrets", "own", "tls"))
    assert not grants.allows(access("update", "secrets", "own", "other"))
    assert not grants.allows(access("get", "pods", None))
    assert [scope_of(ns) for ns in (None, "tramontane-system", "tramontane-keys", "team-a")] == [
        "cluster",
        "own",
        "keys",
        "any",
    ]
