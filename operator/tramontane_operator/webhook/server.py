"""The webhook's HTTPS server: `/validate` (AdmissionReview v1) and `/readyz`, on every replica.

A small aiohttp application rather than Kopf's admission server: Kopf's needs `certbuilder`
and makes a self-signed CA per process, so two replicas would each present a certificate from
a different CA while the ValidatingWebhookConfiguration can trust one caBundle. Here every
replica serves the certificate of one shared Secret (`keeper.CertificateKeeper`), and reads
its facts from the hub caches every replica keeps (`handlers.indexes`): a standby answers
exactly as the leader would.

Bounded: a body over `MAX_BODY_BYTES` is refused with 413 before it is read whole (an
AdmissionReview holds at most two objects of the API server's 3 MiB limit). An unexpected
error is logged and answered 500 with one line, never a traceback. `/readyz` answers 200 once
the caches are synced and a certificate is loaded: the chart's readiness probe, so the
Service sends reviews only to replicas that can answer them.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from .checks import Facts
from .reviews import respond

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 2**20


def make_app(facts: Callable[[], Facts | None]) -> web.Application:
    """The application; `facts()` is None until the hub caches have synced."""

    async def validate(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
            status, payload = respond(body, facts())
        except web.HTTPException:
            raise  # 413 from the size bound, with aiohttp's own message
        except Exception as exc:  # never a traceback to the API server
            log.exception("webhook: answering a review failed")
            return web.Response(status=500, text=f"internal error: {type(exc).__name__}")
        if isinstance(payload, str):
            return web.Response(status=status, text=payload)
        return web.json_response(payload, status=status)

    async def ready(_: web.Request) -> web.StreamResponse:
        if facts() is None:
            return web.Response(status=503, text="hub caches not synced yet")
        return web.Response(text="ok")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/validate", validate)
    app.router.add_get("/readyz", ready)
    return app


class WebhookServer:
    """The application on `host:port` with TLS from `ssl_context` (reloaded in place)."""

    def __init__(
        self,
        facts: Callable[[], Facts | None],
        ssl_context: ssl.SSLContext,
        port: int,
        host: str = "0.0.0.0",
    ) -> None:
        self._runner = web.AppRunner(make_app(facts), access_log=None, shutdown_timeout=1.0)
        self._ssl, self._host, self.port = ssl_context, host, port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port, ssl_context=self._ssl)
        await site.start()
        if self.port == 0:  # tests: the port the OS chose
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else 0
        log.info("webhook: serving HTTPS on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
