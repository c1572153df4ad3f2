"""`tramontane router run` as a process: each bad flag value is one line naming the flag (exit
2, no traceback), and a real run over a manifests file serves, then drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
import yaml
from fake_worker import FakeWorker

from conftest import ACME_KEY, platform

CLI = [sys.executable, "-m", "tramontane_cli.main", "router", "run"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cli")
    contents = {
        "pem": "not a certificate\n",
        "bad_yaml": "kind: Tenant\n  metadata: [unclosed\n",
        "ok_yaml": yaml.safe_dump({"kind": "ConfigMap", "metadata": {"name": "x"}}),
        "bad_kubeconfig": "apiVersion: v1\nkind: Config\n",
        "a_file": "",
    }
    for name, text in contents.items():
        (d / name).write_text(text)
    return {name: str(d / name) for name in contents}


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# (flags, the flag the error names, a fragment of its message). {name} is a file from `files`,
# {busy} the busy port. Flags that pass are followed by a manifests file so only one is bad.
BAD_FLAGS: list[tuple[list[str], str, str]] = [
    (["--grpc-listen", "x"], "--grpc-listen", "expected HOST:PORT, got 'x'"),
    (["--grpc-listen", "127.0.0.1:"], "--grpc-listen", "expected HOST:PORT"),
    (["--http-listen", ":8080"], "--http-listen", "expected HOST:PORT, got ':8080'"),
    (["--http-listen", "127.0.0.1:99999"], "--http-listen", "0..65535"),
    (["--grpc-listen", "127.0.0.1:{busy}"], "--grpc-listen", "Address already in use"),
    (["--http-listen", "127.0.0.1:{busy}"], "--http-listen", "Address already in use"),
    (["--http-listen", "no.such.host.invalid:8080"], "--http-listen", "cannot listen on"),
    (["--metrics-port", "{busy}"], "--metrics-port", "Address already in use"),
    (["--metrics-port", "70000"], "--metrics-port", "0..65535, got '70000'"),
    (["--metrics-port", "nine"], "--metrics-port", "got 'nine'"),
    (["--max-body-bytes", "0"], "--max-body-bytes", "positive integer, got '0'"),
    (["--max-body-bytes", "4MB"], "--max-body-bytes", "positive integer, got '4MB'"),
    (["--drain-grace-seconds", "-1"], "--drain-grace-seconds", "got '-1'"),
    (["--drain-grace-seconds", "inf"], "--drain-grace-seconds", "got 'inf'"),
    (["--drain-grace-seconds", "soon"], "--drain-grace-seconds", "got 'soon'"),
    (["--log-level", "chatty"], "--log-level", "DEBUG, INFO, WARNING, ERROR, got 'chatty'"),
    (["--region", ""], "--region", "empty"),
    (["--tls-cert", "{pem}"], "--tls-cert", "give both or neither"),
    (["--tls-key", "{pem}"], "--tls-key", "give both or neither"),
    (["--tls-cert", "/nope.crt", "--tls-key", "{pem}"], "--tls-cert", "no such file"),
    (["--tls-cert", "{pem}", "--tls-key", "/nope.key"], "--tls-key", "no such file"),
    (["--tls-cert", "{pem}", "--tls-key", "{pem}"], "--tls-cert/--tls-key", "not a certificate"),
    (["--backend-ca", "/nope.pem"], "--backend-ca", "no such file"),
    (["--backend-ca", "{pem}"], "--backend-ca", "not a PEM CA bundle"),
    (["--usage-dir", "{a_file}/usage"], "--usage-dir", "cannot create"),
    (["--source", "/nope.yaml"], "--source", "no such file: '/nope.yaml'"),
    (["--source", "{bad_yaml}"], "--source", "not YAML manifests"),
    (["--source", "hub", "{ok_yaml}"], "--source", "either `hub` or manifest FILEs"),
    (["--source", "hub"], "--source hub", "pass --kubeconfig PATH"),
    (["--source", "hub", "--kubeconfig", "/nope"], "--kubeconfig", "no such file"),
    (["--source", "hub", "--kubeconfig", "{bad_kubeconfig}"], "--kubeconfig", "current-context"),
    (
        ["--source", "{ok_yaml}", "--kubeconfig", "{bad_kubeconfig}"],
        "--kubeconfig",
        "only with --source hub",
    ),
]


def _argv(flags: list[str], files: dict[str, str], busy: int) -> list[str]:
    argv = [f.format(busy=busy, **files) for f in flags]
    if "--source" not in argv:
        argv += ["--source", files["ok_yaml"]]
    for flag in ("--grpc-listen", "--http-listen", "--metrics-port"):
        if flag not in argv:  # never a default port: a case that wrongly passes must not clash
            argv += [flag, "127.0.0.1:0" if flag != "--metrics-port" else "0"]
    return argv


@pytest.fixture(scope="module")
def outcomes(files: dict[str, str], busy_port: int) -> dict[int, subprocess.CompletedProcess[str]]:
    """Every case run at once (each is a fresh interpreter)."""

    def one(flags: list[str]) -> subprocess.CompletedProcess[str]:
        argv = CLI + _argv(flags, files, busy_port)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=ENV)
        except subprocess.TimeoutExpired as exc:  # it started serving: a bad flag passed
            return subprocess.CompletedProcess(argv, -1, str(exc.stdout), str(exc.stderr))

    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(one, [flags for flags, _, _ in BAD_FLAGS]))
    return dict(enumerate(done))


@pytest.mark.parametrize("case", range(len(BAD_FLAGS)), ids=[" ".join(f) for f, _, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_naming_it_with_status_2(
    case: int, outcomes: dict[int, subprocess.CompletedProcess[str]]
) -> None:
    _, flag, fragment = BAD_FLAGS[case]
    result = outcomes[case]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"tramontane router run: {flag}"), lines[0]
    assert fragment in lines[0], lines[0]


def test_an_unknown_flag_is_refused_by_name_with_status_2(files: dict[str, str]) -> None:
    """Reported by the top-level parser (usage, then the error), as for every command."""
    result = subprocess.run([*CLI, "--bogus"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("unrecognized arguments: --bogus")
    assert "Traceback" not in result.stderr


def test_router_appears_in_the_top_level_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tramontane_cli.main", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "router" in result.stdout


async def _get(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url) as resp:
            return resp.status
    except aiohttp.ClientConnectionError:
        return None


async def test_a_run_serves_the_manifests_then_drains_on_sigterm(
    tmp_path: Path, workers: Callable[..., Awaitable[FakeWorker]]
) -> None:
    west = await workers("west", delay_s=1.5)
    north, globex = await workers("north", delay_s=1.5), await workers("globex")
    manifests = tmp_path / "platform.yaml"
    manifests.write_text(yaml.safe_dump_all(platform(west, north, globex)))
    grpc_port, http_port, grace = free_port(), free_port(), 4.0
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--source", str(manifests), "--grpc-listen", f"127.0.0.1:{grpc_port}",
        "--http-listen", f"127.0.0.1:{http_port}", "--metrics-port", "0",
        "--drain-grace-seconds", str(grace), "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while await _get(session, f"{base}/readyz") != 200:
                assert proc.returncode is None, await proc.stderr.read()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "router not ready within 30 s"
                await asyncio.sleep(0.1)

            async def chat() -> tuple[int, dict[str, object]]:
                async with session.post(
                    f"{base}/v1/chat/completions",
                    json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {ACME_KEY}"},
                ) as resp:
                    return resp.status, await resp.json()

            in_flight = asyncio.create_task(chat())
            await asyncio.sleep(0.3)  # the request has reached a (slow) worker
            assert len(west.calls) + len(north.calls) == 1
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)

            ready_after: list[int | None] = []
            while time.monotonic() - sent < 1.0:
                async with aiohttp.ClientSession() as fresh:  # a new connection each probe
                    ready_after.append(await _get(fresh, f"{base}/readyz"))
                if ready_after[-1] != 200:
                    break
                await asyncio.sleep(0.02)
            assert ready_after[-1] in (503, None), ready_after  # not ready, or not listening

            code, body = await in_flight  # the request in flight finished during the drain
            assert code == 200, body
            returncode = await asyncio.wait_for(proc.wait(), grace + 5)
            stopped = time.monotonic() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
    assert returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    print(f"readyz after SIGTERM: {ready_after}; exited after {stopped:.2f}s")
    assert stopped < grace, f"drained in {stopped:.2f}s, grace {grace}s"
    async with aiohttp.ClientSession() as session:
        assert await _get(session, f"{base}/readyz") is None  # the port is closed
