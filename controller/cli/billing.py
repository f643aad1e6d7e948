"""`kumo usage`, `kumo bill YYYY-MM`, `kumo prices list|set`, `kumo budget show|set|delete`
(REST /v1/usage, /v1/bills, /v1/prices, /v1/budget; docs/billing.md explains the numbers).
Times are ISO 8601 (UTC when no zone is given) or relative to now (`-3h`, `now`)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .context import Output, OutputOpt, state
from .metrics import parse_time
from .output import emit_list, emit_record, print_json

ITEM_COLUMNS = [("RESOURCE", "resource_id"), ("KIND", "kind"), ("USAGE TYPE", "usage_type"),
                ("DIMENSION", "dimension"), ("DAY", "day"), ("QUANTITY", "quantity"),
                ("UNIT", "unit"), ("RATE", "rate"), ("AMOUNT", "amount")]
AccountOpt = Annotated[Optional[str], typer.Option(
    "--account", help="Account id (admins only; default: your own).")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV (the API's format=csv).")]


def usage(ctx: typer.Context,
          start: Annotated[str, typer.Option("--start", help="Period start.")] = "-1d",
          end: Annotated[str, typer.Option("--end", help="Period end (exclusive).")] = "now",
          group_by: Annotated[str, typer.Option(
              "--group-by", help="none, resource, usage_type or day.")] = "resource",
          account: AccountOpt = None, csv: CsvOpt = False, output: OutputOpt = None) -> None:
    """Usage line items of a period (GET /v1/usage)."""
    st = state(ctx, output)
    params = {"start": parse_time(start), "end": parse_time(end), "group_by": group_by,
              "account_id": account}
    if csv:
        typer.echo(st.api().get_text("/v1/usage", format="csv", **params), nl=False)
        return
    doc = st.api().get("/v1/usage", **params)
    if st.output == Output.json:
        print_json(doc)
        return
    emit_list(st, doc["items"], ITEM_COLUMNS,
              title=f"usage {doc['start']} .. {doc['end']}: total {doc['total']} "
                    f"{doc['currency']}")


def bill(ctx: typer.Context, month: Annotated[str, typer.Argument(help="YYYY-MM (UTC).")],
         account: AccountOpt = None, csv: CsvOpt = False, output: OutputOpt = None) -> None:
    """A monthly bill (GET /v1/bills/MONTH): open (estimate to date) or closed."""
    st = state(ctx, output)
    if csv:
        typer.echo(st.api().get_text(f"/v1/bills/{month}", format="csv", account_id=account),
                   nl=False)
        return
    doc = st.api().get(f"/v1/bills/{month}", account_id=account)
    if st.output == Output.json:
        print_json(doc)
        return
    budget = doc.get("budget")
    extra = ""
    if budget:
        extra = f"; budget {budget['monthly_limit']}" + (" EXCEEDED" if budget["exceeded"]
                                                        else "")
    emit_list(st, doc["lines"], [("USAGE TYPE", "usage_type"), ("DIMENSION", "dimension"),
                                 ("QUANTITY", "quantity"), ("UNIT", "unit"), ("RATE", "rate"),
                                 ("AMOUNT", "amount")],
              title=f"{doc['account_id']} {doc['month']} ({doc['status']}): total "
                    f"{doc['total']} {doc['currency']}{extra}")


prices = typer.Typer(help="The price list (admins change it).", no_args_is_help=True)


@prices.command("list")
def prices_list(ctx: typer.Context, usage_type: Annotated[Optional[str], typer.Option(
        "--usage-type")] = None, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    items = st.api().get("/v1/prices", usage_type=usage_type)["items"]
    emit_list(st, items, [("USAGE TYPE", "usage_type"), ("DIMENSION", "dimension"),
                          ("RATE", "rate"), ("UNIT", "unit"), ("EFFECTIVE", "effective_at")])


@prices.command("set")
def prices_set(ctx: typer.Context, usage_type: str, rate: str,
               dimension: Annotated[str, typer.Option(
                   "--dimension", help="The instance type, for instance-hours.")] = "",
               effective: Annotated[Optional[str], typer.Option(
                   "--effective", help="When it applies (default now; never in the past).")]
               = None, output: OutputOpt = None) -> None:
    st = state(ctx, output)
    body = {"usage_type": usage_type, "dimension": dimension, "rate": rate,
            "effective_at": parse_time(effective) if effective else None}
    emit_record(st, st.api().post("/v1/prices", json=body))


budget = typer.Typer(help="An account's monthly budget (an event when crossed).",
                     no_args_is_help=True)


@budget.command("show")
def budget_show(ctx: typer.Context, account: AccountOpt = None,
                output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().get("/v1/budget", account_id=account))


@budget.command("set")
def budget_set(ctx: typer.Context, monthly_limit: str, account: AccountOpt = None,
               output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().put("/v1/budget", {"monthly_limit": monthly_limit,
                                                "account_id": account}))


@budget.command("delete")
def budget_delete(ctx: typer.Context, account: AccountOpt = None,
                  output: OutputOpt = None) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().delete("/v1/budget", account_id=account))
