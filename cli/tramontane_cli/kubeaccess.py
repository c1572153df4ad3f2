"""Which Kubernetes API the tenant commands talk to, and how: the one path for cluster and
local mode.

`add_kube_flags` gives a command `-n/--namespace`, `--context`, `--kubeconfig` and `--local`;
`connect(args)` resolves them into a `Target`: the kubeconfig (`--kubeconfig`, else the first
file of `$KUBECONFIG`, else `~/.kube/config`; with `--local`, local mode's, see `local_state`),
the context (`--context` or its current-context), and the namespace (`-n`, else the context's,
else `default`). The connection is `tramontane_kube`'s async `KubeClient` over a
`ClusterConfig`, as the operator and the router use it: tokens and client certificates, inline
or in files, and exec credential plugins (`kubelogin get-token` on AKS with Entra ID, `aws eks
get-token`, `gke-gcloud-auth-plugin`), run as `tramontane_kube.execauth` describes: without a
terminal (use a login mode that needs none, e.g. kubelogin's `azurecli` after `az login`, or
`workloadidentity`; `interactiveMode: Always` is refused), the token cached while valid.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tramontane_cli import local_state
from tramontane_cli.args import EXIT_USAGE
from tramontane_cli.errors import CliError
from tramontane_kube import ClusterConfig, KubeClient, KubeconfigError


def add_kube_flags(parser: argparse.ArgumentParser, *, namespaced: bool = True) -> None:
    if namespaced:
        parser.add_argument(
            "-n", "--namespace", help="namespace (default: the manifest's or the context's)"
        )
    parser.add_argument("--context", help="kubeconfig context (default: its current-context)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="talk to local mode (tramontane local up); also TRAMONTANE_LOCAL=1",
    )


@dataclass(frozen=True)
class Target:
    """Where the commands talk: a kubeconfig, one of its contexts, a namespace."""

    kubeconfig: Path
    data: Mapping[str, Any]  # the kubeconfig, for other contexts (member clusters)
    context: str
    config: ClusterConfig
    namespace: str
    local: bool

    def member_config(self, cluster: str) -> ClusterConfig | None:
        """A context of this kubeconfig named like member cluster `cluster`, if any."""
        names = {c.get("name") for c in self.data.get("contexts") or [] if isinstance(c, Mapping)}
        if cluster not in names:
            return None
        return ClusterConfig.from_kubeconfig(
            self.data, cluster, files_from=self.kubeconfig.parent, source=str(self.kubeconfig)
        )


def _kubeconfig_path(args: argparse.Namespace, local: bool) -> Path:
    if local:
        if getattr(args, "kubeconfig", None):
            raise CliError(EXIT_USAGE, "--kubeconfig: not with --local (local mode has its own)")
        return local_state.kubeconfig_path()
    if getattr(args, "kubeconfig", None):
        return Path(args.kubeconfig).expanduser()
    env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return Path(env[0]).expanduser() if env else Path("~/.kube/config").expanduser()


def connect(args: argparse.Namespace) -> Target:
    """The target the flags name; CliError (exit 2) when the kubeconfig cannot be used."""
    local = local_state.local_requested(bool(getattr(args, "local", False)))
    path = _kubeconfig_path(args, local)
    flag = "--kubeconfig" if getattr(args, "kubeconfig", None) else "kubeconfig"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(EXIT_USAGE, f"{flag}: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(EXIT_USAGE, f"{flag}: {path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CliError(EXIT_USAGE, f"{flag}: {path}: invalid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise CliError(EXIT_USAGE, f"{flag}: {path}: not a kubeconfig (expected a mapping)")
    context = getattr(args, "context", None) or data.get("current-context") or ""
    try:
        config = ClusterConfig.from_kubeconfig(
            data, context or None, files_from=path.parent, source=str(path)
        )
    except KubeconfigError as exc:
        where = f"--context {context}" if getattr(args, "context", None) else str(path)
        message = str(exc)  # an exec block's errors start with the path already
        prefix = "" if message.startswith(f"{path}:") and where == str(path) else f"{where}: "
        raise CliError(EXIT_USAGE, f"{prefix}{message}") from exc
    namespace = getattr(args, "namespace", None) or config.default_namespace or "default"
    return Target(path, data, str(context), config, namespace, local)


@asynccontextmanager
async def client(target: Target) -> AsyncIterator[KubeClient]:
    """A client of the target's API server (one attempt per call after a short retry)."""
    made = KubeClient(
        target.context or "cluster",
        target.config,
        attempts=2,
        backoff_s=0.2,
        user_agent="tramontane-cli",
    )
    try:
        yield made
    finally:
        await made.close()
