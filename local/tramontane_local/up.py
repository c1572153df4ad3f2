"""`tramontane local up`, `status` and `down`: local mode's process and its state file.

`up` validates the files first (or renders the quickstart), starts the `LocalStack`, applies
the objects, writes `state.json`, and shows objects, phases, conditions and endpoints live
(with `rich`; log lines go to `logs/local.log`, not the terminal). With the quickstart it runs
the scenario (`scenario`). SIGINT/SIGTERM tear everything down. `status` reads `state.json`
and asks the API server; `down` signals the `up` process and checks that nothing is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from tramontane_kube import (
    EVALUATION,
    FINETUNEJOB,
    MODELDEPLOYMENT,
    TENANT,
    ClusterConfig,
    KubeClient,
)
from tramontane_kube.resources import COMPUTECLUSTER

from . import manifests as mf
from .observe import models, summary
from .stack import LocalPaths, LocalStack, ray_processes

KINDS = (("Tenant", TENANT), ("ComputeCluster", COMPUTECLUSTER),
         ("ModelDeployment", MODELDEPLOYMENT), ("FineTuneJob", FINETUNEJOB),
         ("Evaluation", EVALUATION))  # fmt: skip


class LocalError(Exception):
    """Something local mode cannot do, said in one message."""


def _log_to_file(paths: LocalPaths) -> None:
    paths.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(paths.logs / "local.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for chatty in ("aiohttp.access", "httpx", "httpx2"):  # a line per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # Ray Serve gives its driver-side logger a console handler when it is imported: its
    # lines go to the log file too, not between the steps on the console.
    import ray.serve  # noqa: F401  (imported for that side effect, then undone)

    serve_logger = logging.getLogger("ray.serve")
    for old in list(serve_logger.handlers):
        serve_logger.removeHandler(old)
    serve_logger.addHandler(handler)
    # `ray.init(configure_logging=False)` clears the "ray" logger's handlers and leaves it not
    # propagating, so its warnings (the token-auth notice; no SIGTERM handler off the main
    # thread) would reach stderr through Python's last-resort handler: send them to the root
    # logger, i.e. the file.
    logging.getLogger("ray").propagate = True
    # The tiny model's "Writing model shards" progress bar, here and in the processes started.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


async def snapshot(client: KubeClient) -> dict[str, Any]:
    """Objects (with phases and conditions) and models, as the API server has them now."""
    listed = {kind: (await client.list(ref))[0] for kind, ref in KINDS}
    return {
        "objects": [summary(kind, o) for kind, items in listed.items() for o in items],
        "models": models(listed["ModelDeployment"], listed["Tenant"]),
    }


def _table(snap: dict[str, Any], state: dict[str, Any]) -> Table:
    table = Table(title=f"tramontane local: router {state.get('http')} (HTTP), "
                  f"{state.get('grpc')} (gRPC)", expand=False)  # fmt: skip
    for column in ("kind", "name", "phase", "conditions"):
        table.add_column(column)
    for obj in snap["objects"]:
        conds = " ".join(
            f"{c['type']}={c['status']}" + (f" ({c['reason']})" if c["status"] != "True" else "")
            for c in obj["conditions"]
        )
        progress = obj.get("progress")
        phase = obj["phase"] + (f" {progress.get('percent', 0)}%" if progress else "")
        table.add_row(obj["kind"], obj["name"], phase, conds)
    return table


async def up(files: Sequence[Path], exit_when_done: bool, console: Console) -> int:
    """Run local mode; the process's exit status."""
    paths = LocalPaths.from_env()
    if paths.state.exists() and _alive(_read_state(paths).get("pid")):
        raise LocalError(f"local mode already runs (see {paths.state}); `tramontane local down`")
    api_key = ""
    if files:
        objects = mf.load_files(files)  # ManifestProblems before anything starts
    else:
        api_key = "tl-" + secrets.token_urlsafe(24)
        objects = mf.quickstart(paths.uri, api_key)
    _log_to_file(paths)
    stop = asyncio.Event()
    _on_signals(stop)
    stack = LocalStack(paths)
    started = time.monotonic()
    console.print(f"[bold]tramontane local[/]: starting Ray, the API server, KubeRay, the "
                  f"operator and the router (logs in {paths.logs}) ...")  # fmt: skip
    ok = True
    try:
        if not files:
            from .scenario import prepare

            await asyncio.to_thread(prepare, paths.root)
        await stack.start()
        _on_signals(stop)  # again: starting Ray's core worker replaced the SIGTERM handler
        stack.api_keys = {"quickstart": api_key} if api_key else _keys(objects)
        await stack.apply(objects)
        stack.write_state()
        state = stack.state()
        console.print(f"up in {time.monotonic() - started:.0f} s: router HTTP {state['http']}, "
                      f"gRPC {state['grpc']}; kubeconfig {state['kubeconfig']}")  # fmt: skip
        if stack.client is None:
            raise LocalError("the stack did not start")
        ok = await _watch(stack, state, api_key, files, exit_when_done, stop, console)
    finally:
        console.print("stopping: router, operator, Serve applications, API server, Ray ...")
        await stack.close()
    console.print(f"stopped after {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _watch(stack: LocalStack, state: dict[str, Any], api_key: str, files: Sequence[Path],
                 exit_when_done: bool, stop: asyncio.Event, console: Console) -> bool:  # fmt: skip
    from .scenario import run as run_scenario

    client = stack.client
    if client is None:
        return False
    results: list[tuple[str, bool, str]] = []
    scenario: asyncio.Task[bool] | None = None
    if not files:

        def report(step: str, ok: bool, result: str) -> None:
            results.append((step, ok, result))
            live.console.print(f"[{'green' if ok else 'red'}]{'✔' if ok else '✘'}[/] {step}: "
                               f"{result}")  # fmt: skip

        scenario = asyncio.create_task(run_scenario(stack, api_key, report))
    with Live(console=console, refresh_per_second=2, transient=True) as live:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                live.update(Group(_table(await snapshot(client), state)))
            if scenario is not None and scenario.done():
                if exit_when_done:
                    break
                if not results or results[-1][1]:
                    _how_to_call(live.console, state, api_key)
                scenario = None
            elif scenario is None and exit_when_done:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        if scenario is not None and not scenario.done():
            scenario.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scenario
            return False
    ok = all(r[1] for r in results) and (bool(results) or bool(files))
    if not files:
        console.print("[green]every step succeeded[/]" if ok else "[red]a step failed[/]")
    return ok


