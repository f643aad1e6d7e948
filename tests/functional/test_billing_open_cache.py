"""The open bill's kept settled days (controller/services/open_bills.py) against the bill
computed from every interval (bills.get(cached=False)): equal documents, Decimal for Decimal,
over a month of many transitions, runs across midnights, sub-minute runs, price changes (one to
an equal rate written differently) and NAT bytes, read at many instants; and writes into a
settled day (a late close, a backfilled old interval, late bytes) show on the next read. Also the
start-up metering backfill (controller/services/metering_backfill.py)."""
from __future__ import annotations

import os
import random
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import insert, update
from sqlmodel import select

from controller import db_migrate
from controller.db import Database
from controller.models import Account, ElasticIp, Instance, NatGateway, Snapshot, Volume
from controller.models.billing import Price, UsageInterval, UsageQuantity
from controller.services import (bills, instance_types, metering, metering_backfill, open_bills,
                                 prices)
from tests.functional.pg import postgres as _postgres

MONTH = "2026-11"
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
ADMIN = SimpleNamespace(account_id="admin", name="admin", is_admin=True)
ACCT = "acct-a"


postgres = _postgres  # the module's PostgreSQL server fixture (started only when asked for)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(tmp_path, request):
    if request.param == "sqlite":
        d = Database(f"sqlite:///{tmp_path}/bills.db")
    else:
        d = Database(request.getfixturevalue("postgres").create_database(
            icu_locale=os.environ.get("KUMO_TEST_PG_ICU_LOCALE")))
    db_migrate.upgrade(d)
    instance_types.seed(d)
    prices.seed(d)
    open_bills.clear()
    with d.session() as s:
        for a in (ACCT, "acct-b"):
            s.add(Account(account_id=a, name=a, is_admin=False, api_key_hash=a * 4,
                          created_at=START - timedelta(days=40)))
    yield d
    open_bills.clear()
    d.dispose()


@pytest.fixture
def builds(monkeypatch):
    """How many times the settled days were computed."""
    calls = []
    real = open_bills._build

    def counting(*a, **kw):
        calls.append(a[3])
        return real(*a, **kw)

    monkeypatch.setattr(open_bills, "_build", counting)
    return calls


def _price(s, usage_type: str, dimension: str, rate: str, at: datetime) -> None:
    s.add(Price(usage_type=usage_type, dimension=dimension, rate=rate, effective_at=at,
                created_at=START))


def populate(db: Database, seed: int = 7) -> None:
    """A month of two accounts' rows as metering would have written them (at their times)."""
    rng = random.Random(seed)
    with db.session() as s:
        # Price changes in the month, one of them at a day boundary and one to the same rate
        # written with another exponent (the line's rate must not depend on row order).
        _price(s, "instance-hours", "t3.micro", "0.0200", START + timedelta(days=3, hours=5))
        _price(s, "instance-hours", "t3.micro", "0.02", START + timedelta(days=6))
        _price(s, "instance-hours", "t3.micro", "0.0157", START + timedelta(days=11, seconds=7))
        _price(s, "volume-gib-month", "", "0.1", START + timedelta(days=9, hours=13))
        _price(s, "nat-gateway-gib", "", "0.05", START + timedelta(days=14))
    rows = []
    for acct in (ACCT, "acct-b"):
        for r in range(12):
            rid = f"i-{acct[-1]}{r:03d}"
            rows.append(dict(account_id=acct, resource_id=rid, kind="root-volume",
                             usage_type="volume-gib-month", dimension="", quantity=8 + r,
                             started_at=START - timedelta(days=2, hours=r), ended_at=None))
            t = START + timedelta(seconds=rng.randint(0, 3600))
            while t < START + timedelta(days=30):
                length = rng.choice([20, 59, 61, 900, 5000, 40000, 100000])
                end = t + timedelta(seconds=length)
                if r % 5 == 0 and rng.random() < 0.1:  # runs across midnight, seconds apart
                    t = (t + timedelta(days=1)).replace(hour=23, minute=59, second=50)
                    end = t + timedelta(seconds=rng.choice([5, 30, 70]))
                rows.append(dict(account_id=acct, resource_id=rid, kind="instance",
                                 usage_type="instance-hours", dimension="t3.micro", quantity=1,
                                 started_at=t, ended_at=end))
                t = end + timedelta(seconds=rng.randint(1, 30000))
        rows.append(dict(account_id=acct, resource_id=f"vol-{acct}", kind="volume",
                         usage_type="volume-gib-month", dimension="", quantity=100,
                         started_at=START + timedelta(days=1, hours=3), ended_at=None))
    # The rows are inserted in shuffled order: the database returns a resource's rows in
    # whatever order it likes, and the answer must not depend on it.
    rng.shuffle(rows)
    naive = [{k: (v.replace(tzinfo=None) if isinstance(v, datetime) else v)
              for k, v in r.items()} for r in rows]
    with db.engine.begin() as conn:
        conn.execute(insert(UsageInterval.__table__), naive)
        conn.execute(insert(UsageQuantity.__table__), [
            dict(account_id=ACCT, resource_id="nat-1", kind="nat-gateway",
                 usage_type="nat-gateway-gib", dimension="", quantity=rng.randint(1, 10**12),
                 recorded_at=(START + timedelta(hours=h)).replace(tzinfo=None))
            for h in range(0, 30 * 24, 5)])


