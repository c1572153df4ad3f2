"""The Kubernetes resources Tramontane reads and writes, and how their URLs are built."""

from __future__ import annotations

from dataclasses import dataclass

from tramontane_api.v1alpha1 import GROUP, VERSION


@dataclass(frozen=True)
class ResourceRef:
    """One API resource: group/version/plural plus whether it lives in namespaces."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


RAYSERVICE = ResourceRef("ray.io", "v1", "rayservices", "RayService")
MODELDEPLOYMENT = ResourceRef(GROUP, VERSION, "modeldeployments", "ModelDeployment")
COMPUTECLUSTER = ResourceRef(GROUP, VERSION, "computeclusters", "ComputeCluster", False)
TENANT = ResourceRef(GROUP, VERSION, "tenants", "Tenant", False)
FINETUNEJOB = ResourceRef(GROUP, VERSION, "finetunejobs", "FineTuneJob")
EVALUATION = ResourceRef(GROUP, VERSION, "evaluations", "Evaluation")
SECRET = ResourceRef("", "v1", "secrets", "Secret")
NAMESPACE = ResourceRef("", "v1", "namespaces", "Namespace", False)
EVENT = ResourceRef("", "v1", "events", "Event")
JOB = ResourceRef("batch", "v1", "jobs", "Job")
POD = ResourceRef("", "v1", "pods", "Pod")
LEASE = ResourceRef("coordination.k8s.io", "v1", "leases", "Lease")
