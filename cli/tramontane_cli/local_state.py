"""What the tenant commands read of local mode (`tramontane local up`), in one place.

Local mode keeps its files under `$TRAMONTANE_HOME/local/` (default `~/.tramontane/local/`):

- `kubeconfig`: the local API server, used by every Kubernetes command given `--local`
  (or `TRAMONTANE_LOCAL=1`);
- `state.json`: `{"http": "http://127.0.0.1:PORT", "grpc": "127.0.0.1:PORT",
  "apiKeys": {"TENANT": "KEY", ...}}`, where `chat` and `usage` find the router and, with
  `--tenant`, the tenant's key (`http` may omit the scheme; `apiKeys` may also be a list of
  `{"tenant": ..., "key": ...}`);
- `logs/rayjobs/<name>-<run>.log`: each run of FineTuneJob `name` (its RayJob), the latest of
  which `finetune logs --local` prints.

Anything missing reads as "local mode is not running", with the command that starts it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tramontane_cli.args import EXIT_INVALID, EXIT_USAGE
from tramontane_cli.errors import CliError

HOME_ENV: Final = "TRAMONTANE_HOME"
LOCAL_ENV: Final = "TRAMONTANE_LOCAL"
NOT_RUNNING: Final = "local mode is not running: start it with tramontane local up"


def local_dir() -> Path:
    """`$TRAMONTANE_HOME/local`, by default `~/.tramontane/local`."""
    home = os.environ.get(HOME_ENV) or str(Path("~/.tramontane").expanduser())
    return Path(home) / "local"


def local_requested(flag: bool) -> bool:
    """`--local`, or `TRAMONTANE_LOCAL` set to 1/true/yes."""
    return flag or os.environ.get(LOCAL_ENV, "").strip().lower() in ("1", "true", "yes")


def kubeconfig_path() -> Path:
    """The local API server's kubeconfig; CliError when local mode has not written it."""
    path = local_dir() / "kubeconfig"
    if not path.is_file():
        raise CliError(EXIT_USAGE, f"{NOT_RUNNING} (no {path})")
    return path


def job_log_path(namespace: str, name: str) -> Path:
    """The log of FineTuneJob `name`'s latest run in local mode: local mode's KubeRay writes
    each run of a RayJob (named like its FineTuneJob) to `logs/rayjobs/<name>-<run>.log`
    (`tramontane_local.kuberay.entrypoints`); RayJobs are told apart by name there, so
    `namespace` does not take part. The path of run 0 when there is none yet."""
    runs = sorted(
        (int(p.stem.rsplit("-", 1)[1]), p)
        for p in (local_dir() / "logs" / "rayjobs").glob(f"{name}-*.log")
        if p.stem.rsplit("-", 1)[1].isdigit() and p.stem.rsplit("-", 1)[0] == name
    )
    return runs[-1][1] if runs else local_dir() / "logs" / "rayjobs" / f"{name}-0.log"


@dataclass(frozen=True)
class LocalState:
    """The running local mode's router addresses and tenants' keys."""

    http: str
    grpc: str | None
    api_keys: Mapping[str, str]

    def key_of(self, tenant: str) -> str:
        key = self.api_keys.get(tenant)
        if key is None:
            known = ", ".join(sorted(self.api_keys)) or "none"
            raise CliError(
                EXIT_INVALID, f"--tenant: local mode has no tenant {tenant!r} (tenants: {known})"
            )
        return key


def read_state() -> LocalState:
    """`state.json` of the running local mode; CliError when it is absent or unreadable."""
    path = local_dir() / "state.json"
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(EXIT_USAGE, f"{NOT_RUNNING} (no {path})") from None
    except (OSError, ValueError) as exc:
        raise CliError(EXIT_USAGE, f"{path}: cannot read local mode's state: {exc}") from exc
    http = data.get("http") if isinstance(data, dict) else None
    if not isinstance(http, str) or not http:
        raise CliError(EXIT_USAGE, f"{path}: http: missing; restart with tramontane local up")
    if "://" not in http:
        http = f"http://{http}"
    grpc = data.get("grpc")
    return LocalState(http.rstrip("/"), grpc if isinstance(grpc, str) else None, _keys(data))


def _keys(data: Mapping[str, Any]) -> dict[str, str]:
    keys = data.get("apiKeys") or {}
    if isinstance(keys, Mapping):
        return {str(t): str(k) for t, k in keys.items()}
    if isinstance(keys, list):
        return {
            str(item["tenant"]): str(item["key"])
            for item in keys
            if isinstance(item, Mapping) and "tenant" in item and "key" in item
        }
    return {}
