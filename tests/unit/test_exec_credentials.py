"""Exec credential plugins (`tramontane_kube.execauth`): a fake plugin (a Python script that
prints an ExecCredential and counts its runs in a file) and a small aiohttp API server that
checks the bearer token, with the real `KubeClient` between them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tramontane_kube import (
    NAMESPACE,
    ApiError,
    ClusterConfig,
    CredentialError,
    KubeClient,
    KubeconfigError,
)
from tramontane_kube.execauth import ExecCredentials

V1 = "client.authentication.k8s.io/v1"

# Prints an ExecCredential whose token is `token-<run>`. Behaviour comes from the environment
# (the kubeconfig's `env` entries): COUNT (the run counter file), EXPIRY_S (a list, one per
# run: seconds until expiry, negative for an already expired token, "none" for no expiry),
# SLEEP_S, MODE (ok, fail, text, kind, version, notoken, badexpiry, hang).
PLUGIN = """\
import json, os, sys, time
from datetime import datetime, timedelta, timezone
count = os.environ["COUNT"]
runs = (int(open(count).read()) if os.path.exists(count) else 0) + 1
open(count, "w").write(str(runs))
with open(count + ".env", "a") as seen:
    seen.write(json.dumps({"argv": sys.argv[1:], **{k: os.environ.get(k) for k in
        ("KUBERNETES_EXEC_INFO", "FROM_KUBECONFIG", "FROM_PROCESS")}}) + "\\n")
time.sleep(float(os.environ.get("SLEEP_S", "0")))
mode = os.environ.get("MODE", "ok")
if mode == "fail":
    print("AADSTS700016: application not found in the directory", file=sys.stderr)
    sys.exit(3)
if mode == "text":
    print("please log in first")
    sys.exit(0)
if mode == "hang":
    time.sleep(60)
expiries = os.environ.get("EXPIRY_S", "3600").split(",")
expiry = expiries[min(runs, len(expiries)) - 1]
status = {"token": f"token-{runs}"}
if expiry != "none":
    at = datetime.now(timezone.utc) + timedelta(seconds=float(expiry))
    status["expirationTimestamp"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
if mode == "badexpiry":
    status["expirationTimestamp"] = "next tuesday"
if mode == "notoken":
    status = {"clientCertificateData": "x", "clientKeyData": "y"}
answer = {"apiVersion": os.environ.get("ANSWER_VERSION", "client.authentication.k8s.io/v1"),
          "kind": "ExecCredential", "status": status}
if mode == "kind":
    answer["kind"] = "Status"
if mode == "version":
    answer["apiVersion"] = "client.authentication.k8s.io/v1beta1"
print(json.dumps(answer))
"""


@dataclass
class Plugin:
    path: Path
    count: Path

    @property
    def runs(self) -> int:
        return int(self.count.read_text()) if self.count.exists() else 0

    def seen_env(self) -> list[dict[str, Any]]:
        lines = Path(f"{self.count}.env").read_text().splitlines()
        return [json.loads(line) for line in lines]


def make_plugin(directory: Path, name: str = "fake-kubelogin") -> Plugin:
    """The fake plugin, an executable script in `directory` (also used by tests/operator)."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{PLUGIN}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return Plugin(path, directory / f"{name}.runs")


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    return make_plugin(tmp_path)


def exec_block(
    plugin: Plugin, *, exec_extra: dict[str, Any] | None = None, **env: str
) -> dict[str, Any]:
    """A kubeconfig's users[].user.exec running `plugin` (its behaviour set by `env`)."""
    return {
        "apiVersion": V1,
        "command": str(plugin.path),
        "args": ["get-token", "--login", "workloadidentity"],
        "env": [{"name": "COUNT", "value": str(plugin.count)}]
        + [{"name": k, "value": v} for k, v in env.items()],
        "interactiveMode": "Never",
        **(exec_extra or {}),
    }


def kubeconfig(
    server: str, plugin: Plugin, *, exec_extra: dict[str, Any] | None = None, **env: str
) -> dict[str, Any]:
    block = exec_block(plugin, exec_extra=exec_extra, **env)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "aks",
        "clusters": [{"name": "aks", "cluster": {"server": server}}],
        "users": [{"name": "aks-user", "user": {"exec": block}}],
        "contexts": [{"name": "aks", "context": {"cluster": "aks", "user": "aks-user"}}],
    }


