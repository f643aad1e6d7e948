"""The root disk grows through the API: PATCH /v1/instances/{id} {"root_disk_gib"} on a running
or stopped instance reaches the agent's spec; shrinking, a terminated instance, an empty request
or a host without room are refused with a stable code and change nothing. Then the agent itself
(fake drivers): a running domain's disk grows live, a shut-off one's offline."""
from __future__ import annotations

from tests.functional.agent_harness import (make_spec, obs, put, running_agent, until,
                                            wait_for)
from tests.functional.fake_agent import cloud_fixture

GIB = 1 << 30


cloud = cloud_fixture()


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]


def _events(client, iid) -> list[str]:
    return [e["reason"] for e in client.get("/v1/events", params={"resource_id": iid})
            .json()["items"]]


def test_grow_a_running_instance(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    iid = cloud.launch_running(user, root_disk_gib=2)
    gen = agent.specs[iid].generation
    assert agent.specs[iid].root_disk_bytes == 2 * GIB
    r = user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 5})
    assert r.status_code == 200, r.text
    assert r.json()["root_disk_gib"] == 5 and r.json()["state"] == "running"
    assert cloud.tick()["pushed"] == 1
    spec = agent.specs[iid]
    assert spec.root_disk_bytes == 5 * GIB and spec.generation == gen + 1
    assert spec.power == "running" and spec.reboot_nonce == 0  # no reboot asked for
    assert cloud.instance(user, iid)["root_disk_gib"] == 5
    assert "root disk 2 -> 5 GiB" in _events(user, iid)
    # The same size again: nothing changes, nothing is pushed.
    r = user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 5})
    assert r.status_code == 200 and r.json()["root_disk_gib"] == 5
    assert cloud.tick()["pushed"] == 0 and agent.specs[iid].generation == gen + 1


def test_grow_a_stopped_instance_and_change_its_type_at_once(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    iid = cloud.launch_running(user)
    before = cloud.instance(user, iid)["root_disk_gib"]
    user.post(f"/v1/instances/{iid}/stop")
    cloud.tick()
    assert cloud.instance(user, iid)["state"] == "stopped"
    r = user.patch(f"/v1/instances/{iid}",
                   json={"root_disk_gib": before + 3, "instance_type": "t3.small"})
    assert r.status_code == 200, r.text
    assert (r.json()["root_disk_gib"], r.json()["instance_type"]) == (before + 3, "t3.small")
    cloud.tick()
    spec = agent.specs[iid]
    assert spec.power == "stopped" and spec.root_disk_bytes == (before + 3) * GIB
    assert spec.vcpus == 2
    assert user.post(f"/v1/instances/{iid}/start").json()["state"] == "pending"
    cloud.tick()
    assert agent.specs[iid].power == "running"
    assert agent.specs[iid].root_disk_bytes == (before + 3) * GIB


def test_refusals_change_nothing(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    iid = cloud.launch_running(user, root_disk_gib=4)
    gen = agent.specs[iid].generation
    shown = cloud.instance(user, iid)

    err = _error(user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 3}), 400,
                 "InvalidParameterValue")
    assert "only grows" in err["message"]
    _error(user.patch(f"/v1/instances/{iid}", json={}), 400, "InvalidParameterValue")
    _error(user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 16385}), 400,
           "InvalidParameterValue")
    _error(user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 0}), 400,
           "InvalidParameterValue")
    # Changing the type still needs a stopped instance; the root size in the same request
    # is not applied either.
    _error(user.patch(f"/v1/instances/{iid}", json={"instance_type": "t3.small",
                                                    "root_disk_gib": 8}),
           409, "IncorrectInstanceState")
    _error(user.patch("/v1/instances/i-0123456789abcdef0", json={"root_disk_gib": 8}), 404,
           "InvalidInstanceID.NotFound")
    other = cloud.account("bob")
    _error(other.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 8}), 404,
           "InvalidInstanceID.NotFound")
    assert cloud.instance(user, iid) == shown
    assert cloud.tick()["pushed"] == 0 and agent.specs[iid].generation == gen
    assert agent.specs[iid].root_disk_bytes == 4 * GIB


def test_no_room_on_the_host_is_refused(cloud):
    agent = cloud.add_host("host-1", disk_bytes=10 * GIB)
    user = cloud.account("alice")
    iid = cloud.launch_running(user, root_disk_gib=4)
    _error(user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 11}), 503,
           "InsufficientInstanceCapacity")
    assert cloud.instance(user, iid)["root_disk_gib"] == 4
    r = user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": 10})  # exactly fits
    assert r.status_code == 200, r.text
    cloud.tick()
    assert agent.specs[iid].root_disk_bytes == 10 * GIB


def test_terminated_and_shutting_down_are_refused(cloud):
    cloud.add_host("host-1")
    user = cloud.account("alice")
    iid = cloud.launch_running(user)
    size = cloud.instance(user, iid)["root_disk_gib"]
    assert user.post(f"/v1/instances/{iid}/terminate").json()["state"] == "shutting-down"
    _error(user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": size + 1}), 409,
           "IncorrectInstanceState")
    cloud.converge()
    assert cloud.instance(user, iid)["state"] == "terminated"
    _error(user.patch(f"/v1/instances/{iid}", json={"root_disk_gib": size + 1}), 409,
           "IncorrectInstanceState")
    assert cloud.instance(user, iid)["root_disk_gib"] == size


# -- the agent (fake drivers): the root disk really grows ----------------------------------------

def test_agent_grows_a_running_root_disk_live(tmp_path):
    with running_agent(tmp_path) as agent:
        iid = make_spec()["instance_id"]
        put(agent, make_spec())
        until(agent, iid, power="running")
        starts = agent.hv.domains[iid].starts
        agent.hv.reset_calls()
        put(agent, make_spec(generation=2, root_disk_bytes=5 * GIB))
        # (observed generation is the accepted one: wait for the disk itself)
        wait_for(lambda: agent.storage.disk_sizes[iid] == 5 * GIB)
        o = until(agent, iid, generation=2, power="running")
        assert o["error"] is None
        assert agent.hv.calls == [("resize_disk", iid)]  # no redefine, no restart
        assert agent.hv.disk_capacity(iid, "vda") == 5 * GIB
        assert agent.storage.disk_sizes[iid] == 5 * GIB
        assert agent.hv.domains[iid].starts == starts


def test_agent_grows_a_stopped_root_disk_offline(tmp_path):
    with running_agent(tmp_path) as agent:
        iid = make_spec()["instance_id"]
        put(agent, make_spec(power="stopped"))
        until(agent, iid, power="shutoff")
        agent.hv.reset_calls()
        put(agent, make_spec(generation=2, power="stopped", root_disk_bytes=6 * GIB))
        wait_for(lambda: agent.storage.disk_sizes[iid] == 6 * GIB)
        assert obs(agent, iid)["error"] is None
        assert ("resize_disk", iid) not in agent.hv.calls
        assert agent.storage.disk_sizes[iid] == 6 * GIB
