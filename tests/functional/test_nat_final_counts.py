"""A deleted NAT gateway's last bytes (issue 13's per-GiB gap), controller side with fake agents
and a fake clock: the agent reports the counter's final value after the gateway is gone (as
agent/network/nat_finals.py does, repeatedly until answered); it is billed once to the deleted
gateway, in the bucket of its deletion (its last period), also when the same final arrives
again, after a controller restart, and an hour later."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.functional.billing_support import FakeClock
from tests.functional.fake_agent import Cloud
from tests.functional.test_nat_processed import GIB, at, nat_gib_items, report, setup
from tests.functional.vpc_support import ok

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock(monkeypatch):
    return FakeClock(monkeypatch, T0)


def quantities(user) -> list[tuple[str, str]]:
    return sorted((i["resource_id"], i["quantity"]) for i in nat_gib_items(user))


def test_final_counter_after_deletion_billed_once(tmp_path, clock):
    cloud = Cloud(tmp_path)
    restarted = None
    try:
        h1, user, nat_id = setup(cloud)
        report(cloud, clock, h1, nat_id, at(10, 0, 5), GIB)
        # 10:20 deleted before the agent's next heartbeat; the agent's final read is 3 GiB.
        clock.set(at(10, 20))
        assert ok(user.delete(f"/v1/nat-gateways/{nat_id}"))["state"] == "deleted"
        cloud.converge()
        report(cloud, clock, h1, nat_id, at(10, 20, 5), 3 * GIB)
        assert quantities(user) == [(nat_id, "3.000000")]
        # the answer was lost: the same final again, and once more later
        report(cloud, clock, h1, nat_id, at(10, 20, 10), 3 * GIB)
        report(cloud, clock, h1, nat_id, at(10, 40), 3 * GIB)
        assert quantities(user) == [(nat_id, "3.000000")]
        # a controller restart on the same database: the final sent again bills nothing
        cloud.close()
        restarted = Cloud(tmp_path, database_url=cloud.settings.database_url)
        restarted.agents[h1.url] = h1
        user = restarted.client(user.headers["Authorization"].split()[1])
        report(restarted, clock, h1, nat_id, at(10, 50), 3 * GIB)
        assert quantities(user) == [(nat_id, "3.000000")]
        # Bytes the agent only manages to report in a later hour (it was down): the deleted
        # gateway's last period (the 10:00 bucket), not 11:00; at the price of then.
        report(restarted, clock, h1, nat_id, at(11, 30), 4 * GIB)
        items = nat_gib_items(user)
        assert [(i["resource_id"], i["quantity"], i["day"]) for i in items] == \
            [(nat_id, "4.000000", "2026-12-01")]
        from sqlmodel import select

        from controller.models.billing import UsageQuantity
        with restarted.app.state.kumo.db.session(notify=False) as s:
            rows = s.exec(select(UsageQuantity)).all()
        assert [(r.recorded_at.hour, r.quantity) for r in rows] == [(10, 4 * GIB)]
        bill = ok(user.get("/v1/bills/2026-12"))
        (line,) = [ln for ln in bill["lines"] if ln["usage_type"] == "nat-gateway-gib"]
        assert line["quantity"] == "4.000000"
    finally:
        (restarted or cloud).close()
