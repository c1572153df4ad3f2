"""`GET /v1/usage` (a tenant's own tokens per model from the usage record) and the tenant CLI's
`chat` and `usage` against real routers over loopback with fake workers.

The CLI runs in-process (`tramontane_cli.main.main` in a thread: it drives its own event loop),
its output captured; keys come from `TRAMONTANE_API_KEY` or local mode's `state.json`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_worker import FakeWorker

from conftest import ACME_KEY, GLOBEX_KEY, platform, tenant
from tramontane_cli.main import main
from tramontane_router.server import Router

MakeWorker = Callable[..., Awaitable[FakeWorker]]
MakeRouter = Callable[..., Awaitable[Router]]


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `tramontane ARGV` in-process; (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(run_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_main(argv: list[str]) -> int:
    """`main`, with argparse's exit (bad flags) as the status it exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


async def started(workers: MakeWorker, routers: MakeRouter, **settings: Any) -> Router:
    west = await workers("west", adapters=("support",))
    gx = await workers("gx")
    return await routers(platform(west, west, gx), **settings)


def url(router: Router) -> str:
    return f"http://127.0.0.1:{router.http_port}"


async def call(router: Router, path: str, key: str | None, **params: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(url(router) + path, headers=headers, params=params) as resp,
    ):
        return resp.status, await resp.json()


async def chat(router: Router, key: str, model: str = "tiny") -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url(router) + "/v1/chat/completions", json=body,
                  headers={"Authorization": f"Bearer {key}"}) as resp,
    ):  # fmt: skip
        assert resp.status == 200, await resp.text()


# --------------------------------------------------------------------------- GET /v1/usage
async def test_usage_answers_the_calling_tenants_tokens_per_model(
    workers: MakeWorker, routers: MakeRouter, tmp_path: Path
) -> None:
    router = await started(workers, routers, usage_dir=str(tmp_path))
    await chat(router, ACME_KEY)
    await chat(router, ACME_KEY, "tiny:support")
    await chat(router, GLOBEX_KEY)
    # Another replica's file in the same directory counts too; an older day only without since.
    (tmp_path / "usage-other-2000-01-01.jsonl").write_text(json.dumps(
        {"minute": "2000-01-01T00:00:00Z", "replica": "other", "tenant": "acme", "model": "tiny",
         "adapter": None, "requests": 1, "promptTokens": 100, "completionTokens": 1}) + "\n")  # fmt: skip

    status, body = await call(router, "/v1/usage", ACME_KEY, since="2001-01-01")
    assert status == 200 and body["tenant"] == "acme" and body["since"] == "2001-01-01"
    rows = {(r["model"], r["adapter"]): r for r in body["data"]}
    assert set(rows) == {("tiny", None), ("tiny", "support")}  # none of globex's
    plain = rows[("tiny", None)]
    assert plain["requests"] == 1 and plain["completionTokens"] == 4
    assert plain["totalTokens"] == plain["promptTokens"] + 4

    _, everything = await call(router, "/v1/usage", ACME_KEY)
    assert {(r["model"], r["adapter"]): r["requests"] for r in everything["data"]}[("tiny", None)] == 2

    _, theirs = await call(router, "/v1/usage", GLOBEX_KEY)
    assert theirs["tenant"] == "globex" and [r["requests"] for r in theirs["data"]] == [1]


async def test_usage_refuses_without_a_key_a_bad_date_or_a_record(
    workers: MakeWorker, routers: MakeRouter, tmp_path: Path
) -> None:
    router = await started(workers, routers, usage_dir=str(tmp_path))
    status, body = await call(router, "/v1/usage", None)
    assert status == 401 and "missing API key" in body["message"]
    status, body = await call(router, "/v1/usage", "wrong-key-0123456789")
    assert status == 401 and body["message"] == "invalid API key"
    status, body = await call(router, "/v1/usage", ACME_KEY, since="yesterday")
    assert status == 422 and body["param"] == "since" and "YYYY-MM-DD" in body["message"]
    bare = await started(workers, routers)  # no --usage-dir: nothing to answer from
    status, body = await call(bare, "/v1/usage", ACME_KEY)
    assert status == 503 and "--usage-dir" in body["message"]


async def test_usage_reports_the_token_budget(
    workers: MakeWorker, routers: MakeRouter, tmp_path: Path
) -> None:
    west = await workers("west", adapters=("support",))
    objects = platform(west, west, west)
    objects[2] = tenant("acme", ["acme-ml"], ["acme-key"], tokensPerDay=100_000)
    router = await routers(objects, usage_dir=str(tmp_path))
    await chat(router, ACME_KEY)
    _, body = await call(router, "/v1/usage", ACME_KEY)
    budget = body["tokenBudget"]
    used = body["data"][0]["totalTokens"]
    assert budget["tokensToday"] == used and budget["remainingToday"] == 100_000 - used