def both(db: Database, now: datetime, account: str = ACCT) -> dict:
    fresh = bills.get(db, ADMIN, MONTH, account, now=now, cached=False)
    cached = bills.get(db, ADMIN, MONTH, account, now=now)
    assert cached == fresh, now
    return cached


def test_cached_open_bill_equals_the_full_computation(db, builds):
    populate(db)
    now, seen = START + timedelta(minutes=5), set()
    rng = random.Random(3)
    while now < START + timedelta(days=30):
        doc = both(db, now)
        seen.add(doc["total"])
        # Live writes at `now`, as metering makes them: stops and starts of carried and new
        # rows, none inside a settled day.
        with db.session() as s:
            rid = f"i-a{rng.randrange(12):03d}"
            metering.open_interval(s, account_id=ACCT, resource_id=rid, kind="instance",
                                   usage_type="instance-hours", at=now, dimension="t3.micro")
            if rng.random() < 0.3:
                metering.close_interval(s, f"i-a{rng.randrange(12):03d}", "volume-gib-month",
                                        now)
        assert both(db, now + timedelta(seconds=30))["total"] >= doc["total"]
        now += timedelta(hours=rng.randint(5, 31), seconds=rng.randint(0, 3599))
    assert len(seen) > 20
    # The settled days were computed from the month's start once; each later midnight only
    # added the days just settled.
    assert len(builds) == 1
    doc = both(db, START + timedelta(days=29, hours=23))
    assert {ln["usage_type"] for ln in doc["lines"]} == {
        "instance-hours", "volume-gib-month", "nat-gateway-gib"}
    rates = {ln["usage_type"]: ln["rate"] for ln in doc["lines"]}
    assert rates["nat-gateway-gib"] is None and rates["instance-hours"] is None
    # The other account's bill is its own, and kept apart.
    both(db, START + timedelta(days=29, hours=23), "acct-b")


def test_equal_rates_written_differently_show_one_way(db):
    """Two price entries of equal rates ("0.0200" then "0.02"): one item per day whatever the
    row order, showing the shorter writing; within one day only."""
    with db.session() as s:
        _price(s, "instance-hours", "t3.micro", "0.0200", START)
        _price(s, "instance-hours", "t3.micro", "0.02", START + timedelta(hours=12))
        for h in (2, 14, 1, 13):  # rows of both rates, out of order
            s.add(UsageInterval(account_id=ACCT, resource_id="i-1", kind="instance",
                                usage_type="instance-hours", dimension="t3.micro",
                                started_at=START + timedelta(hours=h),
                                ended_at=START + timedelta(hours=h, minutes=30)))
    doc = both(db, START + timedelta(days=2))
    (line,) = doc["lines"]
    assert line["rate"] == "0.02" and line["seconds"] == 4 * 1800 and line["amount"] == "0.0400"


def test_a_late_write_into_a_settled_day_shows_on_the_next_read(db, builds):
    populate(db)
    now = START + timedelta(days=20, hours=12)
    before = both(db, now)
    assert len(builds) == 1
    both(db, now + timedelta(minutes=1))
    assert len(builds) == 1  # kept
    # 1. A volume a host never had is ended at its old updated_at (controller/volume_sync.py):
    #    an interval open since day 2 closes on day 10.
    with db.session() as s:
        metering.close_interval(s, f"vol-{ACCT}", "volume-gib-month",
                                START + timedelta(days=10))
    after = both(db, now + timedelta(minutes=2))
    assert after["total"] < before["total"] and len(builds) == 2
    # 2. An old interval added later (a backfill, a late report): it started on day 5.
    with db.session() as s:
        s.add(UsageInterval(account_id=ACCT, resource_id="i-late", kind="instance",
                            usage_type="instance-hours", dimension="t3.micro",
                            started_at=START + timedelta(days=5),
                            ended_at=START + timedelta(days=6, hours=7)))
    later = both(db, now + timedelta(minutes=3))
    assert later["total"] > after["total"] and len(builds) == 3
    # 3. Late bytes added to a bucket of day 3.
    with db.session() as s:
        q = UsageQuantity
        bucket = s.exec(select(q).where(q.account_id == ACCT).order_by(q.recorded_at)).first()
        s.exec(update(q).where(q.id == bucket.id).values(quantity=q.quantity + 50 * 2**30))
    bytes_late = both(db, now + timedelta(minutes=4))
    assert bytes_late["total"] > later["total"] and len(builds) == 4
    # 4. Another account's old row changes nothing of this one's kept days...
    with db.session() as s:
        s.add(UsageInterval(account_id="acct-b", resource_id="i-b-late", kind="instance",
                            usage_type="instance-hours", dimension="t3.micro",
                            started_at=START + timedelta(days=5),
                            ended_at=START + timedelta(days=6)))
    assert both(db, now + timedelta(minutes=5))["total"] == bytes_late["total"]
    assert len(builds) == 4
    # 5. ...nor does an ordinary stop today of a row open since before the settled midnight,
    #    and a new price scheduled recomputes (any price change does).
    with db.session() as s:
        metering.close_interval(s, "i-a003", "volume-gib-month", now + timedelta(minutes=6))
    both(db, now + timedelta(minutes=7))
    assert len(builds) == 4
    with db.session() as s:
        _price(s, "instance-hours", "t3.micro", "0.5", now + timedelta(days=1))
    both(db, now + timedelta(minutes=8))
    assert len(builds) == 5
    # 6. The next midnights settle: their days are added to the kept ones (no recomputation),
    #    but a late write into a kept day still recomputes afterwards.
    both(db, now + timedelta(hours=12, minutes=11))
    both(db, now + timedelta(days=2, hours=12, minutes=11))
    assert len(builds) == 5
    with db.session() as s:
        metering.close_interval(s, "i-a004", "volume-gib-month", START + timedelta(days=21))
    both(db, now + timedelta(days=2, hours=13))
    assert len(builds) == 6


