"""Hosts and heartbeats: registration, capacity views, missed heartbeats -> down and host-down
system status, recovery, agents that lost their specs, orphans, the background reconciler."""
from __future__ import annotations

import re
import time

from fastapi.testclient import TestClient

from controller.services import hosts as hosts_service
from tests.functional.fake_agent import Cloud, clock_ahead


def test_heartbeat_registers_and_host_down(tmp_path):
    cloud = Cloud(tmp_path, heartbeat_timeout_s=20.0)
    try:
        cloud.image()
        agent = cloud.add_host("host-1", vcpus=4, memory_mib=2048)
        h = cloud.admin.get("/v1/hosts/host-1").json()
        assert h["state"] == "up" and h["enabled"] is True and h["vcpus"] == 4
        assert h["hypervisor"] == "qemu" and h["versions"] == {"agent": "fake"}
        assert h["last_heartbeat"].endswith("Z")
        user = cloud.account("alice")
        iid = cloud.run(user).json()["instances"][0]["instance_id"]
        cloud.converge()
        h = cloud.admin.get("/v1/hosts/host-1").json()
        assert h["vcpus_used"] == 1 and h["memory_mib_used"] == 256
        assert h["disk_bytes_used"] == 1024**3
        with clock_ahead(21, hosts_service):  # no heartbeat for 21 s
            cloud.tick()
        assert cloud.admin.get("/v1/hosts/host-1").json()["state"] == "down"
        got = cloud.instance(user, iid)
        assert got["system_status"] == "host-down" and got["state"] == "running"
        r = cloud.run(user)
        assert r.status_code == 503
        host_events = cloud.admin.get("/v1/events", params={"resource_id": "host-1"}).json()
        assert [(e["from_state"], e["to_state"]) for e in host_events["items"]] == [
            (None, "up"), ("up", "down")]
        cloud.heartbeat(agent)
        assert cloud.admin.get("/v1/hosts/host-1").json()["state"] == "up"
        assert cloud.instance(user, iid)["system_status"] == "ok"
        sys_events = user.get("/v1/events", params={"resource_id": iid,
                                                    "resource_type": "system-status"}).json()
        assert [e["to_state"] for e in sys_events["items"]] == ["host-down", "ok"]
    finally:
        cloud.close()