# --------------------------------------------------------------------------- the CLI
async def test_cli_chat_streams_the_answer(
    workers: MakeWorker, routers: MakeRouter, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = await started(workers, routers)
    monkeypatch.setenv("TRAMONTANE_API_KEY", ACME_KEY)
    monkeypatch.setenv("TRAMONTANE_ROUTER_URL", url(router))
    code, out, err = await cli(capsys, "chat", "--model", "tiny", "hello there")
    assert code == 0, err
    assert out == "west|tiny|hello there w1 w2 w3\n"
    assert "4 completion tokens" in err

    code, out, err = await cli(capsys, "chat", "-m", "tiny:support", "hi", "-o", "json")
    answer = json.loads(out)
    assert code == 0 and answer["choices"][0]["message"]["content"].endswith("hi w1 w2 w3")


@pytest.mark.parametrize(
    ("argv", "key", "code", "message"),
    [
        (["-m", "tiny", "hi"], "wrong-key-0123456789", 1, "router: HTTP 401 authentication_error: invalid API key"),
        (["-m", "nope", "hi"], ACME_KEY, 1, "router: HTTP 404 not_found_error: model: "),
        (["-m", "tiny", "hi", "--max-tokens", "0"], ACME_KEY, 2, "--max-tokens: must be a positive integer"),
        (["-m", "tiny", "hi"], "", 2, "no API key: set TRAMONTANE_API_KEY (or --local --tenant NAME)"),
    ],
)
async def test_cli_chat_errors_are_one_clear_line(
    workers: MakeWorker, routers: MakeRouter, capsys: Any, monkeypatch: pytest.MonkeyPatch,
    argv: list[str], key: str, code: int, message: str,
) -> None:  # fmt: skip
    router = await started(workers, routers)
    monkeypatch.setenv("TRAMONTANE_API_KEY", key)
    got, out, err = await cli(capsys, "chat", "--router", url(router), *argv)
    assert got == code and out == ""
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or message.startswith("--")


async def test_cli_chat_without_a_reachable_router(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAMONTANE_API_KEY", ACME_KEY)
    code, _, err = await cli(capsys, "chat", "-m", "tiny", "hi", "--router", "http://127.0.0.1:9")
    assert code == 2 and err.startswith("cannot reach the router at http://127.0.0.1:9")
    monkeypatch.setenv("TRAMONTANE_ROUTER_URL", "localhost:8080")
    code, _, err = await cli(capsys, "chat", "-m", "tiny", "hi")
    assert code == 2 and err.startswith("TRAMONTANE_ROUTER_URL: must be an http:// or https:// URL")
    code, _, err = await cli(capsys, "chat", "-m", "tiny", "hi", "--router", "ftp://x")
    assert code == 2 and "--router: must be an http:// or https:// URL" in err


async def test_cli_usage_in_local_mode(
    workers: MakeWorker, routers: MakeRouter, tmp_path: Path, capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Local mode's state.json gives the router and, with --tenant, the key."""
    router = await started(workers, routers, usage_dir=str(tmp_path / "usage"))
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRAMONTANE_API_KEY", raising=False)
    monkeypatch.delenv("TRAMONTANE_ROUTER_URL", raising=False)
    code, _, err = await cli(capsys, "usage", "--local", "--tenant", "acme")
    assert code == 2 and err.strip() == (
        "local mode is not running: start it with tramontane local up "
        f"(no {tmp_path / 'home' / 'local' / 'state.json'})"
    )
    local = tmp_path / "home" / "local"
    local.mkdir(parents=True)
    (local / "state.json").write_text(json.dumps({
        "http": f"127.0.0.1:{router.http_port}", "grpc": f"127.0.0.1:{router.grpc_port}",
        "apiKeys": {"acme": ACME_KEY, "globex": GLOBEX_KEY}}))  # fmt: skip

    code, out, err = await cli(capsys, "chat", "--local", "--tenant", "acme", "-m", "tiny", "hello")
    assert code == 0 and out.startswith("west|tiny|hello"), err
    code, out, err = await cli(capsys, "usage", "--local", "--tenant", "acme")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "tenant acme, since the start of the record"
    assert lines[1].split() == ["MODEL", "ADAPTER", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
    assert lines[2].split()[:3] == ["tiny", "-", "1"]

    code, out, _ = await cli(capsys, "usage", "--local", "--tenant", "globex", "-o", "json",
                             "--since", "2001-01-01")  # fmt: skip
    assert code == 0 and json.loads(out) == {"object": "usage", "tenant": "globex",
                                             "since": "2001-01-01", "data": []}  # fmt: skip
    code, _, err = await cli(capsys, "usage", "--local", "--tenant", "initech")
    assert code == 1 and "--tenant: local mode has no tenant 'initech' (tenants: acme, globex)" in err

    # A key from the environment, checked against --tenant.
    monkeypatch.setenv("TRAMONTANE_API_KEY", GLOBEX_KEY)
    code, _, err = await cli(capsys, "usage", "--router", url(router), "--tenant", "acme")
    assert code == 1 and "the API key belongs to tenant 'globex', not 'acme'" in err
