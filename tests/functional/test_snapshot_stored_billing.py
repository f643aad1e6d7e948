"""Snapshots are billed by what they store (issue 13), end to end on the fake stack: the real
storage node app over FakeVolumeBackend (tests/functional/volume_cloud.py; the fake measures a
snapshot's stored bytes as the chunks written to its volume), the reconciler's snapshot sync
carrying the node's stored_bytes to the snapshot row, metering opening the snapshot-gib-month
interval at stored GiB rounded up (services/metering.py snapshot_gib), and the usage and the bill
checked against a hand computation, with a fake clock (tests/functional/billing_support.py).
A snapshot without a measure (completed before the change) keeps the volume's size."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from sqlmodel import select

from agent.drivers.fake_volumes import BLOCK
from controller.models import Snapshot
from controller.models.billing import UsageInterval
from controller.services import metering
from tests.functional.billing_support import FakeClock
from tests.functional.volume_cloud import VolumeCloud

MiB, GIB = 1 << 20, 1 << 30
T0 = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)
END = datetime(2026, 12, 11, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock(monkeypatch):
    return FakeClock(monkeypatch, T0)


@pytest.fixture
def cloud(tmp_path, clock):
    c = VolumeCloud(tmp_path, max_volume_gib=200, account_volume_gib_limit=500)
    yield c
    c.close()


def ok(r, status: int = 200):
    assert r.status_code == status, r.text
    return r.json()


def take(cloud, alice, vid: str) -> dict:
    sid = ok(alice.post("/v1/snapshots", json={"volume_id": vid}), 201)["snapshot_id"]
    cloud.converge()
    snap = ok(alice.get(f"/v1/snapshots/{sid}"))
    assert snap["state"] == "completed", snap
    return snap


def test_snapshots_are_billed_by_their_stored_size(cloud, clock):
    alice = cloud.account("alice")
    vid = ok(alice.post("/v1/volumes", json={"size_gib": 100}), 201)["volume_id"]
    cloud.converge()
    assert ok(alice.get(f"/v1/volumes/{vid}"))["state"] == "available"
    cloud.backend.export(vid)  # as a host would write to it (the fake writes exported only)

    # A: 5 MiB written to the 100 GiB volume -> stores 5 MiB -> billed 1 GiB (rounded up).
    cloud.backend.write(vid, 0, b"\xab" * (5 * MiB))
    a = take(cloud, alice, vid)
    assert a["stored_bytes"] == 5 * MiB and a["volume_size_gib"] == 100
    # B: just over 1 GiB written -> billed 2 GiB. The chunks are put in the fake's map directly
    # (one shared immutable chunk object, as write() would make 16385 of) to spare 1 GiB of RAM.
    chunk = b"\xcd" * BLOCK
    cloud.backend.data[vid] = {i: chunk for i in range(GIB // BLOCK + 1)}
    b = take(cloud, alice, vid)
    assert b["stored_bytes"] == GIB + BLOCK
    # C: completed before stored sizes existed (stored_bytes NULL): still the volume's 100 GiB.
    assert metering.snapshot_gib(Snapshot(volume_size_gib=100, stored_bytes=None)) == 100
    listed = {s["snapshot_id"]: s for s in ok(alice.get("/v1/snapshots"))["items"]}
    assert listed[a["snapshot_id"]]["stored_bytes"] == 5 * MiB

    with cloud.db.session(notify=False) as s:
        q = {iv.resource_id: iv.quantity for iv in s.exec(
            select(UsageInterval).where(UsageInterval.usage_type == metering.SNAPSHOT))}
    assert q == {a["snapshot_id"]: 1, b["snapshot_id"]: 2}

    # Ten whole days. Hand computation (snapshot-gib-month 0.05 per GiB-month of 730 h =
    # 2,628,000 s; items per UTC day rounded half-up to 0.0001):
    #   A 1 GiB: 86400 x 0.05 / 2628000 = 0.0016438.. -> 0.0016 a day, 0.0160 in ten days
    #   B 2 GiB: 2 x 86400 x 0.05 / 2628000 = 0.0032876.. -> 0.0033 a day, 0.0330 in ten
    #   (billed by the volume's 100 GiB, A alone would be 0.1644 a day, 1.6440 in ten days)
    clock.set(END)
    doc = ok(alice.get("/v1/usage", params={"start": T0.isoformat(), "end": END.isoformat()}))
    snaps = [i for i in doc["items"] if i["usage_type"] == "snapshot-gib-month"]
    assert len(snaps) == 20
    for i in snaps:
        want = "0.0016" if i["resource_id"] == a["snapshot_id"] else "0.0033"
        assert i["amount"] == want and i["seconds"] == 86400, i
    snap_total = sum(Decimal(i["amount"]) for i in snaps)
    assert snap_total == Decimal("0.0490")
    # The bill: the snapshot line is 0.0490, and the whole (with the 100 GiB volume at 0.08:
    # 100 x 86400 x 0.08 / 2628000 = 0.263013.. -> 0.2630 a day, 2.6300) is 2.68 to the cent.
    bill = ok(alice.get("/v1/bills/2026-12"))
    lines = {ln["usage_type"]: ln for ln in bill["lines"]}
    assert Decimal(lines["snapshot-gib-month"]["amount"]) == Decimal("0.0490")
    assert Decimal(bill["total"]) == Decimal("2.68")