def _how_to_call(console: Console, state: dict[str, Any], api_key: str) -> None:
    http = state["http"]
    console.print(
        "\nLocal mode is up; Ctrl-C (or `tramontane local down`) stops it. Call it with:\n"
        f"  export TRAMONTANE_API_KEY={api_key}\n"
        f'  curl -s {http}/v1/chat/completions -H "Authorization: Bearer $TRAMONTANE_API_KEY"'
        " -H 'Content-Type: application/json' \\\n"
        '    -d \'{"model": "tiny-mistral:qa", "messages": [{"role": "user", '
        '"content": "Who wrote Hamlet?"}], "max_tokens": 8, "temperature": 0}\'\n'
        f'  tramontane chat --model tiny-mistral:qa "Who wrote Hamlet?"\n'
        f"  kubeconfig: {state['kubeconfig']}; state: `tramontane local status`\n"
    )


def _keys(objects: Sequence[mf.Manifest]) -> dict[str, str]:
    """Each Tenant's first API key, from the Secrets applied with it."""
    import base64

    secrets_by_ref = {}
    for m in objects:
        if m.kind == "Secret":
            meta = m.obj.get("metadata") or {}
            data = {k: base64.b64decode(str(v)).decode(errors="replace")
                    for k, v in (m.obj.get("data") or {}).items()}  # fmt: skip
            data.update({k: str(v) for k, v in (m.obj.get("stringData") or {}).items()})
            secrets_by_ref[(meta.get("namespace") or "default", meta.get("name"))] = data
    keys = {}
    for m in objects:
        if m.kind == "Tenant":
            for ref in (m.obj.get("spec") or {}).get("apiKeySecretRefs") or []:
                value = secrets_by_ref.get((ref["namespace"], ref["name"]), {}).get(
                    ref.get("key", "api-key")
                )
                if value:
                    keys[str(m.obj["metadata"]["name"])] = value
                    break
    return keys


def _read_state(paths: LocalPaths) -> dict[str, Any]:
    try:
        state = json.loads(paths.state.read_text())
    except FileNotFoundError:
        raise LocalError(f"local mode is not running ({paths.state} not found)") from None
    except (OSError, ValueError) as exc:
        raise LocalError(f"{paths.state}: unreadable: {exc}") from None
    if not isinstance(state, dict):
        raise LocalError(f"{paths.state}: not a JSON object")
    return state


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether `pid` exited and only waits for its parent to reap it (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


async def status() -> dict[str, Any]:
    """state.json plus what the API server holds now."""
    paths = LocalPaths.from_env()
    state = _read_state(paths)
    if not _alive(state.get("pid")):
        raise LocalError(f"local mode is not running (process {state.get('pid')} is gone)")
    client = KubeClient("local", ClusterConfig(server=str(state["apiServer"])), attempts=1)
    try:
        snap = await snapshot(client)
    except Exception as exc:
        raise LocalError(f"the local API server {state['apiServer']}: {exc}") from None
    finally:
        await client.close()
    keep = ("pid", "http", "grpc", "kubeconfig", "apiKeys", "apiServer", "logs")
    return {**{k: state.get(k) for k in keep}, **snap}


def print_status(data: dict[str, Any], console: Console) -> None:
    console.print(_table(data, data))
    for model in data["models"]:
        mark = "[green]ready[/]" if model["ready"] else "[yellow]not ready[/]"
        console.print(f"model {model['name']} (tenant {model['tenant']}): {mark}")


def down(timeout_s: float = 120.0) -> list[str]:
    """Stop the `up` process; what is left behind (empty: nothing)."""
    paths = LocalPaths.from_env()
    state = _read_state(paths)
    pid = state.get("pid")
    if isinstance(pid, int) and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = [f"the local mode process {pid}"] if _alive(pid) else []
    deadline = time.monotonic() + 30  # Ray's workers exit shortly after its raylet
    session = str(state.get("raySession") or "")
    while ray_processes(session) and time.monotonic() < deadline:
        time.sleep(0.5)
    left += [f"Ray process {p} (session {session})" for p in ray_processes(session)]
    for what, address in (("router HTTP", state.get("http")), ("router gRPC", state.get("grpc")),
                          ("API server", state.get("apiServer"))):  # fmt: skip
        if address and _listening(str(address)):
            left.append(f"{what} still answers on {address}")
    if not left:
        for written in (paths.state, paths.kubeconfig):
            with contextlib.suppress(FileNotFoundError):
                written.unlink()
    return left


def _listening(address: str) -> bool:
    import socket

    host_port = address.split("://")[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) == 0