def test_backfill_opens_only_the_missing_intervals(db):
    """metering_backfill at start: one interval per billable resource without its open one,
    from now, with the hooks' fields; none for what is not billable; none on a second run."""
    now = START + timedelta(days=3)
    n = now.replace(tzinfo=None)
    inst = dict(reservation_id="r-1", image_id="ami-1", instance_type="t3.micro", vcpus=2,
                memory_mib=1024, root_disk_gib=9, created_at=n, updated_at=n, account_id=ACCT)
    with db.engine.begin() as conn:
        conn.execute(insert(Instance.__table__), [
            dict(inst, instance_id="i-run", state="running"),
            dict(inst, instance_id="i-stopped", state="stopped"),
            dict(inst, instance_id="i-gone", state="terminated"),
            dict(inst, instance_id="i-metered", state="running")])
        vol = dict(account_id=ACCT, size_gib=20, availability_zone="az", created_at=n,
                   updated_at=n)
        conn.execute(insert(Volume.__table__), [dict(vol, volume_id="vol-1", state="in-use"),
                                               dict(vol, volume_id="vol-2", state="deleted")])
        snap = dict(account_id=ACCT, volume_id="vol-1", volume_size_gib=20, start_time=n,
                    created_at=n, updated_at=n, state="completed")
        # One measured by its node (3 GiB + 1 byte stored: billed 4), one from before stored
        # sizes (billed by its volume's size).
        conn.execute(insert(Snapshot.__table__), [
            dict(snap, snapshot_id="snap-1", stored_bytes=None),
            dict(snap, snapshot_id="snap-2", stored_bytes=3 * 2**30 + 1)])
        conn.execute(insert(ElasticIp.__table__), [dict(allocation_id="eipalloc-1",
                                                        account_id=ACCT, public_ip="192.0.2.1",
                                                        created_at=n)])
        conn.execute(insert(NatGateway.__table__), [dict(
            nat_gateway_id=f"nat-{st}", account_id=ACCT, vpc_id="vpc-1", subnet_id="subnet-1",
            state=st, created_at=n) for st in ("available", "deleted")])
    with db.session() as s:
        for usage_type in ("instance-hours", "volume-gib-month"):
            metering.open_interval(s, account_id=ACCT, resource_id="i-metered", kind="x",
                                   usage_type=usage_type, at=START)
    with db.session() as s:
        assert metering_backfill.backfill(s, now) == 8
    with db.session() as s:
        got = {(r.resource_id, r.usage_type): (r.kind, r.quantity, r.dimension, r.started_at)
               for r in s.exec(select(UsageInterval).where(UsageInterval.started_at == now))}
        assert metering_backfill.backfill(s, now + timedelta(hours=1)) == 0
    assert got == {
        ("i-run", "instance-hours"): ("instance", 1, "t3.micro", now),
        ("i-run", "volume-gib-month"): ("root-volume", 9, "", now),
        ("i-stopped", "volume-gib-month"): ("root-volume", 9, "", now),
        ("vol-1", "volume-gib-month"): ("volume", 20, "", now),
        ("snap-1", "snapshot-gib-month"): ("snapshot", 20, "", now),
        ("snap-2", "snapshot-gib-month"): ("snapshot", 4, "", now),
        ("eipalloc-1", "public-ipv4-hours"): ("public-ip", 1, "", now),
        ("nat-available", "nat-gateway-hours"): ("nat-gateway", 1, "", now)}
