"""The error shape and the bearer-token check shared by Kumo's node APIs (the host agent's,
agent/app.py, and the storage node's, agent/storage_node/app.py): every error is answered as
{"error": {"code", "message", "retryable"}} with an HTTP status, whatever raised it, so the
controller's clients (controller/agents.py, controller/storage.py) parse one shape.
"""
from __future__ import annotations

import hmac
import logging
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as {"error": {"code", "message", "retryable"}} with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, retryable: bool = False):
        super().__init__(message)
        self.status, self.code, self.message, self.retryable = status, code, message, retryable


def error_body(code: str, message: str, retryable: bool = False) -> dict:
    return {"error": {"code": code, "message": message, "retryable": retryable}}


def bearer_check(token: Callable[[], str | None]) -> Callable[[Request], None]:
    """A dependency refusing (401 AuthFailure) requests without `Authorization: Bearer <token>`;
    no token configured refuses everything: a node is never open by accident."""
    def require_token(request: Request) -> None:
        want = token()
        scheme, _, cred = request.headers.get("authorization", "").partition(" ")
        if not (want and scheme.lower() == "bearer"
                and hmac.compare_digest(cred.encode(), want.encode())):
            raise ApiError(401, "AuthFailure", "missing or invalid bearer token")
    return require_token


def install_error_handlers(app: FastAPI) -> None:
    """ApiError (and subclasses) as raised; invalid requests 400 InvalidParameterValue; unknown
    routes/methods with their status; anything unexpected 500 InternalError (logged)."""
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.code, exc.message, exc.retryable), exc.status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse(error_body("InvalidParameterValue", "; ".join(parts)), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HttpError")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("InternalError", f"{type(exc).__name__}: {exc}", True), 500)
