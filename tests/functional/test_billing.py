"""Billing end to end with a fake clock (tests/functional/billing_support.py): instances,
volumes and an elastic IP driven through the API and the reconciler at chosen instants, their
usage and bills checked against amounts computed by hand below (docs/billing.md's rules: per
second, 60 s minimum per start, 730-hour GiB-month, items rounded half-up to 0.0001, totals to
0.01, items cut at UTC midnights and at price changes)."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from tests.functional.billing_support import FakeClock, restart
from tests.functional.volume_cloud import VolumeCloud

T0 = datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc)


def at(h: int, m: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 12, day, h, m, tzinfo=timezone.utc)


@pytest.fixture
def clock(monkeypatch):
    return FakeClock(monkeypatch, T0)


@pytest.fixture
def cloud(tmp_path, clock):
    c = VolumeCloud(tmp_path)
    c.image()
    c.agent = c.add_volume_host("host-1")
    yield c
    c.close()


def step(cloud, clock, t: datetime) -> None:
    clock.set(t)
    cloud.heartbeat()
    cloud.converge()


def ok(r, status: int = 200):
    assert r.status_code == status, r.text
    return r.json()


def items_by(doc: dict, *keys: str) -> dict:
    return {tuple(i[k] for k in keys): i for i in doc["items"]}


def scenario(cloud, clock, with_restart: bool = False):
    """The issue's scenario. Returns (alice's key, ids)."""
    r = cloud.admin.post("/v1/accounts", json={"name": "alice"})
    key = ok(r, 201)["api_key"]
    alice = cloud.client(key)
    iid = cloud.launch(alice, instance_type="t3.micro", associate_public_ip=False)
    vol = ok(alice.post("/v1/volumes", json={"size_gib": 8}), 201)["volume_id"]
    eip = ok(alice.post("/v1/elastic-ips"), 201)["allocation_id"]
    step(cloud, clock, T0)
    assert cloud.instance(alice, iid)["state"] == "running"
    # 90 min running (across the month's and the day's end), then stopped for 2 h.
    step(cloud, clock, at(0, 30))
    ok(alice.post(f"/v1/instances/{iid}/stop"))
    step(cloud, clock, at(0, 31))
    assert cloud.instance(alice, iid)["state"] == "stopped"
    step(cloud, clock, at(2, 30))
    ok(alice.patch(f"/v1/instances/{iid}", json={"instance_type": "t3.small"}))
    ok(alice.post(f"/v1/instances/{iid}/start"))
    step(cloud, clock, at(2, 30))
    assert cloud.instance(alice, iid)["instance_type"] == "t3.small"
    # A price change in the middle of the run: t3.small from 0.0208 to 0.0300 at 02:45.
    clock.set(at(2, 40))
    ok(cloud.admin.post("/v1/prices", json={"usage_type": "instance-hours",
                                            "dimension": "t3.small", "rate": "0.0300",
                                            "effective_at": at(2, 45).isoformat()}), 201)
    if with_restart:  # the controller goes away for 10 minutes mid-run
        restart(cloud)
        alice = cloud.client(key)
        clock.set(at(2, 50))
    step(cloud, clock, at(3, 0))
    ok(alice.post(f"/v1/instances/{iid}/terminate"))
    step(cloud, clock, at(3, 0))
    assert cloud.instance(alice, iid)["state"] == "terminated"
    clock.set(at(4, 0))  # the elastic IP, never associated, is released after 5 h
    ok(alice.delete(f"/v1/elastic-ips/{eip}"))
    clock.set(at(23, 0, day=10))  # the volume is deleted after 10 days
    cloud.heartbeat()
    ok(alice.delete(f"/v1/volumes/{vol}"))
    clock.set(at(12, 0, day=11))
    return key, iid, vol, eip


# The hand computation (rates: t3.micro 0.0104/h, t3.small 0.0208/h then 0.0300/h from 02:45,
# volumes 0.08 per GiB-month of 730 h = 2,628,000 s, public IPv4 0.005/h):
#   t3.micro 23:00-00:30: Nov 30 3600 s x 0.0104/3600 = 0.0104; Dec 1 1800 s = 0.0052
#   t3.small 02:30-03:00: 900 s x 0.0208/3600 = 0.0052; 900 s x 0.0300/3600 = 0.0075
#   root disk 1 GiB 23:00-03:00: Nov 30 3600 s x 0.08/2628000 = 0.000109.. -> 0.0001;
#                                Dec 1 10800 s -> 0.000328.. -> 0.0003
#   volume 8 GiB Nov 30 23:00 - Dec 10 23:00: Nov 30 8 x 3600 x 0.08/2628000 = 0.000876.. ->
#     0.0009; Dec 1..9 8 x 86400 x 0.08/2628000 = 0.021041.. -> 0.0210 each;
#     Dec 10 8 x 82800 x 0.08/2628000 = 0.020164.. -> 0.0202
#   elastic IP 23:00-04:00: Nov 30 1 h = 0.0050; Dec 1 4 h = 0.0200
NOV = [Decimal(x) for x in ("0.0104", "0.0001", "0.0009", "0.0050")]
DEC = [Decimal(x) for x in ("0.0052", "0.0052", "0.0075", "0.0003", "0.0202", "0.0200")] \
    + [Decimal("0.0210")] * 9


def test_hand_computation(cloud, clock):
    key, iid, vol, eip = scenario(cloud, clock)
    alice = cloud.client(key)
    doc = ok(alice.get("/v1/usage", params={"start": T0.isoformat(),
                                            "end": at(0, 0, day=12).isoformat()}))
    items = items_by(doc, "resource_id", "usage_type", "day", "rate")
    assert items[(iid, "instance-hours", "2026-11-30", "0.0104")]["amount"] == "0.0104"
    assert items[(iid, "instance-hours", "2026-11-30", "0.0104")]["seconds"] == 3600
    assert items[(iid, "instance-hours", "2026-12-01", "0.0104")]["amount"] == "0.0052"
    assert items[(iid, "instance-hours", "2026-12-01", "0.0208")]["seconds"] == 900
    assert items[(iid, "instance-hours", "2026-12-01", "0.0208")]["amount"] == "0.0052"
    assert items[(iid, "instance-hours", "2026-12-01", "0.0300")]["amount"] == "0.0075"
    assert items[(iid, "instance-hours", "2026-12-01", "0.0300")]["dimension"] == "t3.small"
    assert items[(iid, "volume-gib-month", "2026-12-01", "0.08")]["seconds"] == 10800
    assert items[(vol, "volume-gib-month", "2026-12-05", "0.08")]["amount"] == "0.0210"
    assert items[(vol, "volume-gib-month", "2026-12-10", "0.08")]["amount"] == "0.0202"
    assert items[(eip, "public-ipv4-hours", "2026-12-01", "0.005")]["quantity"] == "4.000000"
    assert len(doc["items"]) == len(NOV) + len(DEC)
    assert Decimal(doc["total"]) == (sum(NOV) + sum(DEC)).quantize(Decimal("0.01"))
    # Every grouping adds up to the same total; by resource gives one row per resource and type.
    for by in ("resource", "usage_type", "day"):
        grouped = ok(alice.get("/v1/usage", params={
            "start": T0.isoformat(), "end": at(0, 0, day=12).isoformat(), "group_by": by}))
        assert grouped["total"] == doc["total"]
        assert sum(Decimal(i["amount"]) for i in grouped["items"]) == sum(NOV) + sum(DEC)
    by_resource = ok(alice.get("/v1/usage", params={
        "start": T0.isoformat(), "end": at(0, 0, day=12).isoformat(), "group_by": "resource"}))
    runs = items_by(by_resource, "resource_id", "usage_type", "dimension")
    micro, small = runs[(iid, "instance-hours", "t3.micro")], runs[(iid, "instance-hours",
                                                                    "t3.small")]
    assert micro["seconds"] == 5400 and micro["rate"] == "0.0104" and micro["day"] is None
    assert small["seconds"] == 1800 and small["rate"] is None  # two rates: the price change
    assert small["amount"] == "0.0127"
    # The bills: November closed, December (the running month) open.
    nov = ok(alice.get("/v1/bills/2026-11"))
    assert nov["status"] == "closed" and nov["total"] == str(sum(NOV).quantize(Decimal("0.01")))
    dec = ok(alice.get("/v1/bills/2026-12"))
    assert dec["status"] == "open" and Decimal(dec["total"]) == sum(DEC).quantize(
        Decimal("0.01"))
    lines = {(ln["usage_type"], ln["dimension"]): ln for ln in dec["lines"]}
    assert lines[("volume-gib-month", "")]["amount"] == str(
        Decimal("0.0003") + Decimal("0.0202") + 9 * Decimal("0.0210"))
    # CSV has the same items.
    r = alice.get("/v1/usage", params={"start": T0.isoformat(),
                                       "end": at(0, 0, day=12).isoformat(), "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = r.text.strip().splitlines()
    assert rows[0].startswith("account_id,resource_id,kind,usage_type")
    assert len(rows) == 1 + len(doc["items"])


def test_restart_mid_run_and_recomputation_give_identical_totals(tmp_path, monkeypatch):
    totals = []
    clock = FakeClock(monkeypatch, T0)
    for n, with_restart in enumerate((False, True)):
        clock.t = T0  # the same story again, on a new database
        c = VolumeCloud(tmp_path / str(n))
        try:
            c.image()
            c.add_volume_host("host-1")
            key, *_ = scenario(c, clock, with_restart=with_restart)
            alice = c.client(key)
            period = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-31T00:00:00Z"}
            first = ok(alice.get("/v1/usage", params=period))
            second = ok(alice.get("/v1/usage", params=period))
            assert first == second
            totals.append((first["total"], [i["amount"] for i in first["items"]]))
        finally:
            c.close()
    assert totals[0] == totals[1]
    assert Decimal(totals[0][0]) == (sum(NOV) + sum(DEC)).quantize(Decimal("0.01"))


def test_closed_bill_never_changes(cloud, clock):
    key, iid, *_ = scenario(cloud, clock)
    alice = cloud.client(key)
    clock.set(datetime(2027, 1, 1, 0, 5, tzinfo=timezone.utc))
    assert ok(alice.get("/v1/bills/2026-12"))["status"] == "open"  # within the closing grace
    clock.set(datetime(2027, 1, 2, tzinfo=timezone.utc))
    closed = ok(alice.get("/v1/bills/2026-12"))
    assert closed["status"] == "closed"
    # Later price changes (only ever from now on) leave it alone; so does a forged past price.
    ok(cloud.admin.post("/v1/prices", json={"usage_type": "volume-gib-month", "rate": "9"}), 201)
    from controller.models.billing import Price
    with cloud.db.session() as s:
        s.add(Price(usage_type="public-ipv4-hours", dimension="", rate="7",
                    effective_at=datetime(2026, 12, 1, tzinfo=timezone.utc),
                    created_at=clock.now()))
    assert ok(alice.get("/v1/bills/2026-12")) == closed


def test_sixty_second_minimum_and_bill_admin_view(cloud, clock):
    r = cloud.admin.post("/v1/accounts", json={"name": "bob"})
    bob_id, bob = ok(r, 201)["account_id"], cloud.client(r.json()["api_key"])
    iid = cloud.launch(bob, instance_type="t3.nano", associate_public_ip=False)
    step(cloud, clock, T0)
    clock.set(T0.replace(second=20, microsecond=999))  # fractions of a second are dropped
    ok(bob.post(f"/v1/instances/{iid}/stop"))
    clock.set(at(11, 0))
    doc = ok(bob.get("/v1/usage", params={"start": "2026-11-30T00:00:00Z",
                                          "end": at(12, 0).isoformat()}))
    run = items_by(doc, "usage_type")[("instance-hours",)]
    assert run["seconds"] == 60 and run["amount"] == "0.0001"  # 0.0052 x 60/3600 = 0.0000867
    # Admins see every account's bill; the owner sees its own only.
    all_bills = ok(cloud.admin.get("/v1/bills", params={"month": "2026-12"}))["items"]
    assert bob_id in {b["account_id"] for b in all_bills}
    assert ok(cloud.admin.get("/v1/bills/2026-12", params={"account_id": bob_id}))["total"] \
        == ok(bob.get("/v1/bills/2026-12"))["total"]
    assert [b["account_id"] for b in ok(bob.get("/v1/bills",
                                                params={"month": "2026-12"}))["items"]] == [bob_id]


def test_budget_crossing_records_one_event_and_shows_on_the_bill(cloud, clock):
    key, *_ = scenario(cloud, clock)
    alice = cloud.client(key)
    ok(alice.put("/v1/budget", json={"monthly_limit": "0.10"}))
    dec = ok(alice.get("/v1/bills/2026-12"))
    assert dec["budget"]["exceeded"] is True and dec["budget"]["monthly_limit"] == "0.10"
    ok(alice.get("/v1/bills/2026-12"))
    from controller.services import budgets
    budgets.evaluate_all(cloud.db)
    events = ok(alice.get("/v1/events", params={"resource_type": "budget"}))["items"]
    assert len(events) == 1 and events[0]["to_state"] == "exceeded"
    assert events[0]["reason"].startswith("2026-12:")


def test_dry_run_estimate_creates_nothing(cloud, clock):
    alice = cloud.account("carol")
    est = ok(alice.post("/v1/instances/estimate", json={
        "image": "kumo-tiny", "instance_type": "t3.micro", "min_count": 2, "max_count": 2,
        "root_disk_gib": 8, "associate_public_ip": True}))
    lines = {ln["usage_type"]: ln for ln in est["lines"]}
    # 2 x 0.0104/h; 16 GiB x 0.08 / 730 h per hour; 2 x 0.005/h.
    assert lines["instance-hours"]["hourly"] == "0.0208"
    assert lines["instance-hours"]["monthly"] == "15.1840"
    assert lines["volume-gib-month"]["hourly"] == "0.0018"
    assert lines["volume-gib-month"]["monthly"] == "1.2800"
    assert lines["public-ipv4-hours"]["monthly"] == "7.3000"
    assert est["hourly"] == "0.0326" and est["monthly"] == "23.7640"
    assert ok(alice.get("/v1/instances"))["items"] == []


@pytest.mark.parametrize("params,code", [
    ({"start": "2026-12-02T00:00:00Z", "end": "2026-12-01T00:00:00Z"}, "InvalidPeriod"),
    ({"start": "2026-12-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}, "InvalidPeriod"),
    ({"start": "yesterday", "end": "2026-12-01T00:00:00Z"}, "InvalidPeriod"),
    ({"start": "2026-12-01", "end": "2026-13-01"}, "InvalidPeriod"),
    ({"start": "0001-01-01", "end": "2026-12-01"}, "InvalidPeriod"),
    ({"start": "2026-11-01", "end": "2026-12-01", "group_by": "week"}, "InvalidParameterValue"),
])
def test_bad_usage_periods(cloud, clock, params, code):
    alice = cloud.account("alice")
    r = alice.get("/v1/usage", params=params)
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def test_bad_bills_and_prices_change_nothing(cloud, clock):
    r = cloud.admin.post("/v1/accounts", json={"name": "alice"})
    alice_id, alice = ok(r, 201)["account_id"], cloud.client(r.json()["api_key"])
    bob = cloud.account("bob")
    for month, status, code in (("2026-13", 400, "InvalidMonth"), ("26-12", 400, "InvalidMonth"),
                                ("2027-01", 400, "MonthInFuture")):
        r = alice.get(f"/v1/bills/{month}")
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    r = bob.get("/v1/bills/2026-11", params={"account_id": alice_id})
    assert r.status_code == 404 and r.json()["error"]["code"] == "InvalidAccountID.NotFound"
    r = bob.get("/v1/usage", params={"start": "2026-11-01", "end": "2026-12-01",
                                     "account_id": alice_id})
    assert r.status_code == 404
    before = ok(cloud.admin.get("/v1/prices"))
    for body, status, code in (
            ({"usage_type": "instance-hours", "dimension": "t3.micro", "rate": "-1"}, 400,
             "InvalidPrice"),
            ({"usage_type": "instance-hours", "dimension": "t3.micro", "rate": "abc"}, 400,
             "InvalidPrice"),
            ({"usage_type": "instance-hours", "dimension": "t3.micro", "rate": "NaN"}, 400,
             "InvalidPrice"),
            ({"usage_type": "instance-hours", "dimension": "t3.micro", "rate": "0.02",
              "effective_at": "2026-11-30T22:00:00Z"}, 400, "PriceChangeInPast"),
            ({"usage_type": "instance-hours", "dimension": "t3.micro", "rate": "0.02",
              "effective_at": "not a time"}, 400, "InvalidParameterValue"),
            ({"usage_type": "gold-bars", "rate": "1"}, 400, "InvalidUsageType"),
            ({"usage_type": "instance-hours", "dimension": "t9.huge", "rate": "1"}, 400,
             "InvalidInstanceType")):
        r = cloud.admin.post("/v1/prices", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
    r = alice.post("/v1/prices", json={"usage_type": "instance-hours", "dimension": "t3.micro",
                                       "rate": "1"})
    assert r.status_code == 403
    assert ok(cloud.admin.get("/v1/prices")) == before
    r = alice.put("/v1/budget", json={"monthly_limit": "-5"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidBudget"
    assert alice.get("/v1/budget").status_code == 404


def test_cli_usage_bill_and_dry_run(cloud, clock):
    import json

    from typer.testing import CliRunner

    from controller.cli.context import CliState
    from controller.cli.main import app as cli_app

    key, iid, *_ = scenario(cloud, clock)

    def kumo(*args: str) -> str:
        st = CliState(client_factory=lambda url, api_key: cloud.client(api_key),
                      clock=lambda: 0.0, sleep=lambda s: None)
        r = CliRunner().invoke(cli_app, list(args), obj=st,
                               env={"KUMO_URL": "http://controller.test:8787",
                                    "KUMO_API_KEY": key})
        assert r.exit_code == 0, (args, r.output)
        return r.output

    bill = json.loads(kumo("-o", "json", "bill", "2026-12"))
    assert bill["status"] == "open" and bill["month"] == "2026-12"
    assert "2026-12" in kumo("bill", "2026-12")
    csv_text = kumo("usage", "--start", "2026-11-30T00:00:00Z", "--end", "2026-12-12T00:00:00Z",
                    "--group-by", "none", "--csv")
    assert csv_text.splitlines()[0].startswith("account_id,resource_id")
    assert any(iid in line and "0.0104" in line for line in csv_text.splitlines())
    doc = json.loads(kumo("-o", "json", "usage", "--start", "2026-11-30T00:00:00Z", "--end",
                          "2026-12-12T00:00:00Z"))
    assert doc["group_by"] == "resource" and doc["total"] == "0.26"
    est = json.loads(kumo("-o", "json", "instances", "run", "--image", "kumo-tiny", "--type",
                          "t3.micro", "--dry-run"))
    assert est["dry_run"] is True and est["lines"][0]["hourly"] == "0.0104"
    assert "dry run" in kumo("instances", "run", "--image", "kumo-tiny", "--type", "t3.micro",
                             "--dry-run")


def test_a_launch_that_never_ran_is_not_charged(cloud, clock):
    """As on EC2: an instance whose launch failed (the host refused it for good), or that was
    terminated while still pending, costs nothing, its root disk included, however long the
    failure took; an instance that ran is charged for its disk from launch."""
    from agent.contract.v1 import ErrorInfo
    key = ok(cloud.admin.post("/v1/accounts", json={"name": "bob"}), 201)["api_key"]
    bob = cloud.client(key)
    cloud.agent.put_error = ErrorInfo(code="ImageChecksumMismatch", message="bad sha",
                                      retryable=False)
    failed = cloud.launch(bob, associate_public_ip=False)
    step(cloud, clock, T0)
    cloud.agent.put_error = None
    pending = cloud.launch(bob, associate_public_ip=False)
    ok(bob.post(f"/v1/instances/{pending}/terminate"))  # before any agent saw it
    clock.set(at(0, 30))  # half an hour while it is torn down
    step(cloud, clock, at(0, 30))
    ran = cloud.launch(bob, associate_public_ip=False)
    step(cloud, clock, at(0, 30))
    assert cloud.instance(bob, failed)["state"] == "terminated"
    assert cloud.instance(bob, pending)["state"] == "terminated"
    assert cloud.instance(bob, ran)["state"] == "running"
    step(cloud, clock, at(1, 30))
    doc = ok(bob.get("/v1/usage", params={"start": T0.isoformat(),
                                          "end": at(2, 0).isoformat()}))
    charged = {i["resource_id"] for i in doc["items"] if Decimal(i["amount"]) > 0
               or i.get("seconds")}
    assert failed not in charged and pending not in charged
    assert ran in charged
