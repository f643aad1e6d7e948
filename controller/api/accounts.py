"""/v1/accounts (admin) and /v1/account (the caller)."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import AdminCaller, Ctx, CurrentCaller, Page, Paging
from controller.models import AccountCreate, AccountCreated, AccountPublic
from controller.services import accounts

router = APIRouter(tags=["accounts"])


@router.post("/accounts", status_code=201, response_model=AccountCreated)
def create_account(body: AccountCreate, ctx: Ctx, _: AdminCaller):
    acct, key = accounts.create(ctx.db, body.name)
    return AccountCreated(account_id=acct.account_id, name=acct.name, api_key=key)


@router.get("/accounts", response_model=Page[AccountPublic])
def list_accounts(ctx: Ctx, _: AdminCaller, p: Paging):
    return accounts.list_page(ctx.db, p)


@router.get("/account", response_model=AccountPublic)
def my_account(caller: CurrentCaller):
    return AccountPublic(account_id=caller.account_id, name=caller.name, is_admin=caller.is_admin)
