"""PersistentVolumeClaim mounts for the `pvc://<claim>/<path>` URIs a child's pods read or write.

Pure. The workers resolve `pvc://<claim>/<path>` at `$TRAMONTANE_PVC_ROOT/<claim>/<path>`
(default root `/mnt/pvc`), so every pod that touches such a URI mounts the claim there. Given
the URIs an object references (`ClaimUse`: the field that names it, the URI, whether the pod
writes there), `pod_volumes` returns one volume and one mount per distinct claim, read-only
unless some use writes (a FineTuneJob's output); `with_volumes` adds them to a pod spec's
every container. Claim names are checked as the API server would check a PVC name (DNS-1123
subdomain); a bad one is a ValueError naming the field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlparse

from tramontane_workers.contract.pvc import DEFAULT_PVC_ROOT

PVC_SCHEME: Final = "pvc"
PVC_MOUNT_ROOT: Final = DEFAULT_PVC_ROOT  # where the workers look (`contract.pvc`)
_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_CLAIM: Final = 253
_MAX_VOLUME_NAME: Final = 63


@dataclass(frozen=True)
class ClaimUse:
    """One URI a pod uses: `field` names it in the owner's spec (for error messages)."""

    field: str
    uri: str
    writes: bool = False


@dataclass(frozen=True)
class PodVolumes:
    """The `volumes` of a pod spec and the `volumeMounts` of each of its containers."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.volumes)


def is_pvc(uri: str) -> bool:
    return uri.startswith(f"{PVC_SCHEME}://")


def pvc_claim(uri: str, field_name: str) -> str:
    """The claim of a `pvc://<claim>/<path>` URI; ValueError naming `field_name` when invalid."""
    parsed = urlparse(uri)
    claim = parsed.netloc
    if parsed.scheme != PVC_SCHEME or not claim:
        raise ValueError(f"{field_name}: {uri!r} is not a pvc://<claim>/<path> URI")
    if len(claim) > _MAX_CLAIM or not _SUBDOMAIN.match(claim):
        raise ValueError(
            f"{field_name}: claim {claim!r} of {uri!r} is not a valid PersistentVolumeClaim "
            "name (lowercase letters, digits, '-' and '.', starting and ending with a letter "
            "or digit, at most 253 characters)"
        )
    return claim


def volume_name(claim: str) -> str:
    """A pod volume name (a DNS label) for `claim`, stable and distinct per claim."""
    plain = f"pvc-{claim}"
    if "." not in claim and len(plain) <= _MAX_VOLUME_NAME:
        return plain
    digest = hashlib.sha256(claim.encode()).hexdigest()[:8]
    stem = plain.replace(".", "-")[: _MAX_VOLUME_NAME - len(digest) - 1].rstrip("-")
    return f"{stem}-{digest}"


def mount_path(claim: str) -> str:
    return f"{PVC_MOUNT_ROOT}/{claim}"


def pod_volumes(uses: Iterable[ClaimUse]) -> PodVolumes:
    """One volume and mount per distinct claim among the pvc:// `uses` (others are ignored),
    in the order first seen; read-write where any use writes, read-only otherwise."""
    writes: dict[str, bool] = {}
    for use in uses:
        if is_pvc(use.uri):
            claim = pvc_claim(use.uri, use.field)
            writes[claim] = writes.get(claim, False) or use.writes
    volumes, mounts = [], []
    for claim, writable in writes.items():
        name = volume_name(claim)
        source: dict[str, Any] = {"claimName": claim}
        mount: dict[str, Any] = {"name": name, "mountPath": mount_path(claim)}
        if not writable:
            source["readOnly"] = True
            mount["readOnly"] = True
        volumes.append({"name": name, "persistentVolumeClaim": source})
        mounts.append(mount)
    return PodVolumes(volumes, mounts)


def with_volumes(pod_spec: Mapping[str, Any], volumes: PodVolumes) -> dict[str, Any]:
    """`pod_spec` with `volumes` added to the pod and their mounts to every container."""
    out = dict(pod_spec)
    if not volumes:
        return out
    out["volumes"] = [*(pod_spec.get("volumes") or []), *_copies(volumes.volumes)]
    out["containers"] = [
        {**c, "volumeMounts": [*(c.get("volumeMounts") or []), *_copies(volumes.mounts)]}
        for c in pod_spec.get("containers") or []
    ]
    return out


def _copies(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Deep-enough copies: pods never share (mutable) volume entries."""
    return [{k: dict(v) if isinstance(v, Mapping) else v for k, v in i.items()} for i in items]
