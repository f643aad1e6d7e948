"""Instance lifecycle through the reconciler and fake agents: launch, readiness, stop/start,
reboot, modify, terminate (idempotent), deadlines, events, console, purge."""
from __future__ import annotations

import time

from agent.contract.v1 import ErrorInfo
from controller import reconciler as reconciler_module
from tests.functional.fake_agent import Cloud, clock_ahead, cloud_fixture


cloud = cloud_fixture()


def test_launch_runs_and_becomes_ok(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    r = cloud.run(user, tags={"Name": "web"})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["reservation_id"].startswith("r-")
    inst = doc["instances"][0]
    assert inst["state"] == "pending" and inst["instance_status"] == "initializing"
    assert inst["host_id"] == "host-1"
    # The default VPC's default subnet (172.31.0.0/20): .0-.3 are reserved, .4 is the first.
    assert inst["private_ip"] == "172.31.0.4" and inst["mac"].startswith("52:54:00:")
    assert inst["vpc_id"].startswith("vpc-") and inst["subnet_id"].startswith("subnet-")
    assert inst["public_ip"] is not None  # the default subnet maps public IPs on launch
    assert inst["hostname"] == "ip-" + inst["private_ip"].replace(".", "-")
    iid = inst["instance_id"]
    assert cloud.tick()["pushed"] == 1
    spec = agent.specs[iid]
    assert spec.power == "running" and spec.generation == 1
    assert spec.image.url == f"http://controller.test:8787/v1/images/{inst['image_id']}/file"
    assert spec.nics[0].bridge.startswith("kb-") and str(spec.nics[0].gateway) == "172.31.0.1"
    assert str(spec.nics[0].address) == "172.31.0.4/20"
    got = cloud.instance(user, iid)
    assert got["state"] == "running" and got["instance_status"] == "ok"
    assert got["launch_time"] is not None and got["tags"] == {"Name": "web"}
    # A second tick pushes nothing: the agent acknowledged the generation.
    assert cloud.tick()["pushed"] == 0
    console = user.get(f"/v1/instances/{iid}/console").json()
    assert "KUMO-READY" in console["output"] and console["instance_id"] == iid
    status = user.get(f"/v1/instances/{iid}/status").json()
    assert status["state"] == "running" and status["instance_status"] == "ok"
    assert status["system_status"] == "ok"


def test_stop_start_reboot_modify_terminate(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    iid = cloud.launch(user)
    cloud.converge()
    r = user.patch(f"/v1/instances/{iid}", json={"instance_type": "t3.small"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "IncorrectInstanceState"

    r = user.post(f"/v1/instances/{iid}/stop")
    assert r.status_code == 200 and r.json()["state"] == "stopping"
    cloud.tick()
    assert agent.specs[iid].power == "stopped"
    assert cloud.instance(user, iid)["state"] == "stopped"
    # Stop again is a no-op; reboot a stopped instance is refused.
    assert user.post(f"/v1/instances/{iid}/stop").json()["state"] == "stopped"
    r = user.post(f"/v1/instances/{iid}/reboot")
    assert r.status_code == 409 and r.json()["error"]["code"] == "IncorrectInstanceState"

    r = user.patch(f"/v1/instances/{iid}", json={"instance_type": "t3.small"})
    assert r.status_code == 200, r.text
    assert r.json()["instance_type"] == "t3.small" and r.json()["vcpus"] == 2
    r = user.patch(f"/v1/instances/{iid}", json={"instance_type": "x9.nothing"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidInstanceType"

    assert user.post(f"/v1/instances/{iid}/start").json()["state"] == "pending"
    cloud.tick()
    assert agent.specs[iid].power == "running" and agent.specs[iid].vcpus == 2
    assert cloud.instance(user, iid)["state"] == "running"

    agent.auto_boot = False
    r = user.post(f"/v1/instances/{iid}/reboot")
    assert r.status_code == 200 and r.json()["instance_status"] == "initializing"
    nonce = agent.specs[iid].reboot_nonce
    cloud.tick()
    assert agent.specs[iid].reboot_nonce == nonce + 1
    assert cloud.instance(user, iid)["instance_status"] == "initializing"
    agent.finish_boot(iid)
    cloud.heartbeat()
    assert cloud.instance(user, iid)["instance_status"] == "ok"

    r = user.post(f"/v1/instances/{iid}/terminate")
    assert r.status_code == 200 and r.json()["state"] == "shutting-down"
    assert user.post(f"/v1/instances/{iid}/terminate").json()["state"] == "shutting-down"
    cloud.tick()
    assert iid not in agent.specs
    got = cloud.instance(user, iid)
    assert got["state"] == "terminated"
    assert user.post(f"/v1/instances/{iid}/terminate").json()["state"] == "terminated"
    r = user.post(f"/v1/instances/{iid}/start")
    assert r.status_code == 409 and r.json()["error"]["code"] == "IncorrectInstanceState"

    events = user.get("/v1/events", params={"resource_id": iid, "resource_type": "instance"})
    transitions = [(e["from_state"], e["to_state"]) for e in events.json()["items"]]
    assert transitions[:5] == [(None, "pending"), ("pending", "running"),
                               ("running", "stopping"), ("stopping", "stopped"),
                               ("stopped", "stopped")]
    assert ("running", "shutting-down") in transitions
    assert transitions[-1] == ("shutting-down", "terminated")


def test_guest_poweroff_becomes_stopped(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    iid = cloud.launch(user)
    cloud.converge()
    agent.guest_poweroff(iid)
    cloud.heartbeat()
    got = cloud.instance(user, iid)
    assert got["state"] == "stopped"
    assert got["state_reason"]["code"] == "Client.InstanceInitiatedShutdown"
    cloud.tick()  # the desired spec follows: stopped, so the agent does not restart it
    assert agent.specs[iid].power == "stopped"


def test_pending_deadline_fails_launch(tmp_path):
    # Deadlines of 20 s here (clock_ahead): inside the 30 s heartbeat timeout, so hosts stay up.
    cloud = Cloud(tmp_path, pending_deadline_s=20.0)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        agent.auto_run = False
        user = cloud.account("alice")
        iid = cloud.launch(user)
        cloud.tick()
        cloud.heartbeat()
        assert cloud.instance(user, iid)["state"] == "pending"
        with clock_ahead(21, reconciler_module):
            cloud.tick()
            got = cloud.instance(user, iid)
            assert got["state"] in ("shutting-down", "terminated")
            assert got["state_reason"]["code"] == "Server.LaunchTimeout"
            cloud.tick()
        assert cloud.instance(user, iid)["state"] == "terminated"
        assert iid not in agent.specs
    finally:
        cloud.close()


def test_permanent_agent_error_fails_launch(cloud):
    agent = cloud.add_host("host-1")
    agent.put_error = ErrorInfo(code="ImageChecksumMismatch", message="bad sha", retryable=False)
    user = cloud.account("alice")
    iid = cloud.launch(user)
    cloud.tick()
    got = cloud.instance(user, iid)
    assert got["state"] == "shutting-down"
    assert got["state_reason"]["code"] == "Server.InternalError"
    assert "ImageChecksumMismatch" in got["state_reason"]["message"]


def test_status_deadline_impaired(tmp_path):
    cloud = Cloud(tmp_path, status_deadline_s=20.0)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        agent.auto_boot = False
        user = cloud.account("alice")
        iid = cloud.launch(user)
        cloud.tick()
        assert cloud.instance(user, iid)["instance_status"] == "initializing"
        with clock_ahead(21, reconciler_module):
            cloud.tick()
        assert cloud.instance(user, iid)["instance_status"] == "impaired"
        # The guest comes up late: ok again.
        agent.finish_boot(iid)
        cloud.heartbeat()
        assert cloud.instance(user, iid)["instance_status"] == "ok"
    finally:
        cloud.close()


def test_image_without_marker_is_ok_when_running(cloud):
    cloud.image(name="silent", ready_marker=None)
    agent = cloud.add_host("host-1")
    agent.auto_boot = False
    user = cloud.account("alice")
    iid = cloud.launch(user, image="silent")
    cloud.tick()
    assert cloud.instance(user, iid)["instance_status"] == "ok"


def test_terminated_is_purged_after_retention(tmp_path):
    cloud = Cloud(tmp_path, terminated_retention_s=0.2)
    try:
        cloud.image()
        cloud.add_host("host-1")
        user = cloud.account("alice")
        iid = cloud.launch(user)
        cloud.converge()
        user.post(f"/v1/instances/{iid}/terminate")
        cloud.tick()
        assert cloud.instance(user, iid)["state"] == "terminated"
        time.sleep(0.3)
        cloud.tick()
        r = user.get(f"/v1/instances/{iid}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "InvalidInstanceID.NotFound"
        # The event log outlives the instance.
        assert user.get("/v1/events", params={"resource_id": iid}).json()["items"]
    finally:
        cloud.close()


def test_terminate_pending_on_unreachable_host_times_out(tmp_path):
    cloud = Cloud(tmp_path, shutting_down_deadline_s=20.0)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        user = cloud.account("alice")
        iid = cloud.launch(user)
        agent.unreachable = True
        stats = cloud.tick()
        assert stats["errors"] == 1
        assert cloud.instance(user, iid)["state"] == "pending"
        user.post(f"/v1/instances/{iid}/terminate")
        cloud.tick()
        assert cloud.instance(user, iid)["state"] == "shutting-down"
        with clock_ahead(21, reconciler_module):
            cloud.tick()
        got = cloud.instance(user, iid)
        assert got["state"] == "terminated"
        assert got["state_reason"]["code"] == "Server.TerminateTimeout"
    finally:
        cloud.close()


def test_stop_deadline_sets_reason_and_force_resends(tmp_path):
    cloud = Cloud(tmp_path, stopping_deadline_s=1.0)
    try:
        cloud.image()
        agent = cloud.add_host("host-1")
        user = cloud.account("alice")
        iid = cloud.launch(user)
        cloud.converge()
        agent.unreachable = True
        user.post(f"/v1/instances/{iid}/stop")
        cloud.tick()
        time.sleep(1.1)
        cloud.tick()
        got = cloud.instance(user, iid)
        assert got["state"] == "stopping"
        assert got["state_reason"]["code"] == "Server.StopTimeout"
        agent.unreachable = False
        gen = agent.specs[iid].generation
        r = user.post(f"/v1/instances/{iid}/stop", params={"force": "true"})
        assert r.status_code == 200 and r.json()["state"] == "stopping"
        cloud.tick()
        assert agent.specs[iid].generation > gen and agent.specs[iid].power == "stopped"
        assert cloud.instance(user, iid)["state"] == "stopped"
    finally:
        cloud.close()


def test_events_since_filter_and_admin_view(cloud):
    cloud.add_host("host-1")
    user = cloud.account("alice")
    first = cloud.launch(user)
    events = user.get("/v1/events").json()["items"]
    cut = events[-1]["time"]
    time.sleep(0.01)
    second = cloud.launch(user)
    later = user.get("/v1/events", params={"since": cut}).json()["items"]
    ids = {e["resource_id"] for e in later}
    assert second in ids and first in ids  # `since` is inclusive of the cut event
    after = user.get("/v1/events", params={"since": later[-1]["time"]}).json()["items"]
    assert [e["resource_id"] for e in after] == [second]
    admin_ids = {e["resource_id"] for e in cloud.admin.get("/v1/events").json()["items"]}
    assert {first, second, "host-1"} <= admin_ids
    r = user.get("/v1/events", params={"since": "yesterday"})
    assert r.status_code == 400


def test_shutoff_during_reboot_is_not_a_guest_shutdown(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    iid = cloud.launch(user)
    cloud.converge()
    agent.auto_boot = False
    user.post(f"/v1/instances/{iid}/reboot")
    cloud.tick()
    agent.guest_poweroff(iid)  # the domain is down for a moment while it reboots
    cloud.heartbeat()
    got = cloud.instance(user, iid)
    assert got["state"] == "running" and got["instance_status"] == "initializing"
    agent.finish_boot(iid)
    cloud.heartbeat()
    assert cloud.instance(user, iid)["instance_status"] == "ok"
    # Once the reboot is over, a poweroff is the guest's own again.
    agent.guest_poweroff(iid)
    cloud.heartbeat()
    got = cloud.instance(user, iid)
    assert got["state"] == "stopped"
    assert got["state_reason"]["code"] == "Client.InstanceInitiatedShutdown"