@dataclass
class Server:
    """An API server that accepts only the bearer tokens in `accepted` (all when None)."""

    url: str = ""
    accepted: set[str] | None = None
    seen: list[str] = field(default_factory=list)

    def refused(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        self.seen.append(header)
        token = header.removeprefix("Bearer ")
        if header.startswith("Bearer ") and (self.accepted is None or token in self.accepted):
            return None
        return web.json_response(
            {"kind": "Status", "reason": "Unauthorized", "message": "Unauthorized"}, status=401
        )

    async def version(self, request: web.Request) -> web.Response:
        return self.refused(request) or web.json_response({"gitVersion": "v1.31.2"})

    async def namespaces(self, request: web.Request) -> web.Response:
        """A watch that sends one event, then ends."""
        event = {"type": "ADDED", "object": {"metadata": {"name": "team-a"}}}
        return self.refused(request) or web.Response(text=json.dumps(event) + "\n")

    async def pod_log(self, request: web.Request) -> web.Response:
        return self.refused(request) or web.Response(text="step 1\nstep 2\n")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    app = web.Application()
    app.router.add_get("/version", state.version)
    app.router.add_get("/api/v1/namespaces", state.namespaces)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/log", state.pod_log)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[dict[str, Any]], KubeClient]]:
    made: list[KubeClient] = []

    def make(data: dict[str, Any]) -> KubeClient:
        config = ClusterConfig.from_kubeconfig(data, source="Secret ops/aks")
        client = KubeClient("aks", config, attempts=1)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def test_the_server_sees_the_plugins_token_reused_while_valid(
    server: Server, plugin: Plugin, connect: Callable[[dict[str, Any]], KubeClient]
) -> None:
    client = connect(kubeconfig(server.url, plugin))
    for _ in range(3):
        assert (await client.version())["gitVersion"] == "v1.31.2"
    assert server.seen == ["Bearer token-1"] * 3
    assert plugin.runs == 1


async def test_the_plugin_gets_the_kubeconfig_env_the_process_env_and_the_request(
    server: Server,
    plugin: Plugin,
    connect: Callable[[dict[str, Any]], KubeClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FROM_PROCESS", "process")
    monkeypatch.setenv("FROM_KUBECONFIG", "overridden")
    data = kubeconfig(
        server.url, plugin, exec_extra={"provideClusterInfo": True}, FROM_KUBECONFIG="kubeconfig"
    )
    await connect(data).version()
    (seen,) = plugin.seen_env()
    assert seen["FROM_PROCESS"] == "process" and seen["FROM_KUBECONFIG"] == "kubeconfig"
    assert seen["argv"] == ["get-token", "--login", "workloadidentity"]
    info = json.loads(seen["KUBERNETES_EXEC_INFO"])
    assert info["kind"] == "ExecCredential" and info["apiVersion"] == V1
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == server.url


async def test_an_expired_token_runs_the_plugin_again(
    server: Server, plugin: Plugin, connect: Callable[[dict[str, Any]], KubeClient]
) -> None:
    # The first token is already expired when it arrives; the second lasts an hour.
    client = connect(kubeconfig(server.url, plugin, EXPIRY_S="-10,3600"))
    await client.version()
    await client.version()
    await client.version()
    assert server.seen == ["Bearer token-1", "Bearer token-2", "Bearer token-2"]
    assert plugin.runs == 2


async def test_a_token_is_refreshed_shortly_before_its_expiry(plugin: Plugin) -> None:
    now = [datetime.now(UTC)]
    config = ClusterConfig.from_kubeconfig(kubeconfig("http://x", plugin, EXPIRY_S="600"))
    assert config.exec is not None
    credentials = ExecCredentials(config.exec, clock=lambda: now[0])
    assert await credentials.token() == "token-1"
    now[0] += timedelta(seconds=500)  # 100 s before expiry: still good (margin 60 s)
    assert await credentials.token() == "token-1"
    now[0] += timedelta(seconds=50)  # 50 s before expiry: refreshed ahead of it
    assert await credentials.token() == "token-2"
    assert plugin.runs == 2 and credentials.runs == 2


async def test_a_401_runs_the_plugin_once_and_retries(
    server: Server, plugin: Plugin, connect: Callable[[dict[str, Any]], KubeClient]
) -> None:
    client = connect(kubeconfig(server.url, plugin, EXPIRY_S="none"))
    server.accepted = {"token-2"}  # the first token was revoked
    assert (await client.version())["gitVersion"] == "v1.31.2"
    assert server.seen == ["Bearer token-1", "Bearer token-2"]
    assert plugin.runs == 2

    # A server that rejects every token: exactly one refresh, then the 401 is the answer.
    server.accepted, server.seen = set(), []
    with pytest.raises(ApiError) as caught:
        await client.version()
    assert caught.value.status == 401
    assert server.seen == ["Bearer token-2", "Bearer token-3"]
    assert plugin.runs == 3


async def test_a_401_to_a_watch_or_a_followed_log_runs_the_plugin_once(
    server: Server, plugin: Plugin, connect: Callable[[dict[str, Any]], KubeClient]
) -> None:
    client = connect(kubeconfig(server.url, plugin, EXPIRY_S="none"))
    server.accepted = {"token-2"}
    events = [e async for e in client.watch(NAMESPACE)]
    assert [e["object"]["metadata"]["name"] for e in events] == ["team-a"]
    assert server.seen == ["Bearer token-1", "Bearer token-2"]
    server.accepted, server.seen = {"token-3"}, []
    log = "".join([c async for c in client.follow_pod_log("team-a", "submitter", 10)])
    assert log == "step 1\nstep 2\n"
    assert server.seen == ["Bearer token-2", "Bearer token-3"]
    # Rejected again after the one refresh: the 401 is the answer.
    server.accepted, server.seen = set(), []
    with pytest.raises(ApiError) as caught:
        [e async for e in client.watch(NAMESPACE)]
    assert caught.value.status == 401 and len(server.seen) == 2
    assert plugin.runs == 4


async def test_concurrent_requests_share_one_plugin_run(
    server: Server, plugin: Plugin, connect: Callable[[dict[str, Any]], KubeClient]
) -> None:
    client = connect(kubeconfig(server.url, plugin, SLEEP_S="0.5"))
    answers = await asyncio.gather(*(client.version() for _ in range(8)))
    assert len(answers) == 8
    assert plugin.runs == 1
    assert server.seen == ["Bearer token-1"] * 8

    # Concurrent 401s for one revoked token: one refresh between them.
    server.accepted, server.seen = {"token-2"}, []
    await asyncio.gather(*(client.version() for _ in range(8)))
    assert plugin.runs == 2
    assert server.seen.count("Bearer token-2") == 8


async def test_the_event_loop_runs_while_the_plugin_does(
    server: Server, plugin: Plugin, connect: Callable[[dict[str, Any]], KubeClient]
) -> None:
    client = connect(kubeconfig(server.url, plugin, SLEEP_S="0.5"))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await client.version()
    ticker.cancel()
    assert ticks >= 10  # the loop was not blocked for the plugin's 0.5 s


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MODE": "fail"},
            r"Secret ops/aks: users\[aks-user\]\.user\.exec: \S*fake-kubelogin exited with status 3: "
            r"AADSTS700016: application not found",
        ),
        (
            {"MODE": "text"},
            r"users\[aks-user\]\.user\.exec: \S+ printed no JSON ExecCredential on stdout "
            r"\(got 'please log in first'\)",
        ),
        (
            {"MODE": "kind"},
            r"users\[aks-user\]\.user\.exec: \S+ answered kind 'Status', not ExecCredential",
        ),
        (
            {"MODE": "version"},
            r"users\[aks-user\]\.user\.exec\.apiVersion: \S+ answered apiVersion "
            r"'client\.authentication\.k8s\.io/v1beta1', not the configured "
            r"'client\.authentication\.k8s\.io/v1'",
        ),
        (
            {"MODE": "notoken"},
            r"has no status\.token \(client certificates from a plugin are not supported\)",
        ),
        ({"MODE": "badexpiry"}, r"status\.expirationTimestamp 'next tuesday' is not RFC 3339"),
    ],
)
async def test_a_plugin_that_fails_names_the_secret_and_the_field(
    server: Server,
    plugin: Plugin,
    connect: Callable[[dict[str, Any]], KubeClient],
    env: dict[str, str],
    message: str,
) -> None:
    client = connect(kubeconfig(server.url, plugin, **env))
    with pytest.raises(CredentialError, match=message) as caught:
        await client.version()
    assert caught.value.cause.startswith("Secret ops/aks: users[aks-user].user.exec")
    assert str(caught.value).startswith("aks: Secret ops/aks:")
    assert server.seen == []  # nothing was sent without a token


