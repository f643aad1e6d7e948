"""Who may see what: the ownership rules every account-owned resource's service shares.

A caller sees its own account's rows, an admin every account's; a row the caller may not see is
answered exactly like a missing one (404 with the resource's NotFound code), so ids of other
accounts reveal nothing. Also the DependencyViolation error of deletes refused while something
still uses the resource.
"""
from __future__ import annotations

from typing import TypeVar

from sqlmodel import Session

from controller.errors import Conflict, NotFound

T = TypeVar("T")


def owned(s: Session, caller, model: type[T], resource_id: str, code: str, what: str,
          gone: tuple[str, ...] = ()) -> T:
    """The row, if the caller may see it (its own, or any for admins) and its state is not one
    of `gone` (deleted rows kept for a while); else `code` (404)."""
    row = s.get(model, resource_id) if resource_id else None
    if (row is None or (row.account_id != caller.account_id and not caller.is_admin)
            or (gone and row.state in gone)):
        raise NotFound(f"{what} {resource_id!r} not found", code=code)
    return row


def scoped(query, model, caller):
    """`query` limited to the rows of `model` the caller may see."""
    return query if caller.is_admin else query.where(model.account_id == caller.account_id)


def dependency(message: str) -> Conflict:
    """The refusal of a delete while other resources still use this one (EC2's code)."""
    return Conflict(message, code="DependencyViolation")