def test_admin_host_errors(tmp_path):
    cloud = Cloud(tmp_path)
    try:
        r = cloud.admin.get("/v1/hosts/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "InvalidHostID.NotFound"
        r = cloud.agent_client.post("/v1/agent/heartbeat", json={"host": {"host_id": "BAD ID"}})
        assert r.status_code == 400
        assert cloud.admin.get("/v1/hosts").json()["items"] == []
    finally:
        cloud.close()


def test_agent_that_lost_specs_gets_them_again(tmp_path):
    cloud = Cloud(tmp_path)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        user = cloud.account("alice")
        iid = cloud.run(user).json()["instances"][0]["instance_id"]
        cloud.tick()
        assert iid in agent.specs
        # The agent's state is wiped; its next heartbeat (sent well after the push) omits it.
        agent.specs.clear()
        agent.observed.clear()
        inst = cloud.app.state.kumo.db
        with inst.session() as s:
            from controller.models import Instance
            row = s.get(Instance, iid)
            row.last_pushed_at = row.last_pushed_at.replace(year=2000)
            s.add(row)
        cloud.heartbeat()
        assert cloud.tick()["pushed"] == 1
        assert iid in agent.specs
    finally:
        cloud.close()


def test_orphans_are_deleted(tmp_path):
    cloud = Cloud(tmp_path)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        user = cloud.account("alice")
        iid = cloud.run(user).json()["instances"][0]["instance_id"]
        cloud.tick()
        spec = agent.specs[iid]
        ghost = "i-00000000000000abc"
        agent.specs[ghost] = spec.model_copy(update={"instance_id": ghost})
        agent.observed[ghost] = dict(agent.observed[iid])
        cloud.heartbeat()
        cloud.tick()
        assert ghost not in agent.specs and iid in agent.specs
        assert ("DELETE", f"/v1/instances/{ghost}") in agent.requests
    finally:
        cloud.close()


def test_stale_generation_is_superseded(tmp_path):
    cloud = Cloud(tmp_path)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        user = cloud.account("alice")
        iid = cloud.run(user).json()["instances"][0]["instance_id"]
        cloud.tick()
        # The agent somehow holds generation 7 (e.g. the controller's database was restored).
        agent.specs[iid] = agent.specs[iid].model_copy(update={"generation": 7})
        user.post(f"/v1/instances/{iid}/stop")
        cloud.tick()  # 409 StaleGeneration -> learn 7
        cloud.tick()
        assert agent.specs[iid].generation == 8 and agent.specs[iid].power == "stopped"
        assert cloud.instance(user, iid)["state"] == "stopped"
    finally:
        cloud.close()


def test_background_reconciler_runs_in_lifespan(tmp_path):
    cloud = Cloud(tmp_path, reconcile_interval_s=0.05)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        with TestClient(cloud.app, headers={"Authorization": f"Bearer {cloud.admin_key}"}) as c:
            iid = cloud.run(c).json()["instances"][0]["instance_id"]
            deadline = time.time() + 5
            while time.time() < deadline and c.get(f"/v1/instances/{iid}").json()["state"] != "running":
                time.sleep(0.05)
            assert c.get(f"/v1/instances/{iid}").json()["state"] == "running"
            assert iid in agent.specs
    finally:
        cloud.close()


def test_one_failing_host_does_not_stop_others(tmp_path):
    cloud = Cloud(tmp_path)
    try:
        cloud.image()
        bad = cloud.add_host("host-1")
        good = cloud.add_host("host-2")
        user = cloud.account("alice")
        r = cloud.run(user, min_count=4, max_count=4)
        assert r.status_code == 201
        bad.unreachable = True
        stats = cloud.tick()
        assert stats["errors"] == 2 and stats["pushed"] == 2
        assert len(good.specs) == 2
        on_bad = [i for i in r.json()["instances"] if i["host_id"] == "host-1"]
        st = user.get(f"/v1/instances/{on_bad[0]['instance_id']}/status").json()
        assert st["state"] == "pending" and "AgentUnreachable" in st["details"]["agent_error"]
        r = user.get(f"/v1/instances/{on_bad[0]['instance_id']}/console")
        assert r.status_code == 503 and r.json()["error"]["retryable"] is True
    finally:
        cloud.close()


def test_failed_pushes_back_off_then_recover(tmp_path):
    cloud = Cloud(tmp_path)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        user = cloud.account("alice")
        iid = cloud.run(user).json()["instances"][0]["instance_id"]
        agent.unreachable = True
        assert cloud.tick()["errors"] == 1
        assert cloud.tick() == {"pushed": 0, "deleted": 0, "errors": 0, "networks": 0}  # backing off
        agent.unreachable = False
        time.sleep(0.6)
        assert cloud.tick()["pushed"] == 1
        assert cloud.instance(user, iid)["state"] == "running"
        assert cloud.reconciler._backoff == {}
    finally:
        cloud.close()


def test_heartbeat_with_another_contract_is_refused(tmp_path):
    cloud = Cloud(tmp_path)
    try:
        from tests.functional.fake_agent import FakeAgent
        agent = FakeAgent("host-9")
        doc = agent.heartbeat_request().model_dump(mode="json")
        doc["host"]["contract"] = "v2"
        r = cloud.agent_client.post("/v1/agent/heartbeat", json=doc)
        assert r.status_code == 400 and r.json()["error"]["code"] == "UnsupportedContract"
        assert cloud.admin.get("/v1/hosts").json()["items"] == []
    finally:
        cloud.close()


def test_health_names_what_is_wrong_with_a_host(tmp_path):
    """GET /v1/hosts says ok, then degraded with the reason (an instance whose agent reports an
    error; a late heartbeat), then down (controller/services/host_health.py). Time is moved by
    setting the last heartbeat back, as the clock would: no sleeps, so load cannot skew it."""
    from datetime import timedelta

    from agent.contract.v1 import ErrorInfo
    from controller.ids import utcnow
    from controller.models import Host
    cloud = Cloud(tmp_path, heartbeat_timeout_s=15.0, heartbeat_interval_s=2.0)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        h = cloud.admin.get("/v1/hosts/host-1").json()
        assert (h["health"], h["health_reasons"]) == ("ok", [])
        assert 0 <= h["heartbeat_age_s"] < 6
        user = cloud.account("alice")
        agent.put_error = ErrorInfo(code="DiskFull", message="no space", retryable=True)
        cloud.run(user)
        cloud.converge()
        h = cloud.admin.get("/v1/hosts").json()["items"][0]
        assert h["health"] == "degraded"
        assert "1 instance reports errors from the agent" in h["health_reasons"]
        cloud.set_row(Host, "host-1", last_heartbeat=utcnow() - timedelta(seconds=10))
        h = cloud.admin.get("/v1/hosts/host-1").json()
        assert h["state"] == "up" and h["health"] == "degraded"
        late, errors = h["health_reasons"]
        assert re.fullmatch(r"last heartbeat 1\d\.\d s ago \(expected every 2 s\)", late), h
        assert errors == "1 instance reports errors from the agent"
        cloud.set_row(Host, "host-1", last_heartbeat=utcnow() - timedelta(seconds=60))
        cloud.tick()  # the liveness check marks it down
        h = cloud.admin.get("/v1/hosts/host-1").json()
        assert h["health"] == "down" and h["health_reasons"][0].startswith("no heartbeat for 6")
    finally:
        cloud.close()
