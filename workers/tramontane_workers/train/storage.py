"""The trainer's one I/O seam to its output URI (file:// here; s3://, gs://, az:// via fsspec;
pvc://<claim>/<path> on the claim mounted at $TRAMONTANE_PVC_ROOT/<claim>).

Checkpoints are written to a local directory first and uploaded whole; the `COMPLETE` marker is
uploaded last, so a checkpoint interrupted mid-upload is never resumed from. JSON files are
written to a temporary name and moved into place.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel

from tramontane_workers.contract.pvc import pvc_path
from tramontane_workers.contract.train_config import (
    CHECKPOINTS_DIR,
    COMPLETE_MARKER,
    checkpoint_name,
)

_STEP_DIR = re.compile(r"step-(\d{8})$")


class OutputStore:
    """Files under one output URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        local = pvc_path(self.uri) if self.uri.startswith("pvc://") else self.uri
        self.fs, root = fsspec.core.url_to_fs(local)
        self.root = root.rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def uri_of(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def write_json(self, name: str, value: BaseModel | dict[str, Any]) -> None:
        text = (
            value.model_dump_json(indent=1) if isinstance(value, BaseModel) else json.dumps(value)
        )
        target = self._path(name)
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
        self.fs.makedirs(self.fs._parent(target), exist_ok=True)
        with self.fs.open(tmp, "w") as out:
            out.write(text)
        self.fs.mv(tmp, target)

    def read_json(self, name: str) -> Any | None:
        path = self._path(name)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as src:
            return json.load(src)

    def upload_dir(self, local: Path, name: str) -> str:
        """Copy a local directory to `name` (replacing it); `COMPLETE` goes last."""
        target = self._path(name)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        self.fs.makedirs(target, exist_ok=True)
        for item in sorted(local.rglob("*")):
            if item.is_file() and item.name != COMPLETE_MARKER:
                dest = f"{target}/{item.relative_to(local).as_posix()}"
                self.fs.makedirs(self.fs._parent(dest), exist_ok=True)
                self.fs.put_file(str(item), dest)
        with self.fs.open(f"{target}/{COMPLETE_MARKER}", "w") as marker:
            marker.write("complete\n")
        return self.uri_of(name)

    def download_dir(self, name: str, local: Path) -> Path:
        local.mkdir(parents=True, exist_ok=True)
        source = self._path(name)
        for path in self.fs.find(source):
            dest = local / Path(path).relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(dest))
        return local

    def complete_checkpoints(self) -> list[int]:
        """Steps of every checkpoint whose upload finished, ascending."""
        base = self._path(CHECKPOINTS_DIR)
        if not self.fs.exists(base):
            return []
        steps = []
        for entry in self.fs.ls(base, detail=False):
            match = _STEP_DIR.search(entry.rstrip("/"))
            if match and self.fs.exists(f"{entry.rstrip('/')}/{COMPLETE_MARKER}"):
                steps.append(int(match.group(1)))
        return sorted(steps)

    def checkpoint_dir(self, step: int) -> str:
        return f"{CHECKPOINTS_DIR}/{checkpoint_name(step)}"

    def remove(self, name: str) -> None:
        path = self._path(name)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
