"""The chart's RBAC against what the operator and the router really send to the hub.

The operator and router test tiers record every request the emulated clusters serve
(`tramontane_local.kube_access`), by User-Agent. At the end of the session, `check_session`
renders the chart (`helm template`, once) and fails the run if any request of the operator
(its clients and Kopf's) or of the router is not granted by the roles bound to that
component's ServiceAccount: a ClusterRole through a ClusterRoleBinding, or a Role or
ClusterRole through a RoleBinding in the request's namespace, with `resourceNames` honoured.
The operator's requests to member clusters count as well: the hub is a member too as soon as
a pool is placed on it (`connection: {inCluster: true}`), through the chart's roles, and
docs/install.md gives members' kubeconfig identities the same rules.
With `TRAMONTANE_RBAC_RECORD=DIR` it also merges the observed set into `DIR/rbac-<component>.txt`
(one `verb group resource scope` per line), which `charts/tramontane/ci/` keeps and
`tests/unit/test_chart_rbac.py` compares with the rendered roles, both ways.

Scopes: `cluster` (a cluster-scoped object, or a request across all namespaces), `own` (the
component's own namespace: the release namespace), `keys` (a namespace holding tenants' API-key
Secrets: `tenants.keyNamespaces`) and `any` (any other namespace: tenants' workload
namespaces, which only a cluster-wide grant covers).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tramontane_local.kube_access import Access

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = REPO_ROOT / "charts" / "tramontane"
OBSERVED_DIR = CHART_DIR / "ci"
RELEASE = "tramontane"
NAMESPACE = "tramontane-system"  # the release namespace in both tiers (SYSTEM_NS, NS)
KEY_NAMESPACES = ("tramontane-keys", "keys-b")  # where the router tier keeps API-key Secrets
RECORD_ENV = "TRAMONTANE_RBAC_RECORD"
# User-Agent product -> the chart component (ServiceAccount) it runs as.
COMPONENTS = {"tramontane-operator": "operator", "kopf": "operator", "tramontane-router": "router"}
SERVICE_ACCOUNTS = {"operator": RELEASE, "router": f"{RELEASE}-router"}
# Values the check renders the chart with: the tiers' key namespace, everything else default.
CHECK_SETS = (f"tenants.keyNamespaces={{{','.join(KEY_NAMESPACES)}}}",)
SCOPES = ("cluster", "own", "keys", "any")


@dataclass(frozen=True)
class Rule:
    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]
    names: frozenset[str] | None  # resourceNames; None: every name

    @classmethod
    def parse(cls, rule: Mapping[str, Any]) -> Rule:
        names = rule.get("resourceNames")
        return cls(
            frozenset(rule.get("verbs") or ()),
            frozenset(rule.get("apiGroups") or ()),
            frozenset(rule.get("resources") or ()),
            frozenset(names) if names else None,
        )

    def allows(self, verb: str, group: str, resource: str, name: str | None) -> bool:
        if verb not in self.verbs or group not in self.groups or resource not in self.resources:
            return False
        return self.names is None or (name is not None and name in self.names)


@dataclass
class Grants:
    """What one ServiceAccount may do: cluster-wide rules, and rules per namespace."""

    cluster: list[Rule] = field(default_factory=list)
    namespaced: dict[str, list[Rule]] = field(default_factory=dict)

    def allows(self, access: Access) -> bool:
        key = (access.verb, access.group, access.resource, access.name)
        rules = list(self.cluster)
        if access.namespace is not None:
            rules += self.namespaced.get(access.namespace, [])
        return any(rule.allows(*key) for rule in rules)


def render(helm: str, sets: Sequence[str] = CHECK_SETS, values: Sequence[Path] = ()) -> list[Any]:
    """`helm template` of the chart as release `tramontane` in `tramontane-system`."""
    args = [helm, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def grants_for(docs: Iterable[Mapping[str, Any]], account: str, namespace: str) -> Grants:
    """The rules bound to ServiceAccount `namespace/account` in the rendered chart."""
    docs = list(docs)
    roles = {
        (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]): [
            Rule.parse(r) for r in doc.get("rules") or []
        ]
        for doc in docs
        if doc["kind"] in ("Role", "ClusterRole")
    }
    grants = Grants()
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    for doc in docs:
        if doc["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in doc.get("subjects") or []:
            continue
        ref = doc["roleRef"]
        where = doc["metadata"].get("namespace") if doc["kind"] == "RoleBinding" else None
        role_ns = where if ref["kind"] == "Role" else None
        rules = roles.get((ref["kind"], role_ns, ref["name"]))
        if rules is None:
            continue  # bound to a role the chart does not define: grants nothing here
        if where is None:
            grants.cluster += rules
        else:
            grants.namespaced.setdefault(where, []).extend(rules)
    return grants


def scope_of(namespace: str | None) -> str:
    if namespace is None:
        return "cluster"
    if namespace == NAMESPACE:
        return "own"
    return "keys" if namespace in KEY_NAMESPACES else "any"


def observed(accesses: Iterable[Access], component: str) -> set[str]:
    """The `verb group resource scope` lines of one component's accesses."""
    return {
        f"{a.verb} {a.group or 'core'} {a.resource} {scope_of(a.namespace)}"
        for a in accesses
        if COMPONENTS.get(a.component) == component
    }


