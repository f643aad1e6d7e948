"""/v1/account/users (the caller's own account) and /v1/accounts/{account_id}/users (admin): the
web console's users (services/console_users.py)."""
from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import AdminCaller, Ctx, CurrentCaller, Page, Paging
from controller.models import ConsoleUserCreate, ConsoleUserPublic
from controller.services import console_users

router = APIRouter(tags=["console users"])


@router.post("/account/users", status_code=201, response_model=ConsoleUserPublic)
def create_my_user(body: ConsoleUserCreate, ctx: Ctx, caller: CurrentCaller):
    return console_users.create(ctx.db, caller.account_id, body.username, body.password)


@router.get("/account/users", response_model=Page[ConsoleUserPublic])
def list_my_users(ctx: Ctx, caller: CurrentCaller, p: Paging):
    return console_users.list_page(ctx.db, caller.account_id, p)


@router.delete("/account/users/{username}", response_model=ConsoleUserPublic)
def delete_my_user(username: str, ctx: Ctx, caller: CurrentCaller):
    return console_users.delete(ctx.db, caller.account_id, username)


@router.post("/accounts/{account_id}/users", status_code=201, response_model=ConsoleUserPublic)
def create_user(account_id: str, body: ConsoleUserCreate, ctx: Ctx, _: AdminCaller):
    return console_users.create(ctx.db, account_id, body.username, body.password)


@router.get("/accounts/{account_id}/users", response_model=Page[ConsoleUserPublic])
def list_users(account_id: str, ctx: Ctx, _: AdminCaller, p: Paging):
    return console_users.list_page(ctx.db, account_id, p)


@router.delete("/accounts/{account_id}/users/{username}", response_model=ConsoleUserPublic)
def delete_user(account_id: str, username: str, ctx: Ctx, _: AdminCaller):
    return console_users.delete(ctx.db, account_id, username)
