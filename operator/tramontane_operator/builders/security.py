"""The Pod Security Standards "restricted" security context of every pod the operator renders.

Member clusters may enforce `pod-security.kubernetes.io/enforce: restricted` on tenant
namespaces, so every pod template we build (Ray head and workers, the RayJob submitter, the
dataset validation Job) goes through `restricted_pod_spec`, the one place this policy lives:
the pod runs as a non-root uid with the runtime's default seccomp profile, and every container
(init containers too) drops all capabilities and cannot gain privileges. As in KubeRay's own
restricted examples, no capability is added and nothing of the host is shared.

The uid is the `ray` user (1000) of the Ray images the workers are built on, so Ray finds its
home directory and its files are its own; `fsGroup` gives that group write access to the claims
a pod writes (a FineTuneJob's output). GPUs need no privilege: the NVIDIA device plugin (AKS,
GKE) hands the device nodes to an unprivileged container through the `nvidia.com/gpu` resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

WORKER_UID: Final = 1000  # `ray` in rayproject/ray images, the base of the worker image
WORKER_GID: Final = 1000
_RUNTIME_DEFAULT: Final = {"type": "RuntimeDefault"}
_CONTAINER_LISTS: Final = ("initContainers", "containers")


def pod_security_context() -> dict[str, Any]:
    """The pod-level `securityContext`: non-root uid/gid, fsGroup, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_GID,
        "fsGroup": WORKER_GID,
        "seccompProfile": dict(_RUNTIME_DEFAULT),
    }


def container_security_context() -> dict[str, Any]:
    """A container's `securityContext`: no privilege escalation, every capability dropped."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": dict(_RUNTIME_DEFAULT),
    }


def restricted_pod_spec(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    """`pod_spec` with the restricted security context on the pod and on each of its (init)
    containers; the input is not modified."""
    out = dict(pod_spec)
    out["securityContext"] = pod_security_context()
    for key in _CONTAINER_LISTS:
        if key in pod_spec:
            out[key] = [
                {**c, "securityContext": container_security_context()} for c in pod_spec[key]
            ]
    return out
