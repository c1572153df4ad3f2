"""The operator (`tramontane_operator.main.run`) in a thread of this process, with its own loop.

Kopf treats every task created after it starts as its own and cancels them all on exit, so
the operator gets an event loop of its own; the API server, the router and whoever started it
stay on theirs and talk to it over TCP, like a real deployment. Local mode runs the operator
so, and the operator tests start, stop, kill and restart it with it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class OperatorThread:
    """The operator in a thread of this process, with its own event loop.

    Kopf treats every task created after it starts as its own and cancels them all on exit,
    so it gets a loop of its own; the emulators and the test stay on the test's loop and talk
    to it over TCP, like a real deployment. `kill()` cancels it mid-flight, like a killed pod.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    async def start(self, ready_timeout_s: float = 20.0) -> None:
        self._ready.clear()
        self.error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)
        self._thread.start()
        ready = await asyncio.to_thread(self._ready.wait, ready_timeout_s)
        if self.error is not None:
            raise RuntimeError("the operator failed to start") from self.error
        if not ready:
            raise RuntimeError(f"the operator was not ready within {ready_timeout_s}s")

    def _main(self) -> None:
        if self._loop is None:  # start() makes it first
            return
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _run(self) -> None:
        import kopf

        from tramontane_operator.main import run

        kopf_settings = kopf.OperatorSettings()
        kopf_settings.watching.reconnect_backoff = 0.1
        kopf_settings.queueing.idle_timeout = 0.1
        kopf_settings.queueing.exit_timeout = 1.0
        self._stop, ready = asyncio.Event(), asyncio.Event()

        async def signal_ready() -> None:
            await ready.wait()
            self._ready.set()

        watcher = asyncio.create_task(signal_ready())
        self._task = asyncio.create_task(
            run(self.settings, stop_flag=self._stop, ready_flag=ready, kopf_settings=kopf_settings)
        )
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        finally:
            watcher.cancel()

    async def _finish(self, how: str) -> None:
        if self._thread is None or self._loop is None or self._loop.is_closed():
            return
        if how == "stop" and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        elif self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None

    async def stop(self) -> None:
        """Graceful stop (Kopf finishes the handlers in flight)."""
        await self._finish("stop")

    async def kill(self) -> None:
        """Abrupt stop: cancel everything mid-flight."""
        await self._finish("kill")
