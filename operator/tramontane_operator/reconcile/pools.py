"""Read a pool's state from what KubeRay reports in a RayService's status.

Fields used (KubeRay v1.7.0 `ray.io_rayservices.yaml`):
- `status.activeServiceStatus.applicationStatuses.<app>.status`: Ray Serve's RUNNING,
  DEPLOYING, DEPLOY_FAILED, UNHEALTHY, ...;
- `status.conditions`: `Ready` (serve endpoints exist) and `UpgradeInProgress`; without
  conditions (older KubeRay) `status.serviceStatus == "Running"` stands for Ready;
- `...rayClusterStatus.readyWorkerReplicas` (else `availableWorkerReplicas`) and `.state`;
- `status.observedGeneration` against `metadata.generation`: a patched spec not acted on yet.
One worker pod runs one Serve replica, so ready worker pods are ready replicas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# Pool states written to status.clusters[].state.
CREATING: Final = "Creating"  # reachable, RayService not there yet
DEPLOYING: Final = "Deploying"
UPGRADING: Final = "Upgrading"  # serving; KubeRay is bringing up a new Ray cluster
UPDATING: Final = "Updating"  # serving; KubeRay has not yet acted on the latest spec
READY: Final = "Ready"
FAILED: Final = "Failed"
UNREACHABLE: Final = "Unreachable"

FAILED_APP_STATES: Final = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


@dataclass(frozen=True)
class PoolReading:
    state: str
    ready_replicas: int
    message: str = ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def read_pool(
    rayservice: Mapping[str, Any] | None, app_name: str, *, reachable: bool = True
) -> PoolReading:
    """The state and ready replicas of the pool whose RayService is `rayservice`."""
    if not reachable:
        return PoolReading(UNREACHABLE, 0, "cluster unreachable")
    if rayservice is None:
        return PoolReading(CREATING, 0, "RayService not created yet")
    status = _mapping(rayservice.get("status"))
    active = _mapping(status.get("activeServiceStatus"))
    cluster = _mapping(active.get("rayClusterStatus"))
    ready = _int(cluster.get("readyWorkerReplicas")) or _int(cluster.get("availableWorkerReplicas"))
    app = _mapping(_mapping(active.get("applicationStatuses")).get(app_name))
    app_status = str(app.get("status") or "")
    app_message = str(app.get("message") or "")
    if app_status in FAILED_APP_STATES or cluster.get("state") == "failed":
        detail = app_message or str(cluster.get("reason") or "") or app_status or "failed"
        return PoolReading(FAILED, 0, f"Serve application {app_status or 'cluster'}: {detail}")
    upgrading = _condition(status, "UpgradeInProgress")
    ready_cond = _condition(status, "Ready")
    if ready_cond is not None:
        endpoints = ready_cond.get("status") == "True"
    else:
        endpoints = status.get("serviceStatus") in (None, "Running")
    serving = app_status == "RUNNING" and endpoints
    if not serving:
        return PoolReading(
            DEPLOYING, 0, app_message or f"Serve application {app_status or 'not started'}"
        )
    if upgrading is not None and upgrading.get("status") == "True":
        return PoolReading(UPGRADING, ready, str(upgrading.get("message") or "upgrade in progress"))
    generation = (rayservice.get("metadata") or {}).get("generation")
    seen = status.get("observedGeneration")
    if isinstance(generation, int) and isinstance(seen, int) and seen < generation:
        return PoolReading(UPDATING, ready, f"KubeRay has not applied generation {generation} yet")
    return PoolReading(READY, ready)


SERVING: Final = frozenset({READY, UPGRADING, UPDATING})
