"""controller/services/host_health.py: the word and the reasons for each kind of trouble."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from agent.contract.v1 import EXTENSIONS
from controller.models import Host
from controller.services.host_health import assess

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def _host(**kw) -> Host:
    base = dict(host_id="h1", hypervisor="qemu", architecture="x86_64", vcpus=8,
                memory_mib=16384, disk_bytes=1 << 40, agent_url="http://h1", created_at=NOW,
                last_heartbeat=NOW - timedelta(seconds=1), extensions=list(EXTENSIONS))
    return Host(**{**base, **kw})


def test_a_fresh_host_is_ok():
    h = assess(_host(), NOW, 2.0, 0, NOW + timedelta(days=60))
    assert (h.health, h.reasons, h.heartbeat_age_s) == ("ok", [], 1.0)


def test_down_says_for_how_long():
    h = assess(_host(state="down", last_heartbeat=NOW - timedelta(seconds=40)), NOW, 2.0, 3,
               None)
    assert (h.health, h.reasons) == ("down", ["no heartbeat for 40.0 s"])
    assert assess(_host(state="down", last_heartbeat=None), NOW, 2.0, 0, None).reasons == \
        ["never heard from"]


def test_each_trouble_is_a_reason():
    h = assess(_host(last_heartbeat=NOW - timedelta(seconds=7),
                     extensions=[e for e in EXTENSIONS if e != "volumes"]),
               NOW, 2.0, 2, NOW + timedelta(days=3, hours=1))
    assert h.health == "degraded"
    assert h.reasons == ["last heartbeat 7.0 s ago (expected every 2 s)",
                         "2 instances report errors from the agent",
                         "its certificate expires in 3 days",
                         "its agent lacks contract extensions: volumes"]
    assert assess(_host(), NOW, 2.0, 1, NOW - timedelta(seconds=1)).reasons == [
        "1 instance reports errors from the agent", "its certificate has expired"]


def test_thresholds_are_not_crossed_early():
    # 3 intervals late is still on time; 8 days of certificate is no warning; no extensions
    # recorded yet (not heard since an upgrade) is no claim about the agent.
    h = assess(_host(last_heartbeat=NOW - timedelta(seconds=6), extensions=[]), NOW, 2.0, 0,
               NOW + timedelta(days=8))
    assert (h.health, h.reasons) == ("ok", [])
