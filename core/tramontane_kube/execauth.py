"""Bearer tokens from a kubeconfig's `exec` credential plugin (`client.authentication.k8s.io`).

AKS with Entra ID (`kubelogin get-token --login workloadidentity ...`), EKS (`aws eks
get-token`) and GKE (`gke-gcloud-auth-plugin`) hand out short-lived tokens through a plugin
named in the kubeconfig's `users[].user.exec`. `ExecConfig.parse` checks that block;
`ExecCredentials` (one per `KubeClient`) runs the plugin and caches its token.

What runs, and with what: the plugin's `command` with its `args`, as a child process of the
operator (or router, or CLI), with the process's own environment plus the kubeconfig's `env`
entries (which win), plus `KUBERNETES_EXEC_INFO` (the ExecCredential request; with
`provideClusterInfo` it carries the cluster's server and CA). No shell is involved. A member
cluster's kubeconfig comes from a Secret, so whoever may write that Secret chooses a command the
operator runs with its own service account and environment: only platform admins should. The
plugin's stdin is closed and its stderr captured (quoted, shortened, in errors): it never gets
a terminal, so `interactiveMode: Always` is refused with an error naming the field. A plugin
that has not answered after `timeout_s` is killed.

The kubeconfig's exec block is read by the `kubernetes` package's `ExecProvider` (command,
args, env, apiVersion, provideClusterInfo and the cluster's exec extension become the argv,
environment and request exactly as its loader builds them); its `run` is replaced because it
has no timeout (a hung plugin would hold a thread and every waiting request forever), ties
interactivity to the process's stdout being a terminal, and does not check the answer's kind.

Refresh: the token is reused until shortly before its `status.expirationTimestamp` (the
smaller of `refresh_margin_s` and half its lifetime), then the plugin runs again; a token
without an expiry is kept until the API server answers 401, when the client asks for a new
one (`token(stale=...)`) and retries once. The plugin runs in a thread, off the event loop;
concurrent requests needing a token await one shared run (no lock is held across it). Any
failure (command not found, non-zero exit, timeout, output that is not an ExecCredential of
the configured apiVersion, no `status.token`) raises `KubeconfigError` whose message names the
kubeconfig's source and field, e.g. `Secret ops/aks: users[aks].user.exec: kubelogin exited
with status 1: ...`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from .errors import KubeconfigError

API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")
CLUSTER_EXTENSION = "client.authentication.k8s.io/exec"
STDERR_CHARS = 300


@dataclass(frozen=True)
class ExecConfig:
    """A checked `users[].user.exec` block (immutable: two parses of one kubeconfig compare
    equal, so a re-read Secret that did not change does not rebuild the client)."""

    where: str  # "<source>: users[<name>].user.exec", the prefix of every error
    block: str  # the exec block, JSON (what ExecProvider reads)
    cluster: str  # the cluster entry, JSON (for provideClusterInfo)
    cwd: str | None = None  # the kubeconfig's directory (a file's, not a Secret's)
    timeout_s: float = 60.0
    refresh_margin_s: float = 60.0

    @property
    def command(self) -> str:
        return str(json.loads(self.block)["command"])

    @classmethod
    def parse(
        cls,
        block: Any,
        cluster: Mapping[str, Any],
        *,
        source: str,
        user: str,
        cwd: str | None = None,
    ) -> ExecConfig:
        where = f"{source}: users[{user}].user.exec"
        if not isinstance(block, Mapping):
            raise KubeconfigError(f"{where}: expected a mapping")
        command = block.get("command")
        if not isinstance(command, str) or not command.strip():
            raise KubeconfigError(f"{where}.command is missing (the plugin to run)")
        version = block.get("apiVersion")
        if not version:
            raise KubeconfigError(
                f"{where}.apiVersion is missing (one of {', '.join(API_VERSIONS)})"
            )
        if version not in API_VERSIONS:
            raise KubeconfigError(
                f"{where}.apiVersion: {version!r} is not supported (one of "
                f"{', '.join(API_VERSIONS)})"
            )
        args = block.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise KubeconfigError(f"{where}.args: expected a list of strings")
        env = block.get("env") or []
        if not isinstance(env, list):
            raise KubeconfigError(f"{where}.env: expected a list of {{name, value}}")
        for i, item in enumerate(env):
            if not (
                isinstance(item, Mapping)
                and isinstance(item.get("name"), str)
                and item["name"]
                and isinstance(item.get("value"), str)
            ):
                raise KubeconfigError(f"{where}.env[{i}]: expected {{name: string, value: string}}")
        mode = block.get("interactiveMode", "IfAvailable")
        if mode not in INTERACTIVE_MODES:
            raise KubeconfigError(
                f"{where}.interactiveMode: {mode!r} is not one of {', '.join(INTERACTIVE_MODES)}"
            )
        if mode == "Always":
            raise KubeconfigError(
                f"{where}.interactiveMode: Always is not supported: the plugin runs without a "
                "terminal; use a non-interactive login (e.g. kubelogin --login workloadidentity "
                "or azurecli) with interactiveMode Never or IfAvailable"
            )
        config = cls(
            where=where,
            block=json.dumps(dict(block), sort_keys=True),
            cluster=json.dumps(dict(cluster), sort_keys=True, default=str),
            cwd=cwd,
        )
        config.provider()  # the library's own checks, so a bad block fails at parse time
        return config

    def provider(self) -> Plugin:
        """The `kubernetes` package's ExecProvider over this block."""
        from kubernetes.config.config_exception import ConfigException
        from kubernetes.config.kube_config import ConfigNode

        try:
            plugin: Plugin = _plugin_class()(
                ConfigNode("exec", json.loads(self.block)),  # type: ignore[no-untyped-call]
                self.cwd,
                ConfigNode("cluster", json.loads(self.cluster)),  # type: ignore[no-untyped-call]
            )
        except ConfigException as exc:
            raise KubeconfigError(f"{self.where}: {exc}") from exc
        plugin.install_hint = json.loads(self.block).get("installHint")
        return plugin


