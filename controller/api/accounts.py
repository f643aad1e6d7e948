"""/v1/accounts (admin) and /v1/account (the caller)."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import AdminCaller, Ctx, CurrentCaller, Page, Paging
from controller.models import AccountCreate, AccountCreated, AccountPublic
from controller.services import accounts
from controller.services.pagination import page

router = APIRouter(tags=["accounts"])


@router.post("/accounts", status_code=201, response_model=AccountCreated)
def create_account(body: AccountCreate, ctx: Ctx, _: AdminCaller):
    acct, key = accounts.create(ctx.db, body.name)
    return AccountCreated(account_id=acct.account_id, name=acct.name, api_key=key)


@router.get("/accounts", response_model=Page[AccountPublic])
def list_accounts(ctx: Ctx, _: AdminCaller, p: Paging):
    with ctx.db.session() as s:
        rows = accounts.list_all(s, p.offset, p.limit + 1)
    items, token = page(rows, p.offset, p.limit)
    return Page(items=[AccountPublic.model_validate(a, from_attributes=True) for a in items],
                next_token=token)


@router.get("/account", response_model=AccountPublic)
def my_account(caller: CurrentCaller):
    return AccountPublic(account_id=caller.account_id, name=caller.name, is_admin=caller.is_admin)
