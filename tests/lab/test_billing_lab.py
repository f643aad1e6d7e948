"""Billing with a real instance (issue 13): a kumo-tiny guest runs, is stopped, started again and
terminated on the lab; its instance-hours line items add up, to the second, to the running
stretches its own event history shows (each at least 60 s, EC2's minimum per start), at the
price of its type; its root volume is billed from launch to termination. The hand computation
over the events is written here, independently of controller/services/usage_calc.py.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from tests.lab.cloud import user_fixture

pytestmark = [pytest.mark.lab, pytest.mark.slow]

cloud = user_fixture()


def _t(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _running_stretches(events: list[dict], end: datetime) -> list[tuple[datetime, datetime]]:
    """[entered running, left running) from the instance's state events, in whole seconds."""
    out, since = [], None
    for e in events:
        if e["resource_type"] != "instance":
            continue
        if e["to_state"] == "running" and since is None:
            since = _t(e["time"])
        elif e["from_state"] == "running" and e["to_state"] != "running" and since is not None:
            out.append((since, _t(e["time"])))
            since = None
    if since is not None:
        out.append((since, end))
    return out


def _instance_events(cloud, iid: str) -> list[dict]:
    """The instance's state events, oldest first (the API lists in insertion order)."""
    events = cloud.call("GET", "/v1/events", params={"resource_id": iid,
                                                    "max_results": 1000})["items"]
    return [e for e in events if e["resource_type"] == "instance"]


def test_line_items_match_the_event_history_to_the_second(cloud):
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=5)
    inst = cloud.run(instance_type="t3.nano")[0]
    iid = inst["instance_id"]
    # A short first run, billed as EC2's 60 s minimum. Stopped once the guest has booted (status
    # ok): a guest still booting ignores the ACPI power button, and the stop would wait out the
    # agent's whole shutdown_timeout (30 s) before forcing it off.
    cloud.wait(iid, "running", "ok", timeout=180)
    cloud.action(iid, "stop")
    cloud.wait(iid, "stopped", timeout=180)
    cloud.action(iid, "start")
    cloud.wait(iid, "running", timeout=180)
    # A second run longer than the minimum, billed as it ran: terminated 61 s after the event
    # that began it (the time billing counts from), not a fixed sleep after we saw it.
    began = _t([e for e in _instance_events(cloud, iid)
                if e["to_state"] == "running"][-1]["time"])
    time.sleep(max(0.0, (began + timedelta(seconds=61) - datetime.now(timezone.utc))
                   .total_seconds()))
    cloud.action(iid, "terminate")
    cloud.wait(iid, "terminated", timeout=180)
    end = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=5)

    events = cloud.call("GET", "/v1/events", params={"resource_id": iid,
                                                    "max_results": 1000})["items"]
    stretches = _running_stretches(events, end)
    assert len(stretches) == 2, events
    seconds = [int(b.timestamp()) - int(a.timestamp()) for a, b in stretches]
    billed = [max(60, s) for s in seconds]
    assert seconds[0] < 60 <= seconds[1], seconds  # the minimum applies to the first only

    usage = cloud.call("GET", "/v1/usage", params={
        "start": start.isoformat(), "end": end.isoformat(), "group_by": "none"})
    mine = [i for i in usage["items"] if i["resource_id"] == iid]
    hours = [i for i in mine if i["usage_type"] == "instance-hours"]
    assert hours and all(i["dimension"] == "t3.nano" for i in hours), mine
    assert sum(i["seconds"] for i in hours) == sum(billed), (hours, stretches)
    rate = Decimal(hours[0]["rate"])
    prices = cloud.call("GET", "/v1/prices", params={"usage_type": "instance-hours"})["items"]
    assert any(p["dimension"] == "t3.nano" and Decimal(p["rate"]) == rate for p in prices)
    for item in hours:  # each item: rate x seconds / 3600, rounded half-up to 0.0001
        want = (rate * item["seconds"] / 3600).quantize(Decimal("0.0001"), ROUND_HALF_UP)
        assert Decimal(item["amount"]) == want, item

    # The root volume: from the launch (its first event) to terminated, GiB x seconds.
    root = [i for i in usage["items"] if i["kind"] == "root-volume" and i["resource_id"] == iid]
    launched = _t(next(e for e in events if e["to_state"] == "pending")["time"])
    gone = _t(next(e for e in events if e["to_state"] == "terminated")["time"])
    assert sum(i["seconds"] for i in root) == int(gone.timestamp()) - int(launched.timestamp())
    assert all(i["gib"] == inst["root_disk_gib"] for i in root), root
    # The total is the sum of the items, to the cent.
    total = sum(Decimal(i["amount"]) for i in usage["items"])
    assert Decimal(usage["total"]) == total.quantize(Decimal("0.01"), ROUND_HALF_UP)
