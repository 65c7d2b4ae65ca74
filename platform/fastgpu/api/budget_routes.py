"""Budgets: ``GET /api/v1/tenants/{name}/budget`` (the tenant itself or the admin; another
tenant gets 404) and ``GET /api/v1/budgets`` (the admin's overview of every tenant with a
budget). See :class:`fastgpu.service.budgets.BudgetService`."""

from __future__ import annotations

from fastapi import APIRouter, Path

from fastgpu.api.deps import V1, Caller, Svc
from fastgpu.service.budget_models import BudgetList, BudgetOut
from fastgpu.validation import NAME_PATTERN

router = APIRouter(prefix=V1, tags=["budgets"])


@router.get("/tenants/{name}/budget")
def get_budget(
    p: Caller,
    s: Svc,
    name: str = Path(max_length=63, pattern=NAME_PATTERN, description="Tenant name."),
) -> BudgetOut:
    return s.budgets.show(p, name)


@router.get("/budgets")
def list_budgets(p: Caller, s: Svc) -> BudgetList:
    return s.budgets.overview(p)