class Plugin(Protocol):
    install_hint: str | None

    def run_checked(self, where: str, timeout_s: float) -> tuple[str, datetime | None]: ...


@functools.cache
def _plugin_class() -> type[Any]:
    """`_Plugin`, made on first use: the `kubernetes` package is imported only for
    kubeconfigs that name a plugin (it takes a third of a second)."""
    from kubernetes.config.exec_provider import ExecProvider

    return type("_Plugin", (ExecProvider, _PluginRun), {})


class _PluginRun:
    """What `_Plugin` adds to kubernetes' ExecProvider: a non-interactive, time-bounded,
    checked `run`."""

    args: list[str]
    env: dict[str, str]
    api_version: str
    cwd: str | None
    cluster: Any
    install_hint: str | None = None  # the block's installHint, shown when the command is missing

    def request(self) -> dict[str, Any]:
        """The ExecCredential request, as the library builds it (never interactive)."""
        spec: dict[str, Any] = {"interactive": False}
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        if self.cluster:
            spec["cluster"] = dict(self.cluster.value)
            for extension in self.cluster.value.get("extensions") or []:
                if extension.get("name") == CLUSTER_EXTENSION:
                    spec["cluster"]["config"] = extension.get("extension")
                    break
        return info

    def run_checked(self, where: str, timeout_s: float) -> tuple[str, datetime | None]:
        """Run the plugin once: its token and expiry; KubeconfigError naming `where`."""
        from kubernetes.config.dateutil import parse_rfc3339

        command = self.args[0]
        env = dict(self.env)
        env["KUBERNETES_EXEC_INFO"] = json.dumps(self.request())
        try:
            done = subprocess.run(
                self.args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=self.cwd,
                env=env,
                timeout=timeout_s,
                check=False,
            )
        except FileNotFoundError:
            hint = " ".join((self.install_hint or "").split())
            raise KubeconfigError(
                f"{where}.command: {command!r} not found (is it installed and on PATH?)"
                + (f"; installHint: {hint}" if hint else "")
            ) from None
        except subprocess.TimeoutExpired:
            raise KubeconfigError(
                f"{where}: {command} did not answer within {timeout_s:g} s (killed)"
            ) from None
        except OSError as exc:
            raise KubeconfigError(
                f"{where}.command: cannot run {command!r}: {exc.strerror or exc}"
            ) from None
        if done.returncode != 0:
            stderr = _short(done.stderr)
            raise KubeconfigError(
                f"{where}: {command} exited with status {done.returncode}"
                + (f": {stderr}" if stderr else "")
            )
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            raise KubeconfigError(
                f"{where}: {command} printed no JSON ExecCredential on stdout "
                f"(got {_short(done.stdout)!r})"
            ) from None
        if not isinstance(answer, Mapping):
            raise KubeconfigError(f"{where}: {command} printed JSON that is not an object")
        if answer.get("kind") != "ExecCredential":
            raise KubeconfigError(
                f"{where}: {command} answered kind {answer.get('kind')!r}, not ExecCredential"
            )
        if answer.get("apiVersion") != self.api_version:
            raise KubeconfigError(
                f"{where}.apiVersion: {command} answered apiVersion "
                f"{answer.get('apiVersion')!r}, not the configured {self.api_version!r}"
            )
        status = answer.get("status")
        if not isinstance(status, Mapping):
            status = {}
        token = status.get("token")
        if not isinstance(token, str) or not token:
            cert = "clientCertificateData" in status
            raise KubeconfigError(
                f"{where}: {command}'s ExecCredential has no status.token"
                + (" (client certificates from a plugin are not supported)" if cert else "")
            )
        expiry = status.get("expirationTimestamp")
        if expiry is None:
            return token, None
        try:
            parsed: datetime = parse_rfc3339(str(expiry))  # type: ignore[no-untyped-call]
        except (ValueError, TypeError):
            raise KubeconfigError(
                f"{where}: {command}'s status.expirationTimestamp {expiry!r} is not RFC 3339"
            ) from None
        return token, parsed


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= STDERR_CHARS else "..." + text[-STDERR_CHARS:]


