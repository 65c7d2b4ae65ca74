"""The SDK's usage, report, statement and budget calls, mixed into :class:`fastgpu.sdk.Client`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastgpu.errors import InvalidRequest
from fastgpu.sdk_base import Calls, seg


class UsageCalls(Calls):
    """What tenants used and spent: records, reports by period, statements and budgets."""

    def usage(self, tenant: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        return self._pages("/usage", params={"tenant": tenant, "since": since})

    def usage_report(
        self,
        by: str | Sequence[str] = ("tenant",),
        period: str | None = None,
        since: str | None = None,
        until: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """GPU-hours and cost grouped by ``by`` (of tenant, gpu_type, workload) and by
        ``period`` (hour, day, week, month; UTC) over ``[since, until)``: ``rows`` and totals."""
        groups = by if isinstance(by, str) else ",".join(by)
        params = {"by": groups, "period": period, "since": since, "until": until, "tenant": tenant}
        return dict(self._call("GET", "/usage/report", params=params))

    def budget(self, tenant: str | None = None) -> dict[str, Any]:
        """A tenant's budget this period (yours without ``tenant``): spent, limit, remaining,
        thresholds crossed, state, action, the run-out time at the current burn rate, events."""
        name = tenant or self.whoami()["tenant"]
        if not name:
            raise InvalidRequest('tenant: the admin names one, e.g. budget(tenant="acme")')
        return dict(self._call("GET", f"/tenants/{seg(name)}/budget"))

    def budgets(self) -> list[dict[str, Any]]:
        """Every tenant with a budget, as the controller last assessed it (admin)."""
        return list(self._call("GET", "/budgets")["items"])

    def usage_statement(
        self, at: str, period: str = "month", tenant: str | None = None
    ) -> dict[str, Any]:
        """Per tenant, GPU-hours and cost by GPU type and workload over one period
        (``at="2026-11"`` for a month), with totals."""
        params = {"at": at, "period": period, "tenant": tenant}
        return dict(self._call("GET", "/usage/statement", params=params))
