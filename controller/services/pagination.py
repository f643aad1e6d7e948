"""Opaque list pagination tokens.

Two kinds, both base64url so clients treat them as opaque: an offset (most lists, which are
small), and a keyset position `(created_at, id)` of the last item of a page (instances, which can
number in the tens of thousands per account: the next page starts strictly after that key, so a
late page costs the same as the first one and rows inserted meanwhile never shift the pages).
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from controller.errors import InvalidParameter

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_KEY = re.compile(r"k1:([0-9]{1,17}):([a-z]{1,8}-[0-9a-f]{8,32})")


def _bad() -> InvalidParameter:
    return InvalidParameter("invalid next_token", code="InvalidPaginationToken")


def decode(token: str | None) -> int:
    if not token:
        return 0
    try:
        value = int(base64.urlsafe_b64decode(token.encode() + b"==").decode())
    except Exception:
        raise _bad() from None
    if value < 0:
        raise _bad()
    return value


def encode(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")


def page(rows: list, offset: int, limit: int) -> tuple[list, str | None]:
    """rows were fetched with limit+1: return the page and the next token if more exist."""
    if len(rows) > limit:
        return rows[:limit], encode(offset + limit)
    return rows, None


# -- keyset tokens ---------------------------------------------------------------------------
def encode_key(created_at: datetime, resource_id: str) -> str:
    """The token of the position right after (created_at, resource_id)."""
    if created_at.tzinfo is None:  # the database layer stores naive UTC
        created_at = created_at.replace(tzinfo=timezone.utc)
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"k1:{micros}:{resource_id}".encode()).decode().rstrip("=")


def decode_key(token: str | None) -> tuple[datetime, str] | None:
    """-> (created_at, resource_id) a keyset token stands for, None for no token (first page).
    Anything else than a token encode_key made raises InvalidParameter (400)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
        m = _KEY.fullmatch(raw.decode("ascii"))
    except (UnicodeError, binascii.Error, ValueError):
        raise _bad() from None
    if m is None:
        raise _bad()
    # At most 17 digits: before the year 5140, so no overflow.
    return _EPOCH + timedelta(microseconds=int(m.group(1))), m.group(2)


def keyset_page(rows: list, limit: int,
                key: Callable[[Any], tuple[datetime, str]]) -> tuple[list, str | None]:
    """rows were fetched with limit+1 in key order: return the page and, if more exist, the
    token of the page's last row (key(row) -> (created_at, id))."""
    if len(rows) > limit:
        return rows[:limit], encode_key(*key(rows[limit - 1]))
    return rows, None
