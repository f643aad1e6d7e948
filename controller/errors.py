"""Kumo's error type and the FastAPI handlers that put it on the wire.

Every failure a client can see is a KumoError with a stable EC2-style code, an HTTP status and a
retryable flag; the handlers render `{"error": {"code", "message", "retryable"}}` (docs/api.md):
the ErrorResponse model each operation declares for the error statuses it can answer
(controller/api/responses.py). FastAPI's request validation errors get that body too, with 400
(never 422).
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.models.error import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)


class KumoError(Exception):
    code = "InternalError"
    status = 500
    retryable = False

    def __init__(self, message: str = "", *, code: str | None = None, status: int | None = None,
                 retryable: bool | None = None):
        super().__init__(message or self.code)
        self.message = message or self.code
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable


class InvalidParameter(KumoError):
    code, status = "InvalidParameterValue", 400


class NotFound(KumoError):
    code, status = "NotFound", 404


class Conflict(KumoError):
    code, status = "Conflict", 409


class IncorrectState(KumoError):
    code, status = "IncorrectInstanceState", 409


class AuthFailure(KumoError):
    code, status = "AuthFailure", 401


class Unauthorized(KumoError):
    code, status = "UnauthorizedOperation", 403


class InsufficientCapacity(KumoError):
    code, status, retryable = "InsufficientInstanceCapacity", 503, True


def body(code: str, message: str, retryable: bool) -> dict:
    return ErrorResponse(error=ErrorDetail(code=code, message=message, retryable=retryable)) \
        .model_dump()


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(KumoError)
    async def _kumo(_: Request, exc: KumoError):
        return JSONResponse(body(exc.code, exc.message, exc.retryable), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg')}")
        missing = any(e.get("type") == "missing" for e in exc.errors())
        code = "MissingParameter" if missing else "InvalidParameterValue"
        return JSONResponse(body(code, "; ".join(parts) or "invalid request", False), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = {404: "NotFound", 405: "MethodNotAllowed", 401: "AuthFailure"}.get(
            exc.status_code, "InvalidRequest")
        return JSONResponse(body(code, str(exc.detail), False), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(body("InternalError", "internal error", True), status_code=500)
