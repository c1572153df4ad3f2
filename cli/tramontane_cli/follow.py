"""Following a FineTuneJob until it ends: a progress bar on a terminal, lines otherwise.

`follow(api, namespace, name)` polls the job every `interval_s` and shows its phase, step out of
total steps, training loss, ETA and queue position: a `rich` progress bar when stderr is a
terminal, else one line each time that summary changes (logs, CI). It returns the exit status:
0 when the job Succeeded, 1 when it ended otherwise (the reason from its conditions is printed)
or was deleted while followed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from tramontane_cli.args import EXIT_INVALID, EXIT_OK
from tramontane_kube import FINETUNEJOB, KubeClient

TERMINAL: Final = frozenset({"Succeeded", "Failed", "FailedValidation", "Cancelled"})


def failure_reason(obj: Mapping[str, Any]) -> str:
    """Why a job did not succeed, from its conditions: `Reason: message`."""
    conditions = [
        c for c in (obj.get("status") or {}).get("conditions") or [] if isinstance(c, Mapping)
    ]
    ordered = (
        [c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"]
        + [c for c in conditions if c.get("type") == "Validated" and c.get("status") == "False"]
        + [c for c in conditions if c.get("status") == "False" and c.get("message")]
    )
    if not ordered:
        return "no condition says why"
    first = ordered[0]
    reason, message = first.get("reason") or first.get("type"), first.get("message")
    return f"{reason}: {message}" if message else str(reason)


def eta_text(progress: Mapping[str, Any], now: datetime | None = None) -> str:
    eta = progress.get("eta")
    if not isinstance(eta, str):
        return ""
    try:
        when = datetime.fromisoformat(eta.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = max(0, int((when - (now or datetime.now(UTC))).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def summary(obj: Mapping[str, Any]) -> str:
    """`Running step 40/100 loss 1.6 ETA 3m00s` (only what the status knows)."""
    status = obj.get("status") or {}
    progress = status.get("progress") or {}
    parts = [str(status.get("phase") or "Pending")]
    if status.get("queuePosition") is not None:
        parts.append(f"queue position {status['queuePosition']}")
    if progress.get("step") is not None and status.get("phase") != "Queued":
        total = progress.get("totalSteps")
        parts.append(f"step {progress['step']}/{total}" if total else f"step {progress['step']}")
    if progress.get("trainLoss") is not None:
        parts.append(f"loss {progress['trainLoss']:.4g}")
    eta = eta_text(progress)
    if eta and status.get("phase") == "Running":
        parts.append(f"ETA {eta}")
    return " ".join(parts)


def finished(obj: Mapping[str, Any]) -> int:
    """Print how the ended job ended; its exit status."""
    status = obj.get("status") or {}
    phase = status.get("phase")
    name = (obj.get("metadata") or {}).get("name")
    if phase == "Succeeded":
        adapter = (status.get("adapter") or {}).get("uri")
        tail = f": adapter at {adapter}" if adapter else ""
        print(f"finetunejob {name} Succeeded{tail}")
        return EXIT_OK
    print(f"finetunejob {name} {phase}: {failure_reason(obj)}", file=sys.stderr)
    return EXIT_INVALID


class _Display:
    """The bar on a terminal, or one line per change."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.last = ""
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self.console,
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("Pending", total=None, detail="")

    def show(self, obj: Mapping[str, Any]) -> None:
        line = summary(obj)
        if self.bar is not None and self.task is not None:
            status = obj.get("status") or {}
            progress = status.get("progress") or {}
            phase, _, detail = line.partition(" ")
            self.bar.update(
                self.task,
                description=phase,
                completed=progress.get("step") or 0,
                total=progress.get("totalSteps"),
                detail=detail,
            )
        elif line != self.last:
            print(line, file=sys.stderr, flush=True)
        self.last = line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


async def follow(api: KubeClient, namespace: str, name: str, interval_s: float) -> int:
    """Show the job until it ends; 0 Succeeded, 1 otherwise (or deleted meanwhile)."""
    display = _Display()
    try:
        while True:
            obj = await api.get(FINETUNEJOB, namespace, name)
            if obj is None:
                display.close()
                print(f"finetunejob {namespace}/{name} was deleted while followed", file=sys.stderr)
                return EXIT_INVALID
            display.show(obj)
            if (obj.get("status") or {}).get("phase") in TERMINAL:
                display.close()
                return finished(obj)
            await asyncio.sleep(interval_s)
    except asyncio.CancelledError:
        display.close()
        raise
