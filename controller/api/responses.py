"""The error answers every operation declares in the OpenAPI document, in one place.

Every error answer has the body `ErrorResponse` (`{"error": {"code", "message", "retryable"}}`,
controller/errors.py). Which statuses an operation can answer follows from its shape, when the
routers are included (controller/app.py, `with_errors`):

- every operation: 500 (InternalError, an unexpected failure);
- an authentication dependency: its statuses (controller/api/deps.py AUTH_ERRORS: 401, and 403
  for admin-only operations);
- any parameter or body: 400 (malformed, missing or refused values; FastAPI's validation errors
  are answered 400 too, not 422);
- an id in the path: 404 (missing, or another account's);
- a method that changes state (POST, PUT, PATCH, DELETE): 409 (the resource's state refuses it).

An operation that can answer a status its shape does not imply says so itself, with
`responses=errors(...)` on its route (a 404 for a resource named in the body, a 503 when
capacity or an agent is missing, a 403 decided by the service).
"""
from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute

from controller.api.deps import AUTH_ERRORS
from controller.models.error import ErrorResponse

#: Status -> what it means in Kumo (the description of the declared answer).
ERRORS: dict[int, str] = {
    400: "Invalid request: a parameter or body field missing (MissingParameter), malformed or "
         "refused (InvalidParameterValue and the resource's own codes), or a limit reached",
    401: "AuthFailure: no valid API key (or agent token)",
    403: "UnauthorizedOperation: the caller's account may not do this",
    404: "A resource it names does not exist or belongs to another account (its NotFound code)",
    409: "The resource's state refuses it (IncorrectInstanceState, DependencyViolation, "
         "Resource.AlreadyAssociated, InvalidIPAddress.InUse, ...)",
    500: "InternalError: an unexpected failure (retryable)",
    503: "Retryable: not enough capacity (InsufficientInstanceCapacity) or an agent that did "
         "not answer (ServiceUnavailable)",
}

_CHANGES_STATE = {"POST", "PUT", "PATCH", "DELETE"}

#: The `content` of an answer that is a file's bytes (FileResponse declares none).
OCTET_STREAM = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def errors(*statuses: int) -> dict[int | str, dict]:
    """The `responses=` declaring `statuses` with Kumo's error body."""
    return {s: {"model": ErrorResponse, "description": ERRORS[s]} for s in statuses}


def _calls(dependant: Dependant):
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


def derived_statuses(route: APIRoute) -> set[int]:
    """The error statuses `route`'s shape implies (the module docstring's rules)."""
    statuses = {500}
    for call in _calls(route.dependant):
        statuses.update(AUTH_ERRORS.get(call, ()))
    if get_flat_params(route.dependant) or route.body_field is not None:
        statuses.add(400)
    if route.dependant.path_params:
        statuses.add(404)
    if route.methods & _CHANGES_STATE:
        statuses.add(409)
    return statuses


def with_errors(router: APIRouter) -> APIRouter:
    """`router`, each of its operations declaring its derived error statuses (besides those it
    declares itself). Idempotent: create_app may run more than once in a process."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            for status, answer in errors(*sorted(derived_statuses(route))).items():
                route.responses.setdefault(status, answer)
    return router


def without_validation_422(app: FastAPI) -> None:
    """Drop the 422 HTTPValidationError FastAPI declares on every operation with parameters:
    Kumo answers validation errors 400 with its own body (controller/errors.py)."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()  # FastAPI caches it in app.openapi_schema: cleaned once
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                answers = operation.get("responses", {}) if isinstance(operation, dict) else {}
                ref = (answers.get("422", {}).get("content", {}).get("application/json", {})
                       .get("schema", {}).get("$ref", ""))
                if ref.endswith("/HTTPValidationError"):
                    del answers["422"]
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        return schema

    app.openapi = openapi
