"""Benchmark: per-tenant limits in the router, across replicas and under overload.

Everything runs in this one process (2 cores: three router processes plus a hub and a load
generator would measure the scheduler, not the limits): the hub emulator, real `Router`s over
`HubSource`s, `FakeWorker`s, gRPC clients. The limit window is short (`limits_window_s`, 4 s;
2 s with --quick) with 0.2 s exchange rounds and 1 s leases, so several windows fit a run; the
rules do not depend on the window's length. Figures:

- `budget_overrun_ratio`: three router replicas sharing acme's `tokensPerMinute` (600 a
  window) through the budget exchange, gRPC load skewed 80/15/5 at twice the limit (requests
  of 10 tokens reserved, 8 settled). Every admission is recorded at the limiters (their window
  entries, settled in place); the figure is the most any window-length interval holds over
  the whole run (from the first request, start-up included), over the limit. Target <= 1.05.
- `budget_use_ratio`: the same run, settled tokens admitted per window over the limit, mean
  over consecutive windows once the caps have converged (demand is twice the limit
  throughout). Target >= 0.9. `single_use_ratio`: the same figure for one router alone (no
  exchange, its cap is the limit) under the same load, in the same run: the baseline (what
  reservations settled below their worst case leave unused even without sharing).
- `victim_p99_ratio`: one router, one FakeWorker with a fixed service time (50 ms) and 2 slots
  (`DataPlaneSettings(slots_per_replica=2)`, 40 requests/s): a well-behaved tenant (globex,
  6 requests/s) alone, then while acme floods at 10x its rate (60/s, over the backend's
  capacity), alternated; the victim's p99 latency with the flood over its p99 without. Target
  <= 2.
- `limit_check_us`: router CPU (`time.process_time`) per admitted request in the limit
  checks: `RateLimiter.admit` (the prompt counted with the tokenizer, the sliding windows)
  plus the fair queue's acquire and release and the settle, in-process over many calls, for a
  tenant with tokens and requests per minute and a prompt of ~600 characters;
  `limit_check_unlimited_us` the same for a tenant without limits (the baseline), and
  `tokenize_us` the prompt counting alone.

    .venv/bin/python bench/router_limits.py --quick
    .venv/bin/python bench/router_limits.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "router"), str(REPO / "tests" / "operator")]

from fake_worker import FakeWorker  # noqa: E402
from replicas_harness import NAMES, Load, Platform, Recorder, skewed  # noqa: E402

from conftest import ACME_KEY, GLOBEX_KEY, platform, tenant  # noqa: E402
from tramontane_router.dataplane import DataPlaneSettings  # noqa: E402
from tramontane_router.limits.queues import ModelQueues  # noqa: E402
from tramontane_router.limits.rates import RateLimiter  # noqa: E402
from tramontane_router.limits.tokens import prompt_tokens  # noqa: E402
from tramontane_router.server import Router, RouterSettings  # noqa: E402
from tramontane_router.sources import StaticSource  # noqa: E402
from tramontane_router.table import table_from_objects  # noqa: E402
from tramontane_workers.contract import inference_pb2 as pb  # noqa: E402

LIMIT = 600


def rate(window_s: float) -> float:
    """Requests/s over the replicas: twice the limit (10 tokens reserved a request)."""
    return 2 * LIMIT / 10 / window_s


def windows_use(ledger: Any, start: float, end: float, window_s: float) -> list[float]:
    out, t = [], start
    while t + window_s <= end:
        out.append(ledger.admitted(t, t + window_s) / LIMIT)
        t += window_s
    return out


async def budget(window_s: float, windows: int) -> dict[str, Any]:
    p = await Platform.start(limit=LIMIT, window_s=window_s, interval_s=0.2, lease_s=1)
    try:
        loads = skewed(p, rate(window_s))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # converged: every replica holds a cap, most of it
            caps = p.caps()
            if min(caps.values()) > 0 and sum(caps.values()) >= 0.9 * LIMIT:
                break
            await asyncio.sleep(0.05)
        converged = time.monotonic()
        await asyncio.sleep(window_s)  # the shrinking replicas' windows slide down
        start = time.monotonic()
        await asyncio.sleep(windows * window_s)
        end = time.monotonic()
        for load in loads.values():
            await load.stop()
        use = windows_use(p.ledger, start, end, window_s)
        total = max(1e-9, p.ledger.admitted(start, end))
        shares = {n: round(p.ledger.admitted(start, end, n) / total, 3) for n in NAMES}
        return {
            "budget_overrun_ratio": round(p.ledger.worst_window(window_s) / LIMIT, 3),
            "budget_use_ratio": round(sum(use) / len(use), 3),
            "budget_use_min": round(min(use), 3),
            "converge_s": round(converged - min(e.at for _, e in p.ledger.entries), 2),
            "shares": shares,
            "refused": sum(load.refused for load in loads.values()),
            "failed": sum(load.failed for load in loads.values()),
        }
    finally:
        await p.close()


async def single(window_s: float, windows: int) -> dict[str, Any]:
    """The baseline: one router, its cap the whole limit, the same total load."""
    worker = await FakeWorker("west").start()
    objects = [o for o in platform(worker, worker, worker)
               if not (o["kind"] == "Tenant" and o["metadata"]["name"] == "acme")]  # fmt: skip
    objects.append(tenant("acme", ["acme-ml"], ["acme-key"], tokensPerMinute=LIMIT))
    router = Router(StaticSource(objects), RouterSettings(
        grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", drain_grace_s=1.0,
        stats_interval_s=0, limits_window_s=window_s))  # fmt: skip
    await router.start()
    try:
        from replicas_harness import Ledger

        ledger = Ledger()
        router.plane.limits = Recorder("one", router.limiter, ledger)
        load = Load(router, rate(window_s)).start()
        await asyncio.sleep(window_s)
        start = time.monotonic()
        await asyncio.sleep(windows * window_s)
        end = time.monotonic()
        await load.stop()
        use = windows_use(ledger, start, end, window_s)
        return {
            "single_use_ratio": round(sum(use) / len(use), 3),
            "single_overrun_ratio": round(ledger.worst_window(window_s) / LIMIT, 3),
        }
    finally:
        await router.drain()
        await worker.stop()


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(0.99 * len(xs)) - 1)]


async def victim(phase_s: float, rounds: int) -> dict[str, Any]:
    worker = await FakeWorker("shared", delay_s=0.05).start()
    router = Router(StaticSource(platform(worker, worker, worker)), RouterSettings(
        grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", drain_grace_s=1.0,
        stats_interval_s=0, dataplane=DataPlaneSettings(slots_per_replica=2)))  # fmt: skip
    await router.start()
    alone: list[float] = []
    flooded: list[float] = []
    flood_stats = {"ok": 0, "refused": 0, "failed": 0}
    try:
        for _ in range(rounds):  # interleaved: alone, flooded, alone, flooded, ...
            for with_flood, into in ((False, alone), (True, flooded)):
                flood = Load(router, 60.0, key=ACME_KEY).start() if with_flood else None
                if flood is not None:
                    await asyncio.sleep(1.0)  # the backend saturated, the queue filling
                polite = Load(router, 6.0, key=GLOBEX_KEY).start()
                await asyncio.sleep(phase_s)
                await polite.stop()
                into.extend(polite.latencies[1:])  # the first: channel set-up
                if flood is not None:
                    await flood.stop()
                    for k in flood_stats:
                        flood_stats[k] += getattr(flood, k)
                    await asyncio.sleep(1.0)  # drained before the next quiet phase
        return {
            "victim_p99_ratio": round(p99(flooded) / p99(alone), 2),
            "victim_p99_alone_ms": round(p99(alone) * 1000, 1),
            "victim_p99_flooded_ms": round(p99(flooded) * 1000, 1),
            "victim_requests": len(alone) + len(flooded),
            "flood": flood_stats,
        }
    finally:
        await router.drain()
        await worker.stop()


async def limit_check(calls: int) -> dict[str, Any]:
    table = table_from_objects(
        [o for o in platform(*[FakeWorker("w")] * 3)
         if not (o["kind"] == "Tenant" and o["metadata"]["name"] == "acme")]
        + [tenant("acme", ["acme-ml"], ["acme-key"], tokensPerMinute=10**12,
                  requestsPerMinute=10**9)]
    )  # fmt: skip
    text = ("Summarise the following support ticket in two sentences and suggest a reply. "
            * 8)[:600]  # fmt: skip
    request = pb.ChatRequest(model="tiny", max_tokens=128,
                             messages=[pb.Message(role="user", content=text)])  # fmt: skip
    usage = pb.Usage(prompt_tokens=150, completion_tokens=100, total_tokens=250)
    out: dict[str, Any] = {}
    await prompt_tokens(request)  # the tokenizer loaded
    for label, key in (
        ("limit_check_unlimited_us", GLOBEX_KEY),
        ("limit_check_us", ACME_KEY),
        ("limit_check_unlimited_us", GLOBEX_KEY),
        ("limit_check_us", ACME_KEY),
    ):
        view = table.tenant(key)
        assert view is not None
        route = table.resolve(view, "tiny")
        limiter, queues = RateLimiter(), ModelQueues()
        deadline = time.monotonic() + 3600
        cpu = time.process_time()
        for _ in range(calls):
            permit = await limiter.admit(view, route, request, deadline)
            slot = await queues.acquire(view, route, request, getattr(permit, "reserved", None),
                                        deadline)  # fmt: skip
            queues.release(slot, usage)
            permit.settle(usage)
        spent = (time.process_time() - cpu) / calls * 1e6
        out[label] = round(min(out.get(label, spent), spent), 1)  # the least disturbed run
    cpu = time.process_time()
    for _ in range(calls):
        await prompt_tokens(request)
    out["tokenize_us"] = round((time.process_time() - cpu) / calls * 1e6, 1)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    window_s = 2.0 if args.quick else 4.0
    windows = 3 if args.quick else 8
    figures: dict[str, Any] = {"bench": "router_limits", "window_s": window_s,
                               "windows": windows, "replicas": 3, "in_process": True}  # fmt: skip
    figures.update(await limit_check(2000 if args.quick else 20000))
    figures.update(await single(window_s, windows))
    figures.update(await budget(window_s, windows))
    figures.update(await victim(3.0 if args.quick else 8.0, 1 if args.quick else 3))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    result = asyncio.run(main(parser.parse_args()))
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
