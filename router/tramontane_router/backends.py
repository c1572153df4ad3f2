"""Connections to the workers: one grpc.aio channel per Serve ingress address, shared by every
application behind it, and a poller of the workers' `GetStats` for the balancer.

Channels use TLS when the ComputeCluster's ingress says so (the system roots, or `ca_file`);
gRPC's own retries are off because the data plane decides retries itself (once, elsewhere,
only before any token was sent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc

from .balancer import Balancer
from .periodic import Periodic
from .table import Endpoint

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class Backends:
    def __init__(self, *, ca_file: str | None = None) -> None:
        self._roots = Path(ca_file).read_bytes() if ca_file else None
        self._channels: dict[tuple[str, bool], grpc.aio.Channel] = {}
        self._stubs: dict[tuple[str, bool], pb_grpc.InferenceStub] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def stub(self, endpoint: Endpoint) -> pb_grpc.InferenceStub:
        key = (endpoint.address, endpoint.tls)
        stub = self._stubs.get(key)
        if stub is None:
            if endpoint.tls:
                creds = grpc.ssl_channel_credentials(root_certificates=self._roots)
                channel = grpc.aio.secure_channel(endpoint.address, creds, _CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(endpoint.address, _CHANNEL_OPTIONS)
            self._channels[key] = channel
            stub = self._stubs[key] = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        return stub

    async def retain(self, addresses: Iterable[tuple[str, bool]]) -> None:
        """Close channels to addresses no longer in the routing table, after a grace period
        long enough for calls already on them to finish."""
        keep = set(addresses)
        for key in [k for k in self._channels if k not in keep]:
            channel = self._channels.pop(key)
            self._stubs.pop(key, None)
            asyncio.get_running_loop().call_later(600, self._close_later, channel)

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.ensure_future(channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


class StatsPoller:
    """Every `interval_s`, asks each endpoint's application for its load (`GetStats`) and
    hands the answer to the balancer. Failures here only skip a reading: the request path
    alone decides ejection."""

    def __init__(
        self,
        backends: Backends,
        balancer: Balancer,
        endpoints: Callable[[], Iterable[Endpoint]],
        interval_s: float = 2.0,
    ) -> None:
        self.backends, self.balancer = backends, balancer
        self.endpoints = endpoints
        self.interval_s = interval_s
        self._loop = Periodic("stats", interval_s, self.poll_once)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def poll_once(self) -> None:
        unique = {e.key: e for e in self.endpoints()}
        await asyncio.gather(*(self._poll(e) for e in unique.values()))

    async def _poll(self, endpoint: Endpoint) -> None:
        try:
            stats = await self.backends.stub(endpoint).GetStats(
                pb.GetStatsRequest(),
                metadata=(("application", endpoint.application),),
                timeout=min(self.interval_s, 1.0),
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("stats of %s: %s", endpoint.cluster, exc.code())
            return
        self.balancer.report_stats(endpoint, stats.running_requests, stats.queue_depth)
