"""Where a `pvc://<claim>/<path>` URI lives inside a pod.

The operator mounts each claim a pod uses at `DEFAULT_PVC_ROOT/<claim>`; the workers (model
loading, dataset validation, the trainer's storage) resolve the URI there.
`$TRAMONTANE_PVC_ROOT` moves the root (tests, local runs). Pure, standard library only.
"""

from __future__ import annotations

import os
from typing import Final
from urllib.parse import unquote, urlparse

PVC_ROOT_ENV: Final = "TRAMONTANE_PVC_ROOT"
DEFAULT_PVC_ROOT: Final = "/mnt/pvc"


def pvc_path(uri: str) -> str:
    """The local path of `pvc://<claim>/<path>` (the claim is mounted at $TRAMONTANE_PVC_ROOT)."""
    parsed = urlparse(uri)
    root = os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT
    return os.path.join(root, parsed.netloc, unquote(parsed.path).lstrip("/"))
