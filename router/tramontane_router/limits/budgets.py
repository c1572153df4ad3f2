"""Long budgets: a tenant's tokens per UTC day (`tokensPerDay`) and per UTC month
(`tokensPerMonth`), enforced like tokens per minute against the durable usage record.

What a tenant has used in a period is: what every *other* router replica wrote to the shared
usage directory (`usage-<replica>-<day>.jsonl`, re-read incrementally every `refresh_s`),
plus what this replica served (`UsageLog.own_tokens`, exact and immediate), plus what this
replica has reserved for requests in flight. A request is admitted only if its worst case
fits in what is left; it is settled to its real tokens when it ends. Other replicas' use is
seen within `refresh_s` (10 s), so several replicas together may overrun a long budget by at
most what they serve in that time; a per-minute limit bounds that too. Without a usage
directory (`--usage-dir`) there is no record across restarts: the budget then counts from the
router's start, and the router says so in its log.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tramontane_api.v1alpha1.tenant import TokenBudgetStatus

from ..periodic import Periodic
from ..table import TenantView
from ..usage import UsageLog, token_rows

log = logging.getLogger(__name__)


class LongBudgets:
    def __init__(
        self,
        usage: UsageLog,
        *,
        refresh_s: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.usage = usage
        self.refresh_s = refresh_s
        self._now = now
        self._others: dict[tuple[str, str], int] = defaultdict(int)
        self._offsets: dict[Path, int] = {}
        self._reserved: dict[str, int] = defaultdict(int)
        self._loop = Periodic("budgets", refresh_s, lambda: asyncio.to_thread(self.refresh))
        self._warned = False

    @staticmethod
    def limited(tenant: TenantView) -> bool:
        q = tenant.quotas
        return q.tokens_per_day is not None or q.tokens_per_month is not None

    def used(self, tenant: str, period: str) -> int:
        """Tokens served to `tenant` in `period` ("YYYY-MM-DD" or "YYYY-MM"), all replicas."""
        return self._others.get((tenant, period), 0) + self.usage.own_tokens.get(
            (tenant, period), 0
        )

    def check(self, tenant: TenantView, cost: int) -> list[tuple[str, float | None]]:
        q = tenant.quotas
        if q.tokens_per_day is None and q.tokens_per_month is None:
            return []
        if self.usage.directory is None and not self._warned:
            self._warned = True
            log.warning("tokensPerDay/tokensPerMonth without --usage-dir: budgets count from "
                        "this router's start and are lost when it restarts")  # fmt: skip
        now = self._now()
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        reserved = self._reserved.get(tenant.name, 0)
        out: list[tuple[str, float | None]] = []
        for limit, period, field_name, ends in (
            (q.tokens_per_day, day, "tokensPerDay", _next_day(now)),
            (q.tokens_per_month, month, "tokensPerMonth", _next_month(now)),
        ):
            if limit is None:
                continue
            used = self.used(tenant.name, period) + reserved
            if used + cost <= limit:
                continue
            wait = (ends - now).total_seconds() if cost <= limit else None
            out.append(
                (f"{field_name}: {used} of {limit} tokens used or reserved in {period}, this "
                 f"request may use {cost}", wait)
            )  # fmt: skip
        return out

    def status(self, tenant: TenantView) -> TokenBudgetStatus:
        """What the Tenant's `status.tokenBudget` says now."""
        q, now = tenant.quotas, self._now()
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        today, this_month = self.used(tenant.name, day), self.used(tenant.name, month)

        def left(limit: int | None, used: int) -> int | None:
            return None if limit is None else max(0, limit - used)

        return TokenBudgetStatus(
            day=day,
            tokens_today=today,
            remaining_today=left(q.tokens_per_day, today),
            month=month,
            tokens_this_month=this_month,
            remaining_this_month=left(q.tokens_per_month, this_month),
        )

    def reserve(self, tenant: str, cost: int) -> None:
        self._reserved[tenant] += cost

    def settle(self, tenant: str, reserved: int, used: int) -> None:
        """The request ended: its reservation goes; what it used is in `UsageLog` already."""
        left = self._reserved[tenant] - reserved
        if left > 0:
            self._reserved[tenant] = left
        else:
            self._reserved.pop(tenant, None)

    # ------------------------------------------------------------ other replicas' usage
    def refresh(self) -> None:
        """Read what other replicas appended since the last refresh (this month's files)."""
        directory = self.usage.directory
        if directory is None:
            return
        month = self._now().strftime("%Y-%m")
        mine = f"usage-{self.usage.replica}-"
        for path in sorted(directory.glob(f"usage-*-{month}-*.jsonl")):
            if path.name.startswith(mine):
                continue
            offset = self._offsets.get(path, 0)
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            end = chunk.rfind(b"\n") + 1  # whole lines only: the writer may be mid-line
            if end == 0:
                continue
            self._offsets[path] = offset + end
            for tenant, day, tokens in token_rows(chunk[:end].decode("utf-8", "replace")):
                self._others[(tenant, day)] += tokens
                self._others[(tenant, day[:7])] += tokens

    def start(self) -> None:
        """Follow other replicas' usage (a failed read keeps the last totals)."""
        if self.usage.directory is not None:
            self.refresh()
            self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()


def _next_day(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


def _next_month(now: datetime) -> datetime:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)
