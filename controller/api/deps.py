"""Annotated FastAPI dependencies: the app context, the authenticated caller (bearer API key, or
the web console's session cookie with its CSRF header),
the admin check, the agent check (client certificate or shared token), and list paging parameters (and the Page every list
answers, from services/pagination.py).
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from agent.contract import tls
from controller.agents import AgentPool
from controller.db import Database
from controller.errors import AuthFailure, Unauthorized
from controller.reconciler import Reconciler
from controller.services import accounts, console_sessions, host_identity, pagination
from controller.services.accounts import Caller
from controller.services.pagination import Page, PageRequest
from controller.settings import Settings

__all__ = ["AUTH_ERRORS", "AdminCaller", "AgentAuth", "AgentPeer", "AppContext", "Ctx", "CurrentCaller", "Page",
           "Paging"]


@dataclass
class AppContext:
    settings: Settings
    db: Database
    pool: AgentPool
    reconciler: Reconciler


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
    key = _bearer(request)
    cookie = request.cookies.get(console_sessions.COOKIE)
    if key is None and cookie:
        # The web console's session cookie stands for the account's key; POST, PUT, PATCH and
        # DELETE need its CSRF header too (403 InvalidCsrfToken), so another site cannot act
        # with it (services/console_sessions.py).
        return console_sessions.resolve(
            ctx.db, ctx.settings, cookie, method=request.method,
            csrf_header=request.headers.get(console_sessions.CSRF_HEADER)).caller
    return accounts.authenticate(ctx.db, key)


CurrentCaller = Annotated[Caller, Depends(_caller)]


def _admin(caller: CurrentCaller) -> Caller:
    if not caller.is_admin:
        raise Unauthorized("this operation needs an admin account")
    return caller


AdminCaller = Annotated[Caller, Depends(_admin)]


@dataclass(frozen=True)
class AgentPeer:
    """The agent a request comes from: the host its client certificate names (agent_auth
    "mtls"), or None with the shared token (agent_auth "token": any host may claim any id)."""
    host_id: str | None

    def check_host(self, host_id: str) -> None:
        """403 HostIdentityMismatch unless the certificate names `host_id`."""
        if self.host_id is not None and self.host_id != host_id:
            raise host_identity.HostIdentityMismatch(
                f"the client certificate is host {self.host_id}'s, not {host_id}'s")


def _agent(request: Request, ctx: Ctx) -> AgentPeer:
    if ctx.settings.agent_auth == "mtls":
        ident = host_identity.authenticate(ctx.db, tls.peer_certificate(request.scope))
        return AgentPeer(ident.host_id)
    token = _bearer(request)
    expected = ctx.settings.agent_token
    if not expected or not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise AuthFailure("invalid agent token")
    return AgentPeer(None)


AgentAuth = Annotated[AgentPeer, Depends(_agent)]

#: The error statuses each authentication dependency can answer (declared in the OpenAPI
#: document of every operation that uses it, controller/api/responses.py).
AUTH_ERRORS = {_caller: (401,), _admin: (401, 403), _agent: (401, 403)}


MaxResults = Annotated[int, Query(ge=1, le=pagination.MAX_MAX_RESULTS)]
NextToken = Annotated[str | None, Query(max_length=pagination.MAX_TOKEN_LENGTH)]


def _page(max_results: MaxResults = pagination.DEFAULT_MAX_RESULTS,
          next_token: NextToken = None) -> PageRequest:
    # The token is checked by the list's service: only its order knows what a position holds.
    return PageRequest(max_results, next_token)


#: Every list's query parameters (services/pagination.py); its answer is a Page.
Paging = Annotated[PageRequest, Depends(_page)]
