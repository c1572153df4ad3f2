"""The router's HTTP API as the tenant commands call it (`chat`, `usage`).

Where: `--router URL`, else `TRAMONTANE_ROUTER_URL`, else local mode's router (`--local`, from
`local_state`). The key: `--local --tenant NAME` takes that tenant's key from local mode, else
`TRAMONTANE_API_KEY`. HTTP is aiohttp, already the CLI's transport to Kubernetes
(`tramontane_kube`), so neither the `openai` nor the `mistralai` SDK is needed; server-sent
events are read line by line.

An error answer is one line, `router: HTTP 401 authentication_error: invalid API key`, exit 1
for a 4xx (the key, the model or the request is wrong, or a limit refused it) and 2 for a 5xx;
a router that cannot be reached is exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from tramontane_cli import local_state
from tramontane_cli.args import EXIT_INVALID, EXIT_USAGE, http_url
from tramontane_cli.errors import CliError

URL_ENV: Final = "TRAMONTANE_ROUTER_URL"
KEY_ENV: Final = "TRAMONTANE_API_KEY"


def add_router_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--router",
        type=http_url,
        metavar="URL",
        help=f"the router's HTTP address (default: ${URL_ENV}, or local mode's)",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="use local mode's router (and with --tenant its key); also TRAMONTANE_LOCAL=1",
    )
    parser.add_argument("--tenant", help="with --local: whose key to use")


@dataclass(frozen=True)
class RouterTarget:
    url: str
    key: str
    tenant: str | None  # the tenant named by --tenant, if any


def resolve(args: argparse.Namespace) -> RouterTarget:
    """The router and key the flags and the environment name; CliError (2) when missing."""
    local = local_state.local_requested(bool(args.local))
    state = local_state.read_state() if local else None
    url = args.router
    if not url and os.environ.get(URL_ENV):
        try:
            url = http_url(os.environ[URL_ENV])
        except argparse.ArgumentTypeError as exc:
            raise CliError(EXIT_USAGE, f"{URL_ENV}: {exc}") from None
    url = url or (state.http if state else "")
    if not url:
        raise CliError(
            EXIT_USAGE,
            f"--router: no router given: pass --router URL, set {URL_ENV}, or use --local",
        )
    if args.tenant and state is not None:
        return RouterTarget(url, state.key_of(args.tenant), args.tenant)
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        hint = "" if local else " (or --local --tenant NAME)"
        raise CliError(EXIT_USAGE, f"no API key: set {KEY_ENV}{hint}")
    return RouterTarget(url, key, args.tenant)


def _error_line(status: int, text: str) -> CliError:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message, kind = text.strip()[:300] or "(no body)", ""
    if isinstance(body, Mapping):
        inner = body.get("error")
        error: Mapping[str, Any] = inner if isinstance(inner, Mapping) else body
        message = str(error.get("message") or message)
        kind = str(error.get("type") or "")
    code = EXIT_INVALID if 400 <= status < 500 else EXIT_USAGE
    return CliError(code, f"router: HTTP {status}{' ' + kind if kind else ''}: {message}")


@asynccontextmanager
async def session(target: RouterTarget) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300)
    headers = {"Authorization": f"Bearer {target.key}", "User-Agent": "tramontane-cli"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as made:
        yield made


def _unreachable(target: RouterTarget, exc: Exception) -> CliError:
    return CliError(EXIT_USAGE, f"cannot reach the router at {target.url}: {exc or type(exc)}")


async def get_json(target: RouterTarget, path: str, params: Mapping[str, str]) -> Any:
    """GET `path`; the decoded answer, or CliError with the router's message."""
    try:
        async with session(target) as http, http.get(target.url + path, params=params) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise _error_line(resp.status, text)
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise _unreachable(target, exc) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, f"router: {path}: not JSON: {text[:200]!r}") from exc


async def post_json(target: RouterTarget, path: str, body: Any) -> Any:
    try:
        async with session(target) as http, http.post(target.url + path, json=body) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise _error_line(resp.status, text)
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise _unreachable(target, exc) from exc
    return json.loads(text)


async def stream_events(
    target: RouterTarget, path: str, body: Any
) -> AsyncIterator[dict[str, Any]]:
    """POST `path` and yield each server-sent event's JSON until `data: [DONE]`; an error
    event (sent when a stream fails after it began) raises CliError."""
    try:
        async with session(target) as http, http.post(target.url + path, json=body) as resp:
            if resp.status >= 400:
                raise _error_line(resp.status, await resp.text())
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if isinstance(event, dict) and event.get("object") == "error":
                    error = event.get("error") or event
                    raise _error_line(int(error.get("code") or 500), json.dumps(error))
                yield event
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
        raise _unreachable(target, exc) from exc
