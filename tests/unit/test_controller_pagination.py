"""Keyset pagination (controller/services/pagination.py): tokens round trip to the microsecond,
stay opaque, and anything token() did not make for the list's order is refused; the SQL
condition pages every row exactly once, ties included, on a real SQLite database."""
from __future__ import annotations

import base64
import json
import random
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlmodel import Session, create_engine, select

from controller.errors import InvalidParameter
from controller.models import Event, Host, Instance, InstanceType, KeyPair
from controller.services import pagination
from controller.services.pagination import Order, Page, PageRequest

IID = "i-0123456789abcdef0"
INSTANCES = Order(Instance.created_at, Instance.instance_id)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _row(created_at, instance_id=IID):
    return SimpleNamespace(created_at=created_at, instance_id=instance_id)


@pytest.mark.parametrize("ts", [
    datetime(2026, 11, 26, 23, 0, 15, 123456, tzinfo=timezone.utc),
    datetime(2026, 11, 26, 23, 0, 15, tzinfo=timezone.utc),
    datetime(1970, 1, 1, tzinfo=timezone.utc),
    datetime(2026, 11, 27, 0, 30, 0, 1, tzinfo=timezone(timedelta(hours=1))),
])
def test_key_roundtrip(ts):
    token = INSTANCES.token(_row(ts))
    assert len(token) <= 64 and "=" not in token and IID not in token
    got_ts, got_id = INSTANCES.position(token)
    assert got_ts == ts and got_ts.tzinfo is not None and got_id == IID


def test_naive_timestamps_are_utc():
    naive = datetime(2026, 11, 26, 23, 0, 15, 5)
    assert INSTANCES.position(INSTANCES.token(_row(naive)))[0] == \
        naive.replace(tzinfo=timezone.utc)


def test_no_token_is_the_first_page():
    assert INSTANCES.position(None) is None and INSTANCES.position("") is None


def test_every_order_of_the_api_fits_the_token_limit():
    # The longest keys: a 63-character host id, a 40-character type name with big numbers.
    hosts = Order(Host.host_id)
    types = Order(InstanceType.vcpus, InstanceType.memory_mib, InstanceType.name)
    longest = [hosts.token(SimpleNamespace(host_id="h" * 63)),
               types.token(SimpleNamespace(vcpus=64, memory_mib=1048576, name="t" * 40)),
               Order(Event.seq).token(SimpleNamespace(seq=2**62)),
               INSTANCES.token(_row(datetime(5000, 1, 1, tzinfo=timezone.utc), "i-" + "f" * 32))]
    assert all(len(t) <= pagination.MAX_TOKEN_LENGTH for t in longest), [len(t) for t in longest]
    assert hosts.position(longest[0]) == ("h" * 63,)
    assert types.position(longest[1]) == (64, 1048576, "t" * 40)


@pytest.mark.parametrize("bad", [
    "!!", "bm9wZQ", _b64(b"100"), "A" * 40,
    # The keyset tokens of the previous format.
    _b64(b"k1:12:i-0123456789abcdef0"),
    _b64(b"k1:123456789012345678:i-0123456789abcdef0"),
    _b64(b"\xff\xfe"),
    "\u00e9",
    # Well-formed JSON that is not a position of this order.
    _b64(b"[]"), _b64(b'[1]'), _b64(b'[1, "a", 2]'), _b64(b'{"a": 1}'), _b64(b"null"),
    _b64(b'["i-0123456789abcdef0", 1]'),                   # swapped
    _b64(b'[true, "i-0123456789abcdef0"]'),                 # a bool is no timestamp
    _b64(b'[1.5, "i-0123456789abcdef0"]'),
    _b64(b'[-5, "i-0123456789abcdef0"]'),
    _b64(b'[100000000000000000, "i-0123456789abcdef0"]'),  # 18 digits: past the year 5140
    _b64(b'[12, ""]'),
    _b64(b'[12, null]'),
    _b64(json.dumps([12, "i" * 33]).encode()),             # longer than the column
    _b64(b'[12, ["i-0123456789abcdef0"]]'),
])
def test_bad_tokens_are_invalid_parameter(bad):
    with pytest.raises(InvalidParameter) as e:
        INSTANCES.position(bad)
    assert e.value.status == 400 and e.value.code == "InvalidPaginationToken"


