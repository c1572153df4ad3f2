"""Labels and owner references every child object (RayService, RayJob, Job) carries."""

from __future__ import annotations

from typing import Any, Final

from tramontane_api.v1alpha1 import API_VERSION, Evaluation, FineTuneJob, ModelDeployment

# The kinds that own children in member clusters.
Owner = ModelDeployment | FineTuneJob | Evaluation

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "tramontane"
TENANT_LABEL: Final = "tramontane.dev/tenant"
OWNER_KIND_LABEL: Final = "tramontane.dev/owner-kind"
OWNER_NAME_LABEL: Final = "tramontane.dev/owner-name"
OWNER_NAMESPACE_LABEL: Final = "tramontane.dev/owner-namespace"
OWNER_UID_LABEL: Final = "tramontane.dev/owner-uid"
CLUSTER_LABEL: Final = "tramontane.dev/cluster"
FINALIZER: Final = "tramontane.dev/cleanup"


def child_labels(md: Owner, cluster: str, tenant: str | None) -> dict[str, str]:
    """The standard labels of a child of `md` placed in `cluster`."""
    meta = md.metadata
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        OWNER_KIND_LABEL: md.kind,
        OWNER_NAME_LABEL: meta.name,
        OWNER_NAMESPACE_LABEL: meta.namespace or "default",
        CLUSTER_LABEL: cluster,
    }
    if meta.uid:
        labels[OWNER_UID_LABEL] = meta.uid
    if tenant:
        labels[TENANT_LABEL] = tenant
    return labels


def owner_selector(md: Owner) -> str:
    """A label selector (string form) matching every child of `md` in any cluster."""
    meta = md.metadata
    return (
        f"{MANAGED_BY_LABEL}={MANAGED_BY},{OWNER_KIND_LABEL}={md.kind},"
        f"{OWNER_NAME_LABEL}={meta.name},{OWNER_NAMESPACE_LABEL}={meta.namespace or 'default'}"
    )


def owner_reference(md: Owner) -> dict[str, Any] | None:
    """The controller owner reference to `md` (None when the object has no uid yet)."""
    if not md.metadata.uid:
        return None
    return {
        "apiVersion": API_VERSION,
        "kind": md.kind,
        "name": md.metadata.name,
        "uid": md.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
