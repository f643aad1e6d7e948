"""List paging, the one mechanism every list of the API uses: keyset pages in SQL.

Each list has a stable `Order`: columns whose values together identify a row (the last one is
unique), e.g. (created_at, vpc_id). A page is the first `max_results` rows of the list's query
strictly after a position in that order, fetched with LIMIT max_results + 1 (one more row says
whether another page follows). `next_token` is the position of the page's last row, or None on
the last page. So a late page costs what the first one does, and rows inserted meanwhile never
shift the pages: every row that exists for the whole walk is seen exactly once.

A token is base64url (unpadded) of a JSON array of the position's values, datetimes as
microseconds since the epoch; clients treat it as opaque. Decoding checks it against the list's
order (number and type of values, string lengths), so anything else answers 400
InvalidPaginationToken; the values only ever reach SQL as bound parameters.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import and_, or_
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session

from controller.errors import InvalidParameter

T = TypeVar("T")
DEFAULT_MAX_RESULTS = 100
MAX_MAX_RESULTS = 1000
#: Longest token the API accepts (the longest key, a 63-character host id, encodes to 92).
MAX_TOKEN_LENGTH = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Microseconds of a datetime value: at most 17 digits (before the year 5140: no overflow).
_MAX_MICROS = 10**17
_MAX_INT = 2**63  # BIGINT
_DEFAULT_STRING_LENGTH = 255


@dataclass(frozen=True)
class PageRequest:
    """What a client asks of a list: the page size and the token of the previous page."""

    max_results: int = DEFAULT_MAX_RESULTS
    next_token: str | None = None


class Page(BaseModel, Generic[T]):
    """Every list's answer: the page's items and the token of the next page (None: the last)."""

    items: list[T]
    next_token: str | None = None


def invalid_token() -> InvalidParameter:
    return InvalidParameter("invalid next_token", code="InvalidPaginationToken")


class Order:
    """A list's stable order: ascending on `columns` (ORM attributes), the last one unique."""

    def __init__(self, *columns):
        if not columns:
            raise ValueError("an order needs at least one column")
        self.columns = columns
        self._kinds = tuple(_kind(c) for c in columns)

    # -- tokens ---------------------------------------------------------------------------------
    def token(self, row: Any) -> str:
        """The token of the position right after `row`."""
        values = [_dump(kind, getattr(row, col.key))
                  for kind, col in zip(self._kinds, self.columns)]
        raw = json.dumps(values, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def position(self, token: str | None) -> tuple | None:
        """The key values a token stands for; None for no token (the first page). Anything
        token() did not make for this order raises InvalidParameter (400)."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
            values = json.loads(raw.decode("utf-8"))
        except (UnicodeError, binascii.Error, ValueError):
            raise invalid_token() from None
        if not isinstance(values, list) or len(values) != len(self.columns):
            raise invalid_token()
        return tuple(_load(kind, v) for kind, v in zip(self._kinds, values))

    # -- queries --------------------------------------------------------------------------------
    def after(self, position: Sequence):
        """The SQL condition "the row's key is greater than `position`", spelled as
        c1 >= v1 AND (c1 > v1 OR (c2 >= v2 AND (c2 > v2 OR ...))) so an index on the
        columns serves the range on its first column."""
        def greater(cols, vals):
            col, val = cols[0], vals[0]
            if len(cols) == 1:
                return col > val
            return and_(col >= val, or_(col > val, greater(cols[1:], vals[1:])))
        return greater(self.columns, tuple(position))

    def select_page(self, query, position: Sequence | None, limit: int):
        """`query` in this order, strictly after `position`, at most `limit` rows."""
        if position is not None:
            query = query.where(self.after(position))
        return query.order_by(*self.columns).limit(limit)


def list_page(s: Session, query, order: Order, page: PageRequest,
              describe: Callable[[list], list]) -> Page:
    """One page of `query` in `order`: its rows turned into public shapes by `describe` (a whole
    page at once, so it can load what the shapes need in a few queries)."""
    position = order.position(page.next_token)
    rows = list(s.exec(order.select_page(query, position, page.max_results + 1)))
    if len(rows) > page.max_results:
        rows = rows[:page.max_results]
        return Page(items=describe(rows), next_token=order.token(rows[-1]))
    return Page(items=describe(rows), next_token=None)


# -- key values --------------------------------------------------------------------------------
def _kind(column) -> tuple[type, int | None]:
    """(Python type, longest string) of a column's values."""
    col_type = column.type
    if isinstance(col_type, TypeDecorator):  # e.g. controller.db.UtcDateTime
        col_type = col_type.impl_instance
    python_type = col_type.python_type
    if python_type not in (datetime, int, str):
        raise TypeError(f"cannot page on {column} ({python_type.__name__})")
    if python_type is not str:
        return python_type, None
    return python_type, getattr(col_type, "length", None) or _DEFAULT_STRING_LENGTH


def _dump(kind: tuple[type, int | None], value) -> int | str:
    if kind[0] is datetime:
        if value.tzinfo is None:  # the database layer stores naive UTC
            value = value.replace(tzinfo=timezone.utc)
        return (value - _EPOCH) // timedelta(microseconds=1)
    return value


def _load(kind: tuple[type, int | None], value):
    python_type, length = kind
    if python_type is str:
        if not isinstance(value, str) or not 0 < len(value) <= length:
            raise invalid_token()
        return value
    # bool is an int to Python, never to a key.
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_token()
    if python_type is datetime:
        if not 0 <= value < _MAX_MICROS:
            raise invalid_token()
        return _EPOCH + timedelta(microseconds=value)
    if not -_MAX_INT <= value < _MAX_INT:
        raise invalid_token()
    return value
