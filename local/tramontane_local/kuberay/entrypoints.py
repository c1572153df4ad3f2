"""RayJob entrypoints run as local processes, as KubeRay's submitter would run them.

`python` in the entrypoint is this interpreter; the process gets the environment given (the
local Ray's `RAY_ADDRESS`), its stdout and stderr go to `<log_dir>/<name>-<run>.log` (run 0,
1, ... per RayJob: a resumed job is a new run), and its exit status is the job's outcome.
`kill` stops it (KubeRay deletes the Ray cluster of a suspended RayJob) without an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .status import FAILED, SUCCEEDED


class EntrypointRunner:
    """The entrypoint processes of RayJobs, one at a time per RayJob name."""

    def __init__(self, env: Mapping[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.env = dict(env or {})
        self.log_dir = log_dir
        self.outcomes: dict[str, str] = {}  # RayJob name -> SUCCEEDED / FAILED
        self.runs: dict[str, int] = {}  # RayJob name -> entrypoint starts
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._waiters: set[asyncio.Task[None]] = set()

    def running(self, name: str) -> bool:
        """Whether the RayJob's entrypoint process is running now."""
        return name in self._procs

    def log_path(self, name: str, run: int) -> Path | None:
        """Where run `run` (0, 1, ...) of RayJob `name` writes its output."""
        return None if self.log_dir is None else self.log_dir / f"{name}-{run}.log"

    async def spawn(self, name: str, entrypoint: str) -> None:
        """Start the entrypoint of RayJob `name` (`python` is this interpreter)."""
        argv = shlex.split(entrypoint)
        if not argv:
            self.outcomes[name] = FAILED
            return
        if argv[0] == "python":
            argv[0] = sys.executable
        path = self.log_path(name, self.runs.get(name, 0))
        out: IO[bytes] | int = asyncio.subprocess.DEVNULL
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            out = path.open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **self.env}
            )
        except OSError as exc:
            self.outcomes[name] = FAILED
            if path is not None:
                path.write_text(f"cannot start {argv[0]}: {exc}\n")
            return
        finally:
            if not isinstance(out, int):
                out.close()  # the child holds its own copy
        self._procs[name] = proc
        self.runs[name] = self.runs.get(name, 0) + 1
        task = asyncio.get_running_loop().create_task(self._wait(name, proc))
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    async def _wait(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._procs.get(name) is proc:  # not killed meanwhile
            del self._procs[name]
            self.outcomes[name] = SUCCEEDED if code == 0 else FAILED

    async def kill(self, name: str) -> None:
        """Kill the RayJob's running entrypoint, if any (no outcome is recorded)."""
        proc = self._procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def names(self) -> set[str]:
        """Every RayJob this runner ran or runs."""
        return set(self.runs) | set(self.outcomes)

    async def forget(self, name: str) -> None:
        """Kill the RayJob's entrypoint and forget its outcome (the RayJob was deleted; one
        created again under its name starts afresh)."""
        await self.kill(name)
        self.outcomes.pop(name, None)
        self.runs.pop(name, None)

    async def close(self) -> None:
        """Kill every running entrypoint."""
        for name in list(self._procs):
            await self.kill(name)
        waiters: list[Any] = list(self._waiters)
        await asyncio.gather(*waiters, return_exceptions=True)
