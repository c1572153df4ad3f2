"""`Periodic`: a step run every `interval_s` in a background task, for the router's loops that
are not in the request path (workers' stats, the usage record, long budgets, budget status).
A step that raises is logged and the loop goes on: a background loop never dies silently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[object]]):
        self.name, self.interval_s, self.step = name, interval_s, step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop (once; an interval of 0 or less never starts it)."""
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name=f"router:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.step()
            except Exception:
                log.exception("%s: this round failed; trying again in %.0fs", self.name,
                              self.interval_s)  # fmt: skip
