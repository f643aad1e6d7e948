"""Opaque list pagination tokens (an offset, base64-encoded so clients treat it as opaque)."""
from __future__ import annotations

import base64

from controller.errors import InvalidParameter


def decode(token: str | None) -> int:
    if not token:
        return 0
    try:
        value = int(base64.urlsafe_b64decode(token.encode() + b"==").decode())
    except Exception:
        raise InvalidParameter("invalid next_token", code="InvalidPaginationToken") from None
    if value < 0:
        raise InvalidParameter("invalid next_token", code="InvalidPaginationToken")
    return value


def encode(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")


def page(rows: list, offset: int, limit: int) -> tuple[list, str | None]:
    """rows were fetched with limit+1: return the page and the next token if more exist."""
    if len(rows) > limit:
        return rows[:limit], encode(offset + limit)
    return rows, None
