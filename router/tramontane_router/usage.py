"""Usage for billing: Prometheus counters, and a durable record that survives restarts.

Every settled request adds its tokens to the counters
`tramontane_usage_tokens_total{tenant,model,adapter,direction}` and
`tramontane_usage_requests_total{tenant,model,adapter}`.

The durable record is a directory of JSON Lines files, one per router replica and UTC day
(`usage-<replica>-<YYYY-MM-DD>.jsonl`). Each line is one minute of one (tenant, model, adapter)
as this replica saw it: `{"minute": "2026-11-27T14:03:00Z", "replica": ..., "tenant": ...,
"model": ..., "adapter": ..., "requests": n, "promptTokens": n, "completionTokens": n}`.
Lines are appended (and fsynced) every `flush_interval_s` and at shutdown; a minute may appear
on several lines (one per flush), so readers sum lines by key. Nothing is rewritten, so a
crash loses at most the last interval, and a restart never double-counts. On Kubernetes the
directory is a persistent volume; `read_usage` sums any set of files, and `UsageLog.tenant_usage`
answers one tenant's tokens per model (`GET /v1/usage`) from every replica's files there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from .periodic import Periodic

log = logging.getLogger(__name__)

USAGE_TOKENS = Counter(
    "tramontane_usage_tokens_total",
    "Tokens served, for billing.",
    ["tenant", "model", "adapter", "direction"],
)
USAGE_REQUESTS = Counter(
    "tramontane_usage_requests_total",
    "Completed requests, for billing.",
    ["tenant", "model", "adapter"],
)

UsageKey = tuple[str, str, str, str]  # (minute, tenant, model, adapter)


@dataclass
class _Tally:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class UsageLog:
    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        replica: str,
        *,
        flush_interval_s: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.directory = Path(directory) if directory else None
        self._now = now
        self.replica = replica
        self.flush_interval_s = flush_interval_s
        self._pending: dict[UsageKey, _Tally] = defaultdict(_Tally)
        # A write that fails keeps the rows in memory for the next round (see `flush`).
        self._loop = Periodic("usage", flush_interval_s, lambda: asyncio.to_thread(self.flush))
        # Tokens this replica served per (tenant, period), period "YYYY-MM-DD" or "YYYY-MM":
        # what long budgets count for this replica (its files, read back at start-up).
        self.own_tokens: dict[tuple[str, str], int] = defaultdict(int)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path in self.directory.glob(f"usage-{replica}-*.jsonl"):
                for tenant, day, tokens in token_rows(path.read_text(encoding="utf-8")):
                    self.own_tokens[(tenant, day)] += tokens
                    self.own_tokens[(tenant, day[:7])] += tokens

    def record(
        self, tenant: str, model: str, adapter: str | None, prompt: int, completion: int
    ) -> None:
        adapter_label = adapter or ""
        USAGE_TOKENS.labels(tenant, model, adapter_label, "input").inc(prompt)
        USAGE_TOKENS.labels(tenant, model, adapter_label, "output").inc(completion)
        USAGE_REQUESTS.labels(tenant, model, adapter_label).inc()
        minute = self._now().strftime("%Y-%m-%dT%H:%M:00Z")
        self.own_tokens[(tenant, minute[:10])] += prompt + completion
        self.own_tokens[(tenant, minute[:7])] += prompt + completion
        if self.directory is None:
            return
        tally = self._pending[(minute, tenant, model, adapter_label)]
        tally.requests += 1
        tally.prompt_tokens += prompt
        tally.completion_tokens += completion

    def start(self) -> None:
        if self.directory is not None:
            self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()
        self.flush()

    def tenant_usage(self, tenant: str, since: date | None = None) -> list[dict[str, Any]]:
        """`tenant`'s requests and tokens per (model, adapter) in every replica's files of the
        directory, from UTC day `since` on (all days without it); this replica's unwritten
        rows are flushed first, so what it just served counts. Blocking (file I/O): call in a
        thread. Empty without a directory."""
        if self.directory is None:
            return []
        self.flush()
        first = since.isoformat() if since else ""
        paths = [p for p in sorted(self.directory.glob("usage-*.jsonl")) if p.stem[-10:] >= first]
        rows = []
        for (who, model, adapter), total in sorted(
            read_usage(paths).items(), key=lambda kv: (kv[0][1], kv[0][2] or "")
        ):
            if who != tenant:
                continue
            tokens = total["promptTokens"] + total["completionTokens"]
            rows.append({"model": model, "adapter": adapter, **total, "totalTokens": tokens})
        return rows

    def flush(self) -> None:
        """Append what was recorded since the last flush; kept in memory if the write fails."""
        if self.directory is None or not self._pending:
            return
        pending, self._pending = self._pending, defaultdict(_Tally)
        by_day: dict[str, list[str]] = defaultdict(list)
        for (minute, tenant, model, adapter), t in sorted(pending.items()):
            row = {
                "minute": minute,
                "replica": self.replica,
                "tenant": tenant,
                "model": model,
                "adapter": adapter or None,
                "requests": t.requests,
                "promptTokens": t.prompt_tokens,
                "completionTokens": t.completion_tokens,
            }
            by_day[minute[:10]].append(json.dumps(row, separators=(",", ":")))
        try:
            for day, lines in by_day.items():
                path = self.directory / f"usage-{self.replica}-{day}.jsonl"
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write("\n".join(lines) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError:
            for key, t in pending.items():  # put it back for the next flush
                mine = self._pending[key]
                mine.requests += t.requests
                mine.prompt_tokens += t.prompt_tokens
                mine.completion_tokens += t.completion_tokens
            raise


def read_usage(paths: Iterable[Path]) -> dict[tuple[str, str, str | None], dict[str, int]]:
    """(tenant, model, adapter) -> requests, promptTokens, completionTokens, summed over the
    lines of `paths`. A torn last line (a crash mid-write) is skipped."""
    totals: dict[tuple[str, str, str | None], dict[str, int]] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row: Mapping[str, Any] = json.loads(line)
            except ValueError:
                continue
            key = (str(row["tenant"]), str(row["model"]), row.get("adapter"))
            total = totals.setdefault(
                key, {"requests": 0, "promptTokens": 0, "completionTokens": 0}
            )
            for name in total:
                total[name] += int(row.get(name, 0))
    return totals


def token_rows(text: str) -> list[tuple[str, str, int]]:
    """(tenant, day, prompt + completion tokens) of each whole line of a usage file."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            rows.append(
                (str(row["tenant"]), str(row["minute"])[:10],
                 int(row.get("promptTokens", 0)) + int(row.get("completionTokens", 0)))
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
    return rows


def replica_name() -> str:
    """This replica's name in usage files: the pod name on Kubernetes, else host and pid."""
    return os.environ.get("POD_NAME") or f"{os.uname().nodename}-{os.getpid()}-{int(time.time())}"
