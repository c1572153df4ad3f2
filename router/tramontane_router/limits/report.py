"""The routers write each budgeted tenant's token use into its status, so a platform team
reads it with `kubectl get tenant -o yaml` (`status.tokenBudget`: tokens today and this
month, and what is left of `tokensPerDay` / `tokensPerMonth`).

Only with a hub and a shared usage directory: the totals then count every replica, so each
replica writes the same figures (give or take its refresh), and a merge patch of the status
subresource touches `tokenBudget` alone (the operator writes the rest and carries this field
over). A replica writes a tenant's status when its figures changed, at most every
`interval_s`; a failed write is retried at the next interval and never reaches a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from tramontane_kube import TENANT, ApiError, KubeClient, NotFound, Unreachable

from ..periodic import Periodic
from ..table import TenantView
from .budgets import LongBudgets

log = logging.getLogger(__name__)


class BudgetReporter:
    def __init__(
        self,
        client: KubeClient,
        budgets: LongBudgets,
        tenants: Callable[[], Iterable[TenantView]],
        *,
        interval_s: float = 30.0,
    ) -> None:
        self.client, self.budgets, self.tenants = client, budgets, tenants
        self.interval_s = interval_s
        self._written: dict[str, dict[str, object]] = {}
        self._loop = Periodic("budget-status", interval_s, self.report_once)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def report_once(self) -> int:
        """Write the statuses that changed; how many were written."""
        written = 0
        for tenant in self.tenants():
            if not self.budgets.limited(tenant):
                continue
            body = self.budgets.status(tenant).model_dump(
                by_alias=True, exclude_none=True, mode="json"
            )
            if self._written.get(tenant.name) == body:
                continue
            stamped = {**body, "updatedTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
            try:
                await self.client.patch(
                    TENANT, None, tenant.name, {"status": {"tokenBudget": stamped}}, "status"
                )
            except NotFound:
                continue
            except (ApiError, Unreachable) as exc:
                log.warning("tenant %s: could not write status.tokenBudget: %s", tenant.name, exc)
                continue
            self._written[tenant.name] = body
            written += 1
        return written
