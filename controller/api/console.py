"""/console/api/session: sign in to the web console (sets the session cookie), read the session
(with its CSRF token), sign out. Everything else the console does goes through /v1 with the
cookie (controller/api/deps.py), so the console can do nothing the API would refuse.

Not in the OpenAPI document: these answer browsers (cookies), not API clients (bearer keys).
"""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from controller.api.deps import Ctx
from controller.models import SessionPublic, SignInRequest
from controller.services import console_sessions as sessions

router = APIRouter(prefix="/console/api", include_in_schema=False)


def _public(ctx: Ctx, caller, username, csrf, expires_at) -> dict:
    return SessionPublic(account_id=caller.account_id, account_name=caller.name,
                         is_admin=caller.is_admin, username=username, csrf_token=csrf,
                         expires_at=expires_at,
                         idle_timeout_s=ctx.settings.console_session_idle_s).model_dump(mode="json")


@router.post("/session")
def sign_in(body: SignInRequest, request: Request, ctx: Ctx):
    signed = sessions.sign_in(
        ctx.db, ctx.settings, request.app.state.console_throttle,
        client=request.client.host if request.client else "-",
        username=body.username, password=body.password, api_key=body.api_key,
        old_token=request.cookies.get(sessions.COOKIE))
    resp = JSONResponse(_public(ctx, signed.caller, signed.username, signed.csrf_token,
                                signed.expires_at), status_code=201)
    resp.set_cookie(sessions.COOKIE, signed.token, max_age=int(ctx.settings.console_session_max_s),
                    path="/", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")
    return resp


@router.get("/session")
def read_session(request: Request, ctx: Ctx):
    s = sessions.resolve(ctx.db, ctx.settings, request.cookies.get(sessions.COOKIE))
    return _public(ctx, s.caller, s.username, s.csrf_token, s.expires_at)


@router.delete("/session", status_code=204)
def sign_out(request: Request, ctx: Ctx):
    token = request.cookies.get(sessions.COOKIE)
    try:
        sessions.resolve(ctx.db, ctx.settings, token, method="DELETE",
                         csrf_header=request.headers.get(sessions.CSRF_HEADER))
    except sessions.NoSession:
        pass  # already over: just clear the cookie
    else:
        sessions.sign_out(ctx.db, token)
    resp = Response(status_code=204)
    resp.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict",
                       secure=request.url.scheme == "https")
    return resp
