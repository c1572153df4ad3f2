"""The async Kubernetes client: one per cluster, the only place that talks HTTP to an API server.

Plain aiohttp (Kopf's own transport, so already in the operator's process) rather than the
`kubernetes` package, whose client is synchronous and would block the event loop for every call
to a slow member cluster. The surface is what a controller needs: get, list, watch, create,
merge-patch (optionally the status subresource), `replace` (PUT, optimistic on
`metadata.resourceVersion`), delete, `apply` (create-or-patch by deterministic name, writing
only when something differs), and the bounded tail of a pod's log.

Errors are mapped so callers decide by type: `NotFound` (404), `Conflict` (409), `Invalid`
(422, never retried), `ApiError` for the rest; 429/5xx are retried with exponential backoff;
a cluster that cannot be reached raises `Unreachable` after a short retry, without blocking
any other cluster's client.

Bearer tokens: a static token, a token file (re-read on every request: projected
service-account tokens rotate), or an exec credential plugin (`execauth.ExecCredentials`: the
plugin runs in a thread, its token is cached until shortly before it expires). A 401 answer to
a request sent with a plugin's token fetches a new token and retries that request once; a
plugin that fails raises `CredentialError` (an `Unreachable`: every caller that backs off from
an unreachable cluster backs off from this too) with the plugin's error, which names the
kubeconfig's source and field.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import aiohttp

from .config import ClusterConfig, KubeconfigError
from .execauth import ExecCredentials
from .patches import matches_labels, merge_patch_diff
from .resources import POD, ResourceRef

log = logging.getLogger(__name__)

ApplyOutcome = Literal["created", "patched", "unchanged"]


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, cluster: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{cluster}: HTTP {status} {reason}: {message}")
        self.cluster = cluster
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Invalid(ApiError):
    """422: the server rejected the object (schema, CEL rule); retrying cannot help."""


class Unreachable(Exception):
    """The cluster's API server did not answer (connection refused, timeout, DNS)."""

    def __init__(self, cluster: str, cause: str) -> None:
        super().__init__(f"{cluster}: unreachable: {cause}")
        self.cluster = cluster
        self.cause = cause


class CredentialError(Unreachable):
    """No token could be had: the exec credential plugin failed (`cause` says how, naming the
    kubeconfig's source and field)."""

    def __init__(self, cluster: str, cause: str) -> None:
        super().__init__(cluster, cause)
        self.args = (f"{cluster}: {cause}",)


