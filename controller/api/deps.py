"""Annotated FastAPI dependencies: the app context, the authenticated caller (bearer API key),
the admin check, the agent token check, and list paging parameters.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel

from controller.agents import AgentPool
from controller.db import Database
from controller.errors import AuthFailure, Unauthorized
from controller.services import accounts
from controller.services.accounts import Caller
from controller.services.pagination import decode
from controller.settings import Settings

T = TypeVar("T")


@dataclass
class AppContext:
    settings: Settings
    db: Database
    pool: AgentPool
    reconciler: "object"


def _ctx(request: Request) -> AppContext:
    return request.app.state.kumo


Ctx = Annotated[AppContext, Depends(_ctx)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _caller(request: Request, ctx: Ctx) -> Caller:
    return accounts.authenticate(ctx.db, _bearer(request))


CurrentCaller = Annotated[Caller, Depends(_caller)]


def _admin(caller: CurrentCaller) -> Caller:
    if not caller.is_admin:
        raise Unauthorized("this operation needs an admin account")
    return caller


AdminCaller = Annotated[Caller, Depends(_admin)]


def _agent(request: Request, ctx: Ctx) -> None:
    token = _bearer(request)
    expected = ctx.settings.agent_token
    if not expected or not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise AuthFailure("invalid agent token")


AgentAuth = Annotated[None, Depends(_agent)]


@dataclass
class PageParams:
    offset: int
    limit: int


def _page(max_results: Annotated[int, Query(ge=1, le=1000)] = 100,
          next_token: Annotated[str | None, Query(max_length=64)] = None) -> PageParams:
    return PageParams(decode(next_token), max_results)


Paging = Annotated[PageParams, Depends(_page)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_token: str | None = None
