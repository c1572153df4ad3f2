"""Model loading: checkpoint URIs -> local directories, and checkpoint-format detection.

Decisions are pure (`parse_model_uri`, `detect_format`); `materialize` is the one I/O seam that
turns a URI into a local directory:

- `file:///abs/path` — a local directory.
- `pvc://<claim>/<path>` — a PersistentVolumeClaim the pod mounts at
  `$TRAMONTANE_PVC_ROOT/<claim>` (default `/mnt/pvc/<claim>`).
- `hf://<org>/<name>[@<revision>]` — the local Hugging Face cache only (offline; never downloads).
- `az://`, `s3://`, `gs://` — object storage through fsspec (extras `azure`, `aws`, `gcp`), copied
  once into `$TRAMONTANE_MODEL_CACHE` (default `~/.cache/tramontane/models`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tramontane_workers.contract.pvc import pvc_path

CheckpointFormat = Literal["mistral", "hf"]
_OBJECT_STORES = {"az": ("adlfs", "azure"), "s3": ("s3fs", "aws"), "gs": ("gcsfs", "gcp")}
_SCHEMES = ("file", "pvc", "hf", *_OBJECT_STORES)


class ModelLoadError(ValueError):
    """A model or adapter cannot be located or recognised; the message says why."""


@dataclass(frozen=True)
class ModelUri:
    """A parsed checkpoint URI."""

    scheme: str
    location: str  # everything after "scheme://"
    revision: str | None = None  # hf:// only


def parse_model_uri(uri: str) -> ModelUri:
    """Split and validate a checkpoint URI (no I/O)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in _SCHEMES:
        allowed = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ModelLoadError(f"model uri {uri!r}: unsupported scheme; use one of {allowed}")
    if not rest.strip("/"):
        raise ModelLoadError(f"model uri {uri!r}: names no path")
    if scheme == "file" and not rest.startswith("/"):
        raise ModelLoadError(f"model uri {uri!r}: file:// needs an absolute path (file:///...)")
    if scheme == "hf":
        repo, _, revision = rest.partition("@")
        if repo.count("/") != 1:
            raise ModelLoadError(f"model uri {uri!r}: hf:// needs <org>/<name>[@revision]")
        return ModelUri(scheme, repo, revision or None)
    return ModelUri(scheme, rest)


def detect_format(path: Path) -> CheckpointFormat:
    """Mistral (`consolidated.safetensors` + `params.json`) or Hugging Face (`config.json`)."""
    if not path.is_dir():
        raise ModelLoadError(f"checkpoint {path}: not a directory")
    names = {p.name for p in path.iterdir()}
    if "params.json" in names and any(
        n.startswith("consolidated") and n.endswith(".safetensors") for n in names
    ):
        return "mistral"
    if "config.json" in names:
        return "hf"
    shown = ", ".join(sorted(names)[:12]) or "nothing"
    raise ModelLoadError(
        f"checkpoint {path}: unrecognised format; expected consolidated.safetensors + params.json "
        f"(Mistral) or config.json + *.safetensors (Hugging Face), found {shown}"
    )


def find_tokenizer(path: Path) -> Path:
    """The mistral-common tokenizer file beside a checkpoint (tekken.json or tokenizer.model.v*)."""
    candidates = sorted(path.glob("tekken.json")) + sorted(path.glob("tokenizer.model.v*"))
    if not candidates:
        candidates = sorted(path.glob("tokenizer.model"))
    if not candidates:
        raise ModelLoadError(
            f"checkpoint {path}: no mistral-common tokenizer (tekken.json or tokenizer.model.v*)"
        )
    return candidates[-1]


def _cache_root() -> Path:
    default = Path.home() / ".cache" / "tramontane" / "models"
    return Path(os.environ.get("TRAMONTANE_MODEL_CACHE", default))


def _from_object_store(uri: str, parsed: ModelUri) -> Path:
    module, extra = _OBJECT_STORES.get(parsed.scheme, ("fsspec", "worker"))
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is a worker dependency
        raise ModelLoadError(f"model uri {uri!r}: fsspec is not installed") from exc
    try:
        fs, remote = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ModelLoadError(
            f"model uri {uri!r}: needs the {module} back-end (pip install 'tramontane[{extra}]')"
        ) from exc
    target = _cache_root() / hashlib.sha256(uri.encode()).hexdigest()[:24]
    done = target / ".complete"
    if not done.exists():
        if not fs.exists(remote):
            raise ModelLoadError(f"model uri {uri!r}: not found in object storage")
        target.mkdir(parents=True, exist_ok=True)
        fs.get(remote.rstrip("/") + "/", str(target), recursive=True)
        done.touch()
    return target


def materialize(uri: str) -> Path:
    """Return a local directory holding the checkpoint named by `uri` (I/O seam)."""
    parsed = parse_model_uri(uri)
    if parsed.scheme == "file":
        path = Path(parsed.location)
    elif parsed.scheme == "pvc":
        path = Path(pvc_path(uri))
    elif parsed.scheme == "hf":
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            path = Path(
                snapshot_download(
                    parsed.location,
                    revision=parsed.revision,
                    cache_dir=os.environ.get("HF_HUB_CACHE"),  # read now, not at import
                    local_files_only=True,
                )
            )
        except LocalEntryNotFoundError as exc:
            raise ModelLoadError(
                f"model uri {uri!r}: not in the local Hugging Face cache (offline mode; "
                "pre-populate HF_HOME)"
            ) from exc
    else:
        path = _from_object_store(uri, parsed)
    if not path.is_dir():
        raise ModelLoadError(f"model uri {uri!r}: {path} is not a directory")
    return path