class ExecCredentials:
    """The cached token of one plugin, refreshed before expiry or when a 401 rejects it."""

    def __init__(self, config: ExecConfig, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.runs = 0  # plugin runs, for tests and logs
        self._clock = clock or (lambda: datetime.now(UTC))
        self._token: str | None = None
        self._expiry: datetime | None = None
        self._refresh_at: datetime | None = None
        self._running: asyncio.Future[str] | None = None

    @property
    def expiry(self) -> datetime | None:
        return self._expiry

    def _fresh(self) -> bool:
        return self._token is not None and (
            self._refresh_at is None or self._clock() < self._refresh_at
        )

    async def token(self, *, stale: str | None = None) -> str:
        """A token to send: the cached one while fresh; else (or when the cached one is
        `stale`, i.e. an API server rejected it) one new plugin run, shared by every caller
        that asks meanwhile."""
        cached = self._token
        if cached is not None and self._fresh() and cached != stale:
            return cached
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
            # Read its outcome even if every waiter was cancelled (no "never retrieved").
            self._running.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(self._running)

    async def _run(self) -> str:
        try:
            plugin = self.config.provider()
            self.runs += 1
            token, expiry = await asyncio.to_thread(
                plugin.run_checked, self.config.where, self.config.timeout_s
            )
            now = self._clock()
            self._token, self._expiry = token, expiry
            if expiry is None:
                self._refresh_at = None
            else:
                lifetime = max((expiry - now).total_seconds(), 0.0)
                margin = min(self.config.refresh_margin_s, lifetime / 2)
                self._refresh_at = expiry - timedelta(seconds=margin)
            return token
        finally:
            self._running = None
