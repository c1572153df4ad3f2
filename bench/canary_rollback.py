"""Benchmark: how fast a failing canary adapter version stops getting traffic, and what it costs
the clients.

Everything in this one process: real routers, real gRPC `FakeWorker`s, and for the end-to-end
figures the real operator against the hub emulator (`tests/operator/canary_stack.py`). The
canary is acme's adapter `support` at its first step (10 %), judged with the default analysis
(`minRequests` 20, `maxErrorRate` 5 %); it serves well for a while, then every request on it
fails (INTERNAL) on every worker. Figures:

- `rollback_s`: one router, two workers, 100 requests/s (50 with --quick) of `tiny:support`:
  the time from the first request the canary failed to the router's last attempt on it (from
  then on it has 0 % of the traffic), the max over `runs` runs. Target <= 10 s.
  `failed_requests`: client requests that failed over all those runs (target 0: each failed
  canary attempt is retried on the stable version).
- `operator_rollback_s`: the same through the whole stack (router and operator on the hub):
  first canary failure -> the ModelDeployment's status has the canary `RolledBack` at 0 % (the
  router's verdict in its Lease, 0.5 s rounds, and the operator's pass every second during a
  canary); `router_veto_s` when the router itself stopped routing to it, in that run.
  `operator_only_rollback_s`: the same with the router's own verdict turned off (the
  baseline: the operator judging the routers' figures alone), and
  `operator_only_canary_requests` what the canary was still sent meanwhile (each failed, and
  was retried on the stable); `router_canary_requests` the same with the router's verdict.

    .venv/bin/python bench/canary_rollback.py --quick
    .venv/bin/python bench/canary_rollback.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "router"), str(REPO / "tests" / "operator")]

import grpc  # noqa: E402
from canary_harness import RollbackRun, rollback_run, versioned, worker_kw  # noqa: E402
from fake_worker import FakeWorker  # noqa: E402

from canary_stack import V1_URI, V2, V2_URI, Load, Stack  # noqa: E402
from tramontane_router.server import Router, RouterSettings  # noqa: E402
from tramontane_router.sources import StaticSource  # noqa: E402

DEFAULT_ANALYSIS = {"min_requests": 20, "max_error_rate": 0.05}


async def router_rollback(rate: float, healthy_s: float, runs: int) -> dict[str, Any]:
    worst, failed, after = 0.0, 0, 0
    for _ in range(runs):
        run = await _router_run(rate, healthy_s)
        worst = max(worst, run.rollback_s)
        failed += len(run.failed)
        after += run.canary_calls_after_veto
    fresh = await _router_run(rate, 0.0)
    return {"rollback_s": round(worst, 3), "failed_requests": failed + len(fresh.failed),
            "runs": runs, "rate_per_s": rate, "canary_calls_after_veto": after,
            "rollback_fresh_s": round(fresh.rollback_s, 3)}  # fmt: skip


async def _router_run(rate: float, healthy_s: float) -> RollbackRun:
    west = await FakeWorker("west", **worker_kw()).start()
    north = await FakeWorker("north", **worker_kw()).start()
    objects = versioned({"west": west.address, "north": north.address}, 10,
                        **DEFAULT_ANALYSIS)  # fmt: skip
    router = Router(StaticSource(objects), RouterSettings(
        grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", drain_grace_s=1.0,
        stats_interval_s=0))  # fmt: skip
    await router.start()
    try:
        return await rollback_run(router, [west, north], rate=rate, healthy_s=healthy_s,
                                  observe_s=2.0)  # fmt: skip
    finally:
        await router.drain()
        await west.stop()
        await north.stop()


async def operator_rollback(rate: float, healthy_s: float, local_verdict: bool) -> dict[str, Any]:
    rollout = {"steps": [{"weight": 10, "holdSeconds": 600}],
               "analysis": {"minRequests": 20, "maxErrorRate": 0.05}}  # fmt: skip
    stack = await Stack.start(rollout)
    try:
        if not local_verdict:  # the baseline: no verdict of the router's own
            stack.router.plane.canaries.check = lambda: None  # type: ignore[method-assign]
        await stack.create(V1_URI)
        await _until(lambda: bool(stack.versions()) and stack.routable())
        await stack.set_adapter(uri=V2_URI)
        await _until(lambda: stack.versions().get(V2) == ("Canary", 10))
        await asyncio.sleep(1.0)  # the router takes the table with the canary
        load = Load(stack.router, rate)
        await asyncio.sleep(healthy_s)
        stack.worker.failing[f"support@{V2}"] = grpc.StatusCode.INTERNAL
        await _until(lambda: bool(stack.worker.failed_at), 30)
        await _until(lambda: stack.versions().get(V2) == ("RolledBack", 0), 60)
        rolled_back = time.monotonic()
        await load.stop()
        failures = stack.worker.failed_at
        vetoed = list(stack.router.plane.canaries.vetoed_at.values())
        return {
            "seconds": round(rolled_back - failures[0], 3),
            "veto_s": round(vetoed[0] - failures[0], 3) if vetoed else None,
            "canary_requests": len(failures),
            "failed": len(load.failed),
        }
    finally:
        await stack.close()


async def _until(check: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("condition not met in time")
        await asyncio.sleep(0.02)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rate = 50.0 if args.quick else 100.0
    healthy_s = 4.0 if args.quick else 5.0  # the window holds over minRequests on the canary
    figures: dict[str, Any] = {"bench": "canary_rollback", "in_process": True}
    figures.update(await router_rollback(rate, healthy_s, 1 if args.quick else 3))
    with_router = await operator_rollback(rate, healthy_s, local_verdict=True)
    alone = await operator_rollback(rate, healthy_s, local_verdict=False)
    figures.update({
        "operator_rollback_s": with_router["seconds"],
        "router_veto_s": with_router["veto_s"],
        "router_canary_requests": with_router["canary_requests"],
        "operator_only_rollback_s": alone["seconds"],
        "operator_only_canary_requests": alone["canary_requests"],
        "failed_requests_e2e": with_router["failed"] + alone["failed"],
    })  # fmt: skip
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    result = asyncio.run(main(parser.parse_args()))
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
