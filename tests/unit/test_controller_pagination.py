"""Keyset pagination tokens: round trip to the microsecond, opacity, and refusal of anything
encode_key did not make (offset tokens of other lists included)."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from controller.errors import InvalidParameter
from controller.services import pagination

IID = "i-0123456789abcdef0"


@pytest.mark.parametrize("ts", [
    datetime(2026, 11, 26, 23, 0, 15, 123456, tzinfo=timezone.utc),
    datetime(2026, 11, 26, 23, 0, 15, tzinfo=timezone.utc),
    datetime(1970, 1, 1, tzinfo=timezone.utc),
    datetime(2026, 11, 27, 0, 30, 0, 1, tzinfo=timezone(timedelta(hours=1))),
])
def test_key_roundtrip(ts):
    token = pagination.encode_key(ts, IID)
    assert len(token) <= 64 and "=" not in token and IID not in token
    got_ts, got_id = pagination.decode_key(token)
    assert got_ts == ts and got_ts.tzinfo is not None and got_id == IID


def test_naive_timestamps_are_utc():
    naive = datetime(2026, 11, 26, 23, 0, 15, 5)
    assert pagination.decode_key(pagination.encode_key(naive, IID))[0] == \
        naive.replace(tzinfo=timezone.utc)


def test_no_token_is_the_first_page():
    assert pagination.decode_key(None) is None and pagination.decode_key("") is None


@pytest.mark.parametrize("bad", [
    "!!", "bm9wZQ", pagination.encode(100), "A" * 40,
    base64.urlsafe_b64encode(b"k1:12:i-0123456789abcdef0:x").decode(),
    base64.urlsafe_b64encode(b"k1::i-0123456789abcdef0").decode(),
    base64.urlsafe_b64encode(b"k1:12:I-0123456789ABCDEF0").decode(),
    base64.urlsafe_b64encode(b"k1:123456789012345678:i-0123456789abcdef0").decode(),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    "\u00e9",
])
def test_bad_tokens_are_invalid_parameter(bad):
    with pytest.raises(InvalidParameter) as e:
        pagination.decode_key(bad)
    assert e.value.status == 400 and e.value.code == "InvalidPaginationToken"


def test_keyset_page_token_is_the_last_row_of_the_page():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [SimpleNamespace(created_at=t0 + timedelta(seconds=i // 2), instance_id=f"i-{i:017x}")
            for i in range(5)]
    key = lambda r: (r.created_at, r.instance_id)  # noqa: E731
    items, token = pagination.keyset_page(rows, 4, key)
    assert items == rows[:4] and pagination.decode_key(token) == key(rows[3])
    assert pagination.keyset_page(rows, 5, key) == (rows, None)
    assert pagination.keyset_page([], 5, key) == ([], None)
