"""The statuses KubeRay v1.7 writes on RayServices and RayJobs, as pure functions.

`rayservice_status` is what the RayService controller reports once its Ray cluster serves
(or failed); `next_rayjob_status` is one step of the RayJob controller's state machine:
"" -> Initializing -> Running (jobStatus RUNNING) -> Complete/SUCCEEDED or Failed/FAILED
when the job's outcome is known; `spec.suspend` moves it to Suspended, and clearing it starts
it again from Initializing. Every field is one of KubeRay v1.7's (checked against its CRDs).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping
from typing import Any

import yaml

# libyaml where installed: controllers re-read every RayService's serveConfigV2 each round.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"


def now() -> str:
    """A Kubernetes timestamp (RFC 3339, seconds, UTC) for now."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def serve_applications(rayservice: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `applications` of the RayService's serveConfigV2 (parsed once per config text)."""
    text = (rayservice.get("spec") or {}).get("serveConfigV2") or ""
    return [dict(a) for a in _applications(text)]


@functools.lru_cache(maxsize=4096)
def _applications(serve_config: str) -> tuple[dict[str, Any], ...]:
    config = yaml.load(serve_config, Loader=_LOADER) or {}
    return tuple(config.get("applications") or [])


def app_names(rayservice: Mapping[str, Any]) -> list[str]:
    """The names of the RayService's Serve applications."""
    return [str(a["name"]) for a in serve_applications(rayservice)]


def worker_replicas(rayservice: Mapping[str, Any]) -> int:
    """The worker replicas the RayService's Ray cluster asks for, over all groups."""
    groups = ((rayservice.get("spec") or {}).get("rayClusterConfig") or {}).get("workerGroupSpecs")
    return sum(int(g.get("replicas") or 0) for g in groups or [])


def rayservice_status(
    rayservice: Mapping[str, Any], failed: bool, message: str = ""
) -> dict[str, Any]:
    """What KubeRay v1.7 reports for a RayService once its Ray cluster serves (or failed,
    with `message` on each application)."""
    meta = rayservice["metadata"]
    workers = 0 if failed else worker_replicas(rayservice)
    app_status = (
        {"status": "DEPLOY_FAILED", "message": message} if failed else {"status": "RUNNING"}
    )
    ready = {
        "type": "Ready",
        "status": "False" if failed else "True",
        "reason": "ZeroServeEndpoints" if failed else "NonZeroServeEndpoints",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    return {
        "serviceStatus": "" if failed else "Running",
        "numServeEndpoints": workers,
        "observedGeneration": meta.get("generation", 1),
        "conditions": [ready],
        "activeServiceStatus": {
            "rayClusterName": f"{meta['name']}-raycluster",
            "applicationStatuses": {name: app_status for name in app_names(rayservice)},
            "rayClusterStatus": {
                "state": "failed" if failed else "ready",
                "desiredWorkerReplicas": worker_replicas(rayservice),
                "readyWorkerReplicas": workers,
                "availableWorkerReplicas": workers,
            },
        },
    }


def next_rayjob_status(
    name: str, spec: Mapping[str, Any], old: Mapping[str, Any], outcome: str | None
) -> dict[str, Any]:
    """The RayJob's status after one step, given the job's `outcome` (SUCCEEDED, FAILED, or
    None while unknown)."""
    state = old.get("jobDeploymentStatus") or ""
    if spec.get("suspend"):
        return {**old, "jobDeploymentStatus": "Suspended", "jobStatus": ""}
    if state in ("Complete", "Failed"):
        return dict(old)
    if outcome is not None and state == "Running":
        done = "Complete" if outcome == SUCCEEDED else "Failed"
        extra = {} if outcome == SUCCEEDED else {"reason": "AppFailed", "failed": 1}
        return {**old, "jobDeploymentStatus": done, "jobStatus": outcome, "endTime": now(),
                **extra}  # fmt: skip
    if state in ("", "Suspended"):
        return {**old, "jobDeploymentStatus": "Initializing", "jobStatus": "",
                "rayClusterName": f"{name}-raycluster"}  # fmt: skip
    if state == "Initializing":
        return {**old, "jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
                "jobId": f"{name}-1", "startTime": now()}  # fmt: skip
    return dict(old)