async def test_a_missing_or_hanging_command(
    server: Server, plugin: Plugin, connect: Callable[[dict[str, Any]], KubeClient]
) -> None:
    hint = "kubelogin is not installed.\n  See https://azure.github.io/kubelogin/ to install it."
    missing = kubeconfig(
        server.url,
        plugin,
        exec_extra={"command": "kubelogin-not-installed", "installHint": hint},
    )
    with pytest.raises(
        CredentialError,
        match=r"exec\.command: 'kubelogin-not-installed' not found \(is it installed and on "
        r"PATH\?\); installHint: kubelogin is not installed\. See https://azure",
    ):
        await connect(missing).version()

    config = ClusterConfig.from_kubeconfig(kubeconfig(server.url, plugin, MODE="hang"))
    assert config.exec is not None
    credentials = ExecCredentials(dataclasses.replace(config.exec, timeout_s=0.5))
    with pytest.raises(KubeconfigError, match=r"did not answer within 0\.5 s \(killed\)"):
        await credentials.token()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": None}, r"exec\.command is missing"),
        ({"command": ""}, r"exec\.command is missing"),
        ({"apiVersion": None}, r"exec\.apiVersion is missing"),
        (
            {"apiVersion": "client.authentication.k8s.io/v1alpha1"},
            r"exec\.apiVersion: 'client\.authentication\.k8s\.io/v1alpha1' is not supported",
        ),
        (
            {"interactiveMode": "Always"},
            r"exec\.interactiveMode: Always is not supported: the plugin runs without a terminal",
        ),
        ({"interactiveMode": "Sometimes"}, r"exec\.interactiveMode: 'Sometimes' is not one of"),
        ({"args": "get-token"}, r"exec\.args: expected a list of strings"),
        ({"env": [{"name": "A"}]}, r"exec\.env\[0\]: expected \{name: string, value: string\}"),
        ({"env": {"A": "b"}}, r"exec\.env: expected a list"),
    ],
)
def test_a_bad_exec_block_is_refused_naming_the_field(
    plugin: Plugin, change: dict[str, Any], message: str
) -> None:
    data = kubeconfig("https://aks.example.com", plugin)
    block = data["users"][0]["user"]["exec"]
    for key, value in change.items():
        if value is None:
            block.pop(key)
        else:
            block[key] = value
    with pytest.raises(
        KubeconfigError, match=r"^Secret ops/aks: users\[aks-user\]\.user\." + message
    ):
        ClusterConfig.from_kubeconfig(data, source="Secret ops/aks")
    assert plugin.runs == 0  # refused before anything ran