def test_integer_keys_refuse_what_no_column_holds():
    events = Order(Event.seq)
    assert events.position(_b64(b"[7]")) == (7,)
    for bad in (b"[true]", b"[1e3]", b'["7"]', json.dumps([2**63]).encode()):
        with pytest.raises(InvalidParameter):
            events.position(_b64(bad))


def test_an_order_needs_columns_it_can_encode():
    with pytest.raises(ValueError):
        Order()
    with pytest.raises(TypeError):
        Order(Instance.tags)  # JSON


# -- against a database ---------------------------------------------------------------------------
KEY_PAIRS = Order(KeyPair.created_at, KeyPair.key_pair_id)
TYPES = Order(InstanceType.vcpus, InstanceType.memory_mib, InstanceType.name)


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    KeyPair.__table__.create(engine)
    InstanceType.__table__.create(engine)
    rnd = random.Random(7)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with Session(engine) as s:
        # Few distinct timestamps and sizes: most rows tie on the leading columns.
        for i in rnd.sample(range(500), 60):
            s.add(KeyPair(key_pair_id=f"key-{i:017x}", account_id="acct-1", name=f"k{i}",
                          fingerprint="f", key_type="ed25519", public_key="p",
                          created_at=t0 + timedelta(seconds=rnd.randrange(4))))
            s.add(InstanceType(name=f"t{i}.x", vcpus=rnd.randrange(1, 3),
                               memory_mib=rnd.choice((512, 1024))))
        s.commit()
        yield s
    engine.dispose()


def _ids(rows) -> list[str]:
    return [getattr(r, "key_pair_id", None) or r.name for r in rows]


def _walk(s: Session, query, order: Order, size: int) -> list[list[str]]:
    pages, token = [], None
    while True:
        page = pagination.list_page(s, query, order, PageRequest(size, token), _ids)
        assert isinstance(page, Page) and len(page.items) <= size
        pages.append(page.items)
        token = page.next_token
        if token is None:
            return pages


@pytest.mark.parametrize("model, order", [(KeyPair, KEY_PAIRS), (InstanceType, TYPES)],
                         ids=["created", "sizes"])
@pytest.mark.parametrize("size", [1, 7, 59, 60, 61, 1000])
def test_pages_cover_every_row_once_in_order(session, model, order, size):
    expected = _ids(session.exec(select(model).order_by(*order.columns)))
    pages = _walk(session, select(model), order, size)
    assert [i for p in pages for i in p] == expected and len(set(expected)) == 60
    assert len(pages) == max(1, -(-len(expected) // size))  # no empty trailing page


def test_filters_apply_before_paging(session):
    q = select(InstanceType).where(InstanceType.vcpus == 2)
    expected = _ids(session.exec(q.order_by(*TYPES.columns)))
    assert 0 < len(expected) < 60
    assert [i for p in _walk(session, q, TYPES, 4) for i in p] == expected


def test_token_is_the_position_after_the_last_row_of_the_page(session):
    page = pagination.list_page(session, select(KeyPair), KEY_PAIRS, PageRequest(5), list)
    assert len(page.items) == 5
    last = page.items[-1]
    assert KEY_PAIRS.position(page.next_token) == (last.created_at, last.key_pair_id)
    # A row inserted before the position never shifts the next page.
    session.add(KeyPair(key_pair_id="key-00000000000000000", account_id="acct-1", name="early",
                        fingerprint="f", key_type="ed25519", public_key="p",
                        created_at=datetime(2025, 1, 1, tzinfo=timezone.utc)))
    session.commit()
    again = pagination.list_page(session, select(KeyPair), KEY_PAIRS,
                                 PageRequest(5, page.next_token), _ids)
    everything = _ids(session.exec(select(KeyPair).order_by(*KEY_PAIRS.columns)))
    assert again.items == everything[everything.index(last.key_pair_id) + 1:][:5]
