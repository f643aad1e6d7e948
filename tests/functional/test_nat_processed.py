"""NAT gateways' data processed billed per GiB (issue 13), end to end with fake agents and a
fake clock: the agent's cumulative counter (NetworkObserved.nat_processed, extension
nat-processed) -> deltas (a reset counted from zero) -> hourly buckets -> usage and the bill,
against amounts computed by hand here; version skew both ways (an agent without the extension
is never asked, an old agent's heartbeat answer carries no new field; an agent that was not
asked sends nothing); rows on SQLite and on PostgreSQL (64-bit byte counts)."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from agent.contract.v1 import EXTENSIONS
from tests.functional.billing_support import FakeClock
from tests.functional.fake_agent import Cloud
from tests.functional.pg import postgres as _postgres
from tests.functional.test_controller_host_networks import (custom_vpc,
                                                            public_subnet_with_nat_gateway)
from tests.functional.vpc_support import ok

GIB = 1 << 30
MIB = 1 << 20
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


def at(h: int, m: int = 0, s: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 12, day, h, m, s, tzinfo=timezone.utc)


@pytest.fixture
def clock(monkeypatch):
    return FakeClock(monkeypatch, T0)


def setup(cloud: Cloud):
    h1 = cloud.add_host("host-1", underlay_ip="192.0.2.11")
    user = cloud.account("alice")
    vpc, (public,) = custom_vpc(user)
    _, nat = public_subnet_with_nat_gateway(user, vpc, public)
    cloud.converge()
    return h1, user, nat["nat_gateway_id"]


def report(cloud, clock, agent, nat_id, t, value):
    clock.set(t)
    agent.nat_bytes[nat_id] = value
    cloud.heartbeat(agent)


def nat_gib_items(user, start="2026-12-01T00:00:00Z", end="2026-12-03T00:00:00Z"):
    doc = ok(user.get("/v1/usage", params={"start": start, "end": end}))
    return [i for i in doc["items"] if i["usage_type"] == "nat-gateway-gib"]


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def scenario(cloud, clock):
    h1, user, nat_id = setup(cloud)
    assert h1.send_nat, "the controller asks an agent that advertises nat-processed"
    # 10:00 first report 3 GiB (all new: a new counter), 10:30 5 GiB (+2), 11:10 the router
    # namespace was recreated: 1 GiB (a new counter: +1), 11:20 1.5 GiB (+0.5),
    # 11:30 the same (+0), then a price change at 12:00:30 (0.045 -> 0.09), 12:10 +4 GiB;
    # next day 00:05 +256 MiB.
    report(cloud, clock, h1, nat_id, at(10, 0, 5), 3 * GIB)
    report(cloud, clock, h1, nat_id, at(10, 30), 5 * GIB)
    report(cloud, clock, h1, nat_id, at(11, 10), GIB)
    report(cloud, clock, h1, nat_id, at(11, 20), GIB + GIB // 2)
    report(cloud, clock, h1, nat_id, at(11, 30), GIB + GIB // 2)
    clock.set(at(11, 40))
    ok(cloud.admin.post("/v1/prices", json={"usage_type": "nat-gateway-gib", "rate": "0.09",
                                            "effective_at": "2026-12-01T12:00:30Z"}), 201)
    report(cloud, clock, h1, nat_id, at(12, 0, 10), GIB + GIB // 2)  # before the change: +0
    report(cloud, clock, h1, nat_id, at(12, 10), 5 * GIB + GIB // 2)
    report(cloud, clock, h1, nat_id, at(0, 5, day=2), 5 * GIB + GIB // 2 + 256 * MIB)
    # Dec 2 01:xx: a counter far beyond 32 bits (a reset to 2^40 + 2^39: counted from zero).
    report(cloud, clock, h1, nat_id, at(1, 0, day=2), 0)
    report(cloud, clock, h1, nat_id, at(1, 5, day=2), 3 << 39)
    clock.set(at(2, 0, day=2))
    return h1, user, nat_id


postgres = _postgres  # the module's PostgreSQL server fixture (started only when asked for)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    if request.param == "sqlite":
        return None
    pg = request.getfixturevalue("postgres")
    return pg.create_database(icu_locale=os.environ.get("KUMO_TEST_PG_ICU_LOCALE"))


def test_counter_deltas_resets_buckets_and_prices(tmp_path, clock, database_url):
    cloud = Cloud(tmp_path, database_url=database_url)
    try:
        _, user, nat_id = scenario(cloud, clock)
        got = sorted((i["day"], i["rate"], i["quantity"], i["amount"]) for i in nat_gib_items(user))
        r1, r2 = Decimal("0.045"), Decimal("0.09")
        # Dec 1 at 0.045: 3 + 2 (10:xx) + 1 + 0.5 (11:xx) = 6.5 GiB; at 0.09 from 12:00:30: 4 GiB.
        # Dec 2: 0.25 GiB + 1536 GiB at 0.09.
        assert got == [("2026-12-01", "0.045", "6.500000", str(cents(r1 * Decimal("6.5")))),
                       ("2026-12-01", "0.09", "4.000000", str(cents(r2 * 4))),
                       ("2026-12-02", "0.09", "1536.250000", str(cents(r2 * Decimal("1536.25"))))]
        bill = ok(user.get("/v1/bills/2026-12"))
        (line,) = [ln for ln in bill["lines"] if ln["usage_type"] == "nat-gateway-gib"]
        assert line["unit"] == "GiB" and line["quantity"] == "1546.750000"
        assert Decimal(line["amount"]) == cents(r1 * Decimal("6.5")) + cents(r2 * 4) + \
            cents(r2 * Decimal("1536.25"))
        # The hours are billed as before, beside the bytes.
        assert [ln for ln in bill["lines"] if ln["usage_type"] == "nat-gateway-hours"]
        # Buckets, not a row per heartbeat: 10:00, 11:00, 12:00, 12:00:30, Dec 2 00:00.
        from sqlmodel import select

        from controller.models.billing import UsageQuantity
        with cloud.app.state.kumo.db.session(notify=False) as s:
            rows = s.exec(select(UsageQuantity).order_by(UsageQuantity.recorded_at)).all()
            assert [(r.recorded_at.strftime("%d %H:%M:%S"), r.quantity) for r in rows] == [
                ("01 10:00:00", 5 * GIB), ("01 11:00:00", GIB + GIB // 2),
                ("01 12:00:30", 4 * GIB), ("02 00:00:00", 256 * MIB), ("02 01:00:00", 3 << 39)]
        # CSV carries the same line.
        csv = user.get("/v1/usage", params={"start": "2026-12-01T00:00:00Z",
                                            "end": "2026-12-03T00:00:00Z", "format": "csv"})
        assert csv.status_code == 200 and "nat-gateway-gib" in csv.text
    finally:
        cloud.close()


def test_version_skew_both_ways(tmp_path, clock):
    cloud = Cloud(tmp_path)
    try:
        h1, user, nat_id = setup(cloud)
        # An agent that predates the extension: the answer never carries the new field (it
        # would refuse it), and it is never asked.
        old = cloud.add_host("host-old", underlay_ip="192.0.2.12")
        old.info = old.info.model_copy(update={"extensions": [e for e in EXTENSIONS
                                                              if e != "nat-processed"]})
        r = cloud.agent_client.post("/v1/agent/heartbeat",
                                    json=old.heartbeat_request().model_dump(mode="json"))
        assert r.status_code == 200 and "nat_processed" not in r.json()
        # An agent that was not asked (e.g. its controller predates the field) sends nothing:
        # no usage, no error.
        h1.send_nat = False
        h1.nat_bytes[nat_id] = 7 * GIB
        body = h1.heartbeat_request().model_dump(mode="json")
        assert "nat_processed" not in body["network"]
        assert cloud.agent_client.post("/v1/agent/heartbeat", json=body).status_code == 200
        assert nat_gib_items(user) == []
        # Counters of unknown gateways are ignored; out-of-range values refused (400).
        h1.send_nat = True
        h1.nat_bytes = {"nat-0000000000000dead": GIB}
        cloud.heartbeat(h1)
        assert nat_gib_items(user) == []
        h1.nat_bytes = {nat_id: 2**63}
        r = cloud.agent_client.post("/v1/agent/heartbeat",
                                    json=h1.heartbeat_request().model_dump(mode="json"))
        assert r.status_code == 400, r.text
    finally:
        cloud.close()


def test_instance_types_show_the_current_list_price(tmp_path, clock):
    """Not NAT, but issue 13's other loose end: GET /v1/instance-types shows the price list's
    rate in effect now (what a run starting now is billed), not the price at creation; a
    scheduled change shows from its moment."""
    cloud = Cloud(tmp_path)
    try:
        def micro():
            page = ok(cloud.admin.get("/v1/instance-types"))
            return next(t for t in page["items"] if t["name"] == "t3.micro")["hourly_price"]

        assert micro() == 0.0104
        ok(cloud.admin.post("/v1/prices", json={"usage_type": "instance-hours",
                                                "dimension": "t3.micro", "rate": "0.02"}), 201)
        ok(cloud.admin.post("/v1/prices", json={"usage_type": "instance-hours",
                                                "dimension": "t3.micro", "rate": "0.03",
                                                "effective_at": "2026-12-01T12:00:00Z"}), 201)
        assert micro() == 0.02
        clock.set(at(12, 0))
        assert micro() == 0.03
        created = ok(cloud.admin.post("/v1/instance-types", json={
            "name": "x1.tiny", "vcpus": 1, "memory_mib": 128, "hourly_price": 0.5}), 201)
        assert created["hourly_price"] == 0.5
        retired = ok(cloud.admin.delete("/v1/instance-types/t3.micro"))
        assert retired["hourly_price"] == 0.03 and retired["retired"] is True
    finally:
        cloud.close()