def refused(accesses: Iterable[Access], docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each access of the operator or router that the chart's roles do not grant."""
    grants = {c: grants_for(docs, sa, NAMESPACE) for c, sa in SERVICE_ACCOUNTS.items()}
    problems = []
    for a in sorted(accesses, key=lambda a: tuple(str(part) for part in vars(a).values())):
        component = COMPONENTS.get(a.component)
        if component is None or grants[component].allows(a):
            continue
        where = f"namespace {a.namespace}" if a.namespace else "cluster-wide"
        where += f" (cluster {a.cluster})"
        named = f" {a.name}" if a.name else ""
        problems.append(
            f"{component} ({a.component}): {a.verb} {a.group or 'core'}/{a.resource}{named} {where}"
        )
    return problems


def record(accesses: Iterable[Access], directory: Path) -> None:
    """Merge the observed sets into `directory/rbac-<component>.txt`."""
    accesses = list(accesses)
    directory.mkdir(parents=True, exist_ok=True)
    for component in SERVICE_ACCOUNTS:
        path = directory / f"rbac-{component}.txt"
        lines = observed(accesses, component)
        if path.is_file():
            lines |= {line for line in path.read_text().splitlines() if line and line[0] != "#"}
        header = (
            f"# What the {component} sends to API servers in the test tiers: verb group "
            "resource scope.\n# Regenerate: tests/rbac.py (TRAMONTANE_RBAC_RECORD).\n"
        )
        path.write_text(header + "".join(f"{line}\n" for line in sorted(lines)))


def helm_binary() -> str | None:
    local = REPO_ROOT / ".tools" / "bin" / "helm"
    if local.is_file():
        return str(local)
    from shutil import which

    return which("helm")


def check_session(accesses: set[Access]) -> list[str]:
    """The session's verdict: refused accesses (empty: all granted). Records when asked."""
    target = os.environ.get(RECORD_ENV)
    if target:
        record(accesses, Path(target))
    helm = helm_binary()
    if helm is None:
        if os.environ.get("CI"):
            return ["helm not found: the chart's RBAC cannot be checked"]
        return []
    return refused(accesses, render(helm))


def grants_every_request() -> Iterator[None]:
    """The body of the operator and router tiers' session fixture: record every request the
    tier's components send, and fail the session if the chart's roles do not grant one
    (`TRAMONTANE_RBAC_RECORD=DIR` also writes what was sent)."""
    import pytest

    from tramontane_local.kube_access import RECORDER

    RECORDER.enabled = True
    try:
        yield
    finally:
        RECORDER.enabled = False
    problems = check_session(RECORDER.take())
    if problems:
        pytest.fail("requests the chart's RBAC does not grant:\n" + "\n".join(problems))
