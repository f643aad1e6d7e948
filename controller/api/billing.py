"""/v1/usage, /v1/bills, /v1/prices, /v1/budget and /v1/instances/estimate: thin routers over
services/usage.py, bills.py, prices.py, budgets.py and estimates.py (docs/api.md "Billing")."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response

from controller.api.deps import AdminCaller, Ctx, CurrentCaller
from controller.api.responses import errors
from controller.models import RunInstancesRequest
from controller.models.billing import BudgetSet, PriceChange
from controller.services import bills, budgets, estimates, prices, usage

router = APIRouter(tags=["billing"])

Format = Literal["json", "csv"]
#: The 200 answer of an operation that can answer CSV too.
CSV_TOO = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}


def _csv(rows: list[dict]) -> Response:
    return Response(usage.to_csv(rows), media_type="text/csv")


@router.get("/usage", responses={**CSV_TOO, **errors(404)})
def get_usage(ctx: Ctx, caller: CurrentCaller, start: str, end: str,
              group_by: Literal["none", "resource", "usage_type", "day"] = "none",
              format: Format = "json", account_id: str | None = None):
    """Line items of [start, end) (ISO 8601; UTC when no zone), grouped as asked."""
    doc = usage.report(ctx.db, caller, start, end, group_by, account_id)
    return _csv(doc["items"]) if format == "csv" else doc


@router.get("/bills", responses=errors(404))
def list_bills(ctx: Ctx, caller: CurrentCaller, month: str):
    """The month's bills: every account's for admins, the caller's own otherwise."""
    return {"items": bills.list_month(ctx.db, caller, month)}


@router.get("/bills/{month}", responses=CSV_TOO)
def get_bill(month: str, ctx: Ctx, caller: CurrentCaller, account_id: str | None = None,
             format: Format = "json"):
    """The account's bill of month YYYY-MM: open (an estimate to date) or closed (final)."""
    doc = bills.get(ctx.db, caller, month, account_id)
    return _csv(doc["lines"]) if format == "csv" else doc


@router.get("/prices")
def list_prices(ctx: Ctx, _: CurrentCaller, usage_type: str | None = None):
    return {"items": prices.list_prices(ctx.db, usage_type)}


@router.post("/prices", status_code=201)
def change_price(body: PriceChange, ctx: Ctx, _: AdminCaller):
    """A new rate from effective_at (default now; never in the past)."""
    return prices.change(ctx.db, body)


@router.get("/budget", responses=errors(404))
def get_budget(ctx: Ctx, caller: CurrentCaller, account_id: str | None = None):
    return budgets.get(ctx.db, caller, account_id)


@router.put("/budget", responses=errors(404))
def put_budget(body: BudgetSet, ctx: Ctx, caller: CurrentCaller):
    return budgets.put(ctx.db, caller, body)


@router.delete("/budget", responses=errors(404))
def delete_budget(ctx: Ctx, caller: CurrentCaller, account_id: str | None = None):
    return budgets.delete(ctx.db, caller, account_id)


@router.post("/instances/estimate", responses=errors(404, 503))
def estimate_instances(body: RunInstancesRequest, ctx: Ctx, caller: CurrentCaller):
    """What `POST /v1/instances` with this body would cost per hour and per month; creates
    nothing."""
    return estimates.estimate(ctx.db, ctx.settings, caller, body)
