"""Upload a FineTuneJob's local datasets to its own storage, so a cluster can read them.

`finetune submit` against a cluster cannot hand the operator a `file://` dataset: nothing in
the cluster reads the tenant's laptop. When the job's `spec.output.uri` is in an object store
(`az://`, `s3://`, `gs://`), each `file://` training or validation file is copied to

    <output.uri>/inputs/<sha256 of the content, 16 hex>/<file name>

and the manifest sent to the cluster names that URI instead. The path carries the content's
digest, so a resubmission reuses what is there (same size: not sent again), two different files
of one name never overwrite each other, and nothing already stored is ever replaced by other
content. Object-store credentials are the standard ones of each store's fsspec library (adlfs:
`AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT_NAME` with the default Azure
credential chain: `az login`, workload identity; s3fs and gcsfs alike), the same the workers use.

A `pvc://` output cannot be written from here (a claim is mounted only inside the cluster): the
error says so and how to copy the file in. A `file://` base model or output is refused as
before: those are local mode's alone.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tramontane_cli.args import EXIT_INVALID, EXIT_USAGE
from tramontane_cli.errors import CliError

UPLOAD_SCHEMES = {"az": "azure", "s3": "aws", "gs": "gcp"}  # scheme -> the extra providing it
INPUTS_DIR = "inputs"
_CHUNK = 4 << 20


@dataclass(frozen=True)
class Upload:
    field: str  # e.g. spec.trainingFiles[0].uri
    source: Path
    uri: str  # where it is (or will be) in the job's storage
    sent: bool  # False: the same content was already there


def local_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def content_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def destination(output_uri: str, path: Path, digest: str) -> str:
    return posixpath.join(output_uri.rstrip("/"), INPUTS_DIR, digest, path.name)


def check_uploadable(manifest: str, output_uri: str, datasets: Sequence[tuple[str, str]]) -> None:
    """CliError unless the `datasets` ((field, file:// uri)) can go to `output_uri`."""
    if not datasets:
        return
    field, uri = datasets[0]
    scheme = urlparse(output_uri).scheme
    if scheme == "pvc":
        raise CliError(
            EXIT_INVALID,
            f"{manifest}: {field}: {uri}: a local file cannot be uploaded to the job's "
            f"pvc:// output ({output_uri}) from here: copy it into the claim (for example with "
            "`kubectl cp` to a pod that mounts it) and name its pvc:// URI instead",
        )
    if scheme not in UPLOAD_SCHEMES:
        raise CliError(
            EXIT_INVALID,
            f"{manifest}: {field}: {uri}: file:// is only readable in local mode (--local), and "
            f"the job's output ({output_uri}) is no object store to upload it to; put it where "
            "the cluster can read it (az://, s3://, gs:// or pvc://)",
        )


def upload_datasets(
    manifest: str,
    output_uri: str,
    datasets: Sequence[tuple[str, str]],
    report: Callable[[Upload], None] = lambda _: None,
) -> list[Upload]:
    """Copy each (field, file:// uri) of `datasets` under `output_uri` (see the module
    docstring); CliError naming the manifest, the field and the store when one cannot be."""
    check_uploadable(manifest, output_uri, datasets)
    fs = _filesystem(manifest, output_uri)
    done: list[Upload] = []
    for field, uri in datasets:
        source = local_path(uri)
        try:
            target = destination(output_uri, source, content_digest(source))
        except OSError as exc:
            raise CliError(EXIT_USAGE, f"{manifest}: {field}: {uri}: cannot read: {exc}") from exc
        sent = False
        try:
            size = source.stat().st_size
            if not _holds(fs, target, size):
                fs.put_file(str(source), target)
                sent = True
        except OSError as exc:  # fsspec's stores raise OSError subclasses (and PermissionError)
            raise CliError(
                EXIT_USAGE,
                f"{manifest}: {field}: cannot upload {source} to {target}: "
                f"{_reason(exc)}{_credentials_hint(output_uri)}",
            ) from exc
        except Exception as exc:  # the store's SDK errors (auth, network)
            raise CliError(
                EXIT_USAGE,
                f"{manifest}: {field}: cannot upload {source} to {target}: "
                f"{type(exc).__name__}: {_reason(exc)}{_credentials_hint(output_uri)}",
            ) from exc
        upload = Upload(field, source, target, sent)
        report(upload)
        done.append(upload)
    return done


def with_uploads(body: dict[str, Any], uploads: Sequence[Upload]) -> dict[str, Any]:
    """`body` (the manifest as parsed YAML) with each uploaded field pointing at its copy."""
    where = {u.field: u.uri for u in uploads}
    spec = body.get("spec") or {}
    for key in ("trainingFiles", "validationFiles"):
        for i, entry in enumerate(spec.get(key) or []):
            field = f"spec.{key}[{i}].uri"
            if field in where:
                entry["uri"] = where[field]
    return body


def _filesystem(manifest: str, output_uri: str) -> Any:
    scheme = urlparse(output_uri).scheme
    try:
        import fsspec

        # A fresh instance: fsspec caches them, with the credentials they were made with.
        fs, _ = fsspec.core.url_to_fs(output_uri, skip_instance_cache=True)
    except ImportError as exc:
        raise CliError(
            EXIT_USAGE,
            f"{manifest}: spec.output.uri: uploading to {scheme}:// needs "
            f"`pip install 'tramontane[{UPLOAD_SCHEMES[scheme]}]'` ({exc})",
        ) from exc
    except Exception as exc:  # a store's constructor refuses its settings
        raise CliError(
            EXIT_USAGE,
            f"{manifest}: spec.output.uri: {output_uri}: cannot open the store: "
            f"{type(exc).__name__}: {_reason(exc)}{_credentials_hint(output_uri)}",
        ) from exc
    return fs


def _holds(fs: Any, target: str, size: int) -> bool:
    try:
        info = fs.info(target)
    except FileNotFoundError:
        return False
    return int(info.get("size") or -1) == size


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _credentials_hint(output_uri: str) -> str:
    if urlparse(output_uri).scheme == "az":
        return (
            " (credentials: AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
            "`az login` or workload identity)"
        )
    return ""