def test_same_kubeconfig_same_config(plugin: Plugin) -> None:
    """A re-read Secret that did not change must not rebuild the member's client."""
    data = kubeconfig("https://aks.example.com", plugin)
    assert ClusterConfig.from_kubeconfig(data) == ClusterConfig.from_kubeconfig(data)
    assert os.fspath(plugin.path) == ClusterConfig.from_kubeconfig(data).exec.command  # type: ignore[union-attr]


async def test_kopf_logs_in_to_a_hub_with_the_plugins_token_and_expiry(
    server: Server, plugin: Plugin, connect: Callable[[dict[str, Any]], KubeClient]
) -> None:
    import kopf

    from tramontane_operator.main import HubLogin

    client = connect(kubeconfig(server.url, plugin, EXPIRY_S="1800"))
    login = HubLogin()
    info = await login(client)
    assert (info.token, info.scheme) == ("token-1", "Bearer")
    assert client.credentials is not None and info.expiration == client.credentials.expiry
    assert info.expiration is not None
    assert 1700 < (info.expiration - datetime.now(UTC)).total_seconds() <= 1800
    # Kopf logs in again (its token was rejected or expired): a new token, one more run.
    assert (await login(client)).token == "token-2"
    assert plugin.runs == 2
    # Our own client refreshed meanwhile (a 401 of its own): Kopf gets that token, no run.
    server.accepted = {"token-3"}
    await client.version()
    assert plugin.runs == 3 and (await login(client)).token == "token-3"
    assert plugin.runs == 3

    broken = connect(kubeconfig(server.url, plugin, MODE="fail"))
    with pytest.raises(kopf.LoginError, match=r"users\[aks-user\]\.user\.exec: .* status 3"):
        await HubLogin()(broken)