_ERRORS: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 422: Invalid}
_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class KubeClient:
    """Async client for one cluster. Create inside a running event loop; `close()` when done."""

    def __init__(
        self,
        name: str,
        config: ClusterConfig,
        *,
        timeout_s: float = 10.0,
        attempts: int = 4,
        backoff_s: float = 0.1,
        max_connections: int = 32,
        user_agent: str = "tramontane",
    ) -> None:
        self.name = name
        self.config = config
        self.attempts = attempts
        self.backoff_s = backoff_s
        # Per socket, not in total: waiting for a free pooled connection under load is not
        # the server's fault and must not read as "unreachable".
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(timeout_s, 3.0), sock_read=timeout_s
        )
        self._ssl: ssl.SSLContext | bool = _ssl_context(config)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=self._ssl),
            headers={"Accept": "application/json", "User-Agent": user_agent},
        )
        static = config.token or config.token_path  # kubectl's order: a token wins over exec
        self.credentials = (
            ExecCredentials(config.exec) if config.exec is not None and not static else None
        )

    async def close(self) -> None:
        await self._session.close()

    async def bearer_token(self, stale: str | None = None) -> str | None:
        """The token to send now (the plugin's, run if needed; else the static one). With
        `stale` (a plugin's token the server rejected), a new one."""
        if self.credentials is None:
            return self.config.bearer_token()
        try:
            return await self.credentials.token(stale=stale)
        except KubeconfigError as exc:
            raise CredentialError(self.name, str(exc)) from None

    async def _headers(
        self, content_type: str | None = None, stale: str | None = None
    ) -> tuple[dict[str, str], str | None]:
        """The request's headers, and the token they carry."""
        headers = {}
        token = await self.bearer_token(stale)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers, token

    def _retry_401(self, status: int, token: str | None, refreshed: bool) -> bool:
        """Whether a 401 should be answered by one new plugin token and one more try."""
        return status == 401 and self.credentials is not None and not refreshed and bool(token)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        text_body: bool = False,
    ) -> Any:
        """One API call with retries on 429/5xx and on connection errors; the decoded JSON
        answer, or its text with `text_body` (a pod's log)."""
        url = self.config.server + path
        data = None if body is None else json.dumps(body)
        last: Exception | None = None
        stale: str | None = None  # a plugin token a 401 rejected: fetch a new one (once)
        refreshed = False
        attempt = 0
        while attempt < self.attempts:
            if attempt and stale is None:
                await asyncio.sleep(self.backoff_s * (2 ** (attempt - 1)))
            headers, token = await self._headers(content_type if data is not None else None, stale)
            stale = None
            attempt += 1
            try:
                async with self._session.request(
                    method,
                    url,
                    data=data,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                ) as resp:
                    text = await resp.text()
                    if resp.status < 400 and text_body:
                        return text
                    if resp.status < 400:
                        return json.loads(text) if text else None
                    error = _api_error(self.name, resp.status, text)
                    if self._retry_401(resp.status, token, refreshed):
                        log.info("%s: token rejected (401): running the plugin again", self.name)
                        stale, refreshed = token, True
                        attempt -= 1  # the retry with a new token is not a failed attempt
                        continue
                    if resp.status not in _RETRIED_STATUSES:
                        raise error
                    last = error
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                last = Unreachable(self.name, str(exc) or type(exc).__name__)
        if last is None:  # pragma: no cover - attempts >= 1
            raise RuntimeError("no attempt made")
        raise last

    async def get(
        self, ref: ResourceRef, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", ref.path(namespace, name))
        except NotFound:
            return None
        return result

    async def list(
        self,
        ref: ResourceRef,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Items (filtered by `labels` here too: not every server honours the selector)."""
        params = {"labelSelector": _selector(labels)} if labels else None
        result = await self.request("GET", ref.path(namespace), params=params)
        items = [i for i in result.get("items") or [] if matches_labels(i, labels)]
        return items, (result.get("metadata") or {}).get("resourceVersion")

    async def create(self, ref: ResourceRef, obj: Mapping[str, Any]) -> dict[str, Any]:
        namespace = obj.get("metadata", {}).get("namespace")
        result: dict[str, Any] = await self.request("POST", ref.path(namespace), body=obj)
        return result

    async def patch(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386: nested maps merge, lists replace, None removes), or,
        given a list of operations, a JSON patch (RFC 6902: e.g. append to a list)."""
        json_patch = isinstance(patch, Sequence)
        result: dict[str, Any] = await self.request(
            "PATCH",
            ref.path(namespace, name, subresource),
            body=patch,
            content_type=(
                "application/json-patch+json" if json_patch else "application/merge-patch+json"
            ),
        )
        return result

    async def replace(self, ref: ResourceRef, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object (by its `metadata.namespace` and `metadata.name`).

        With `metadata.resourceVersion` set (as read), the server refuses the write with a 409
        `Conflict` when the object changed since: optimistic concurrency, e.g. for a Lease that
        two replicas may both try to take. Without it the write is unconditional."""
        meta = obj.get("metadata") or {}
        result: dict[str, Any] = await self.request(
            "PUT", ref.path(meta.get("namespace"), meta["name"]), body=obj
        )
        return result

    async def delete(self, ref: ResourceRef, namespace: str | None, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            await self.request(
                "DELETE",
                ref.path(namespace, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                },
            )
        except NotFound:
            return False
        return True

    async def apply(
        self, ref: ResourceRef, desired: Mapping[str, Any], current: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any], ApplyOutcome]:
        """Create `desired`, or patch `current` towards it; writes nothing when they agree.

        `current` is what the caller last observed (None: believed absent). A 409 on create
        means someone (a previous run of the operator) created it meanwhile: re-read, patch.
        """
        meta = desired["metadata"]
        namespace, name = meta.get("namespace"), meta["name"]
        if current is None:
            try:
                return await self.create(ref, desired), "created"
            except Conflict:
                current = await self.get(ref, namespace, name)
                if current is None:
                    return await self.create(ref, desired), "created"
        patch = merge_patch_diff(current, desired)
        if patch is None:
            return dict(current), "unchanged"
        return await self.patch(ref, namespace, name, patch), "patched"

    async def _stream(
        self, path: str, params: Mapping[str, str], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        """A GET whose body the caller streams (a watch, a followed log); a 401 to a plugin's
        token is answered by one new token and one more try, as in `request`."""
        stale: str | None = None
        while True:
            headers, token = await self._headers(stale=stale)
            resp = await self._session.get(
                self.config.server + path, params=params, headers=headers, timeout=timeout
            )
            if not self._retry_401(resp.status, token, refreshed=stale is not None):
                return resp
            resp.release()
            stale = token

    async def watch(
        self,
        ref: ResourceRef,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        resource_version: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) until the server closes the stream."""
        params = {"watch": "true", "timeoutSeconds": str(timeout_s), "allowWatchBookmarks": "true"}
        if labels:
            params["labelSelector"] = _selector(labels)
        if resource_version:  # opaque: passed back as the server gave it
            params["resourceVersion"] = resource_version
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3.0, sock_read=timeout_s + 30)
        try:
            resp = await self._stream(ref.path(namespace), params, timeout)
            async with resp:
                if resp.status >= 400:
                    raise _api_error(self.name, resp.status, await resp.text())
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise _api_error(
                            self.name, int(status.get("code", 500)), json.dumps(status)
                        )
                    obj = event.get("object") or {}
                    if event.get("type") == "BOOKMARK" or matches_labels(obj, labels):
                        yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise Unreachable(self.name, str(exc) or type(exc).__name__) from exc

    async def pod_log(
        self, namespace: str, name: str, tail_lines: int, limit_bytes: int
    ) -> str | None:
        """The last `tail_lines` lines of the pod's (only) container log, at most `limit_bytes`
        of them (the server cuts the end); None when the pod is gone."""
        params = {"tailLines": str(tail_lines), "limitBytes": str(limit_bytes)}
        path = POD.path(namespace, name, "log")
        try:
            text: str = await self.request("GET", path, params=params, text_body=True)
        except NotFound:
            return None
        return text

    async def follow_pod_log(
        self, namespace: str, name: str, tail_lines: int
    ) -> AsyncIterator[str]:
        """The pod's log from its last `tail_lines` lines, then as it is written, in chunks of
        text, until the container ends (the kubelet closes the stream). `NotFound` when the
        pod does not exist."""
        params = {"follow": "true", "tailLines": str(tail_lines)}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3.0, sock_read=None)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            resp = await self._stream(POD.path(namespace, name, "log"), params, timeout)
            async with resp:
                if resp.status >= 400:
                    raise _api_error(self.name, resp.status, await resp.text())
                async for chunk in resp.content.iter_any():
                    text = decoder.decode(chunk)
                    if text:
                        yield text
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield tail
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise Unreachable(self.name, str(exc) or type(exc).__name__) from exc

    async def version(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/version")
        return result

    async def serves(self, ref: ResourceRef) -> bool:
        """Whether the API server serves `ref` (e.g. whether KubeRay's CRDs are installed)."""
        group_path = f"/apis/{ref.group}/{ref.version}" if ref.group else f"/api/{ref.version}"
        try:
            result = await self.request("GET", group_path)
        except NotFound:
            return False
        return any(r.get("name") == ref.plural for r in result.get("resources") or [])


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _api_error(cluster: str, status: int, text: str) -> ApiError:
    reason, message = "", text[:500]
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        reason = str(payload.get("reason") or "")
        message = str(payload.get("message") or message)[:500]
    return _ERRORS.get(status, ApiError)(cluster, status, reason, message)


def _ssl_context(config: ClusterConfig) -> ssl.SSLContext | bool:
    if not config.server.startswith("https"):
        return False
    if config.insecure:
        return False
    context = ssl.create_default_context(cafile=config.ca_path, cadata=config.ca_data)
    if config.client_cert_data and config.client_key_data:
        # ssl can only load a certificate chain from files: write them briefly, private to us.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
            for path, text in ((cert, config.client_cert_data), (key, config.client_key_data)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
            context.load_cert_chain(cert, key)
    return context
