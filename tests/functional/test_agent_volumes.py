"""Volumes of an instance (contract extension "volumes") on the fake hypervisor, through the
agent's HTTP API: hot-plug into a running guest and its definition, unplug, definition-only
changes of a stopped domain, a guest that holds on to a volume, and no needless redefine."""
from __future__ import annotations

import time

import pytest

from agent.drivers.base import NetworkHost, NetworkSource
from agent.drivers.disks import OWN_TARGETS

from tests.functional.agent_harness import make_spec, obs, put, running_agent, until, wait_for

VOL1 = "vol-" + "1" * 17
VOL2 = "vol-" + "2" * 17


def vol(volume_id: str, device: str, host: str = "10.9.0.5", port: int = 10809) -> dict:
    return {"volume_id": volume_id, "device": device,
            "source": {"protocol": "nbd", "host": host, "port": port, "export": volume_id}}


@pytest.fixture
def agent(tmp_path):
    with running_agent(tmp_path) as client:
        yield client


def attached(*pairs: tuple[str, str]) -> list[dict]:
    return [{"device": d, "volume_id": v} for d, v in pairs]


def started_with_vdb(agent) -> str:
    """An instance running with VOL1 on vdb; the fake's call log cleared. Its id."""
    iid = make_spec()["instance_id"]
    put(agent, make_spec(volumes=[vol(VOL1, "vdb")]))
    until(agent, iid, power="running", volumes=attached(("vdb", VOL1)))
    agent.hv.reset_calls()
    return iid


def volume_disks(disks) -> dict:
    return {d.target: d for d in disks if d.target not in OWN_TARGETS}


def test_running_instance_gets_volumes_live_and_in_its_definition(agent):
    spec = make_spec(volumes=[vol(VOL1, "vdb")])
    iid = spec["instance_id"]
    put(agent, spec)
    o = until(agent, iid, power="running", volumes=attached(("vdb", VOL1)))
    assert o["error"] is None
    dom = agent.hv.domains[iid]
    disk = volume_disks(dom.plan.disks)["vdb"]
    # A virtio network disk, its serial derived from the id, flushes honoured (cache none).
    assert disk.source == NetworkSource("nbd", VOL1, (NetworkHost("10.9.0.5", 10809),))
    assert (disk.bus, disk.serial, disk.cache) == ("virtio", "vol" + "1" * 17, "none")
    assert volume_disks(dom.live.disks) == {"vdb": disk}
    # The first definition carried it: no hot-plug was needed.
    assert agent.hv.calls == [("define", iid), ("start", iid)]

    # A second volume: hot-plugged, no redefine, no restart.
    agent.hv.reset_calls()
    put(agent, make_spec(generation=2, volumes=[vol(VOL1, "vdb"), vol(VOL2, "vdc")]))
    until(agent, iid, volumes=attached(("vdb", VOL1), ("vdc", VOL2)))
    assert agent.hv.calls == [("attach_disk", iid)]
    assert set(volume_disks(dom.live.disks)) == set(volume_disks(dom.plan.disks)) == {"vdb",
                                                                                       "vdc"}
    # Both gone: unplugged from the guest and the definition; root disk and seed untouched.
    agent.hv.reset_calls()
    put(agent, make_spec(generation=3))
    until(agent, iid, volumes=[])
    assert agent.hv.calls == [("detach_disk", iid), ("detach_disk", iid)]
    assert [d.target for d in dom.live.disks] == [d.target for d in dom.plan.disks] == ["vda",
                                                                                        "hdc"]
    assert dom.starts == 1 and obs(agent, iid)["boot_count"] == 1


def test_stopped_instance_only_changes_its_definition(agent):
    spec = make_spec(power="stopped")
    iid = spec["instance_id"]
    put(agent, spec)
    until(agent, iid, power="shutoff")
    agent.hv.reset_calls()
    put(agent, make_spec(generation=2, power="stopped", volumes=[vol(VOL1, "vdb")]))
    until(agent, iid, volumes=attached(("vdb", VOL1)))
    dom = agent.hv.domains[iid]
    assert dom.power == "shutoff" and dom.live is None and dom.starts == 0
    assert set(volume_disks(dom.plan.disks)) == {"vdb"}
    assert agent.hv.calls == [("attach_disk", iid)]
    # Started later: the guest boots with it (no hot-plug).
    agent.hv.reset_calls()
    put(agent, make_spec(generation=3, volumes=[vol(VOL1, "vdb")]))
    until(agent, iid, power="running", volumes=attached(("vdb", VOL1)))
    assert set(volume_disks(dom.live.disks)) == {"vdb"}
    assert agent.hv.calls == [("start", iid)]
    # Stopped again, then removed while off: only the definition loses it.
    put(agent, make_spec(generation=4, power="stopped", volumes=[vol(VOL1, "vdb")]))
    until(agent, iid, power="shutoff")
    put(agent, make_spec(generation=5, power="stopped"))
    until(agent, iid, volumes=[])
    assert volume_disks(dom.plan.disks) == {} and dom.starts == 1


def test_resend_of_the_same_generation_changes_nothing(agent):
    iid = started_with_vdb(agent)
    put(agent, make_spec(volumes=[vol(VOL1, "vdb")]))
    time.sleep(0.3)  # several resync passes
    assert agent.hv.calls == []
    assert obs(agent, iid)["error"] is None


def test_a_resize_redefines_with_the_volumes_kept(agent):
    iid = started_with_vdb(agent)
    put(agent, make_spec(generation=2, vcpus=2, volumes=[vol(VOL1, "vdb")]))
    wait_for(lambda: ("define", iid) in agent.hv.calls)
    dom = agent.hv.domains[iid]
    assert dom.plan.vcpus == 2 and set(volume_disks(dom.plan.disks)) == {"vdb"}
    time.sleep(0.2)
    assert agent.hv.calls == [("define", iid)]  # applies at next start; no hot-plug


def test_a_volume_moving_to_another_device_is_unplugged_then_plugged(agent):
    iid = started_with_vdb(agent)
    put(agent, make_spec(generation=2, volumes=[vol(VOL1, "vdd")]))
    until(agent, iid, volumes=attached(("vdd", VOL1)))
    assert agent.hv.calls == [("detach_disk", iid), ("attach_disk", iid)]
    dom = agent.hv.domains[iid]
    assert set(volume_disks(dom.live.disks)) == set(volume_disks(dom.plan.disks)) == {"vdd"}


def test_a_guest_holding_a_volume_is_reported_and_retried(agent):
    iid = started_with_vdb(agent)
    agent.hv.hold_device(iid, "vdb")
    put(agent, make_spec(generation=2))
    o = wait_for(lambda: (x := obs(agent, iid))["error"] and x)
    assert o["error"]["code"] == "DeviceDetachTimeout" and o["error"]["retryable"] is True
    assert o["volumes"] == attached(("vdb", VOL1)) and o["power"] == "running"
    dom = agent.hv.domains[iid]
    assert "vdb" in volume_disks(dom.plan.disks)  # the definition is untouched meanwhile
    # The guest lets go: the next pass finishes the detach, the definition's copy included.
    agent.hv.release_device(iid, "vdb")
    o = until(agent, iid, error=None, volumes=[])
    assert volume_disks(dom.plan.disks) == {} and volume_disks(dom.live.disks) == {}
    assert dom.starts == 1


def sized(volume_id: str, device: str, size_bytes: int) -> dict:
    return {**vol(volume_id, device), "size_bytes": size_bytes}


def test_a_volume_grown_while_attached_grows_in_the_running_guest(agent):
    iid = make_spec()["instance_id"]
    put(agent, make_spec(volumes=[sized(VOL1, "vdb", 1 << 30)]))
    until(agent, iid, power="running", volumes=attached(("vdb", VOL1)))
    # The disk attached with the export's size: checked once, nothing to grow.
    wait_for(lambda: agent.hv.disk_capacity(iid, "vdb") == 1 << 30)
    agent.hv.reset_calls()
    put(agent, make_spec(generation=2, volumes=[sized(VOL1, "vdb", 3 << 30)]))
    wait_for(lambda: agent.hv.disk_capacity(iid, "vdb") == 3 << 30)
    time.sleep(0.3)  # several resync passes: grown once, no replug, no redefine, no restart
    assert agent.hv.calls == [("resize_disk", iid)]
    dom = agent.hv.domains[iid]
    assert dom.starts == 1 and obs(agent, iid)["error"] is None


def test_a_stopped_guest_is_not_grown_its_disk_connects_at_the_new_size(agent):
    iid = make_spec()["instance_id"]
    put(agent, make_spec(power="stopped", volumes=[sized(VOL1, "vdb", 2 << 30)]))
    until(agent, iid, volumes=attached(("vdb", VOL1)))
    time.sleep(0.2)
    assert ("resize_disk", iid) not in agent.hv.calls


def test_a_guest_paused_on_a_volume_io_error_is_resumed(agent):
    iid = started_with_vdb(agent)
    boots = obs(agent, iid)["boot_count"]
    agent.hv.pause_on_io_error(iid)
    wait_for(lambda: agent.hv.domains[iid].power == "running")
    assert agent.hv.calls == [("start", iid)]  # a resume: the same boot, nothing redefined
    dom = agent.hv.domains[iid]
    assert dom.starts == 1 and not dom.io_error
    time.sleep(0.2)
    assert obs(agent, iid)["boot_count"] == boots


def test_volumes_survive_an_agent_restart_untouched(tmp_path):
    spec = make_spec(volumes=[vol(VOL1, "vdb")])
    iid = spec["instance_id"]
    with running_agent(tmp_path) as agent:
        put(agent, spec)
        until(agent, iid, power="running", volumes=attached(("vdb", VOL1)))
        hv, storage, network = agent.hv, agent.storage, agent.network
    hv.reset_calls()
    with running_agent(tmp_path, hv=hv, storage=storage, network=network) as agent:
        time.sleep(0.3)
        assert obs(agent, iid)["volumes"] == attached(("vdb", VOL1))
        assert hv.calls == []


@pytest.mark.parametrize("bad", [
    [vol(VOL1, "vda")],                                   # the root disk's target
    [vol(VOL1, "sdb")],                                   # not a virtio target
    [vol(VOL1, "vdb"), vol(VOL2, "vdb")],                 # one device twice
    [vol(VOL1, "vdb"), vol(VOL1, "vdc")],                 # one volume twice
    [vol(VOL1, "vdb", host="10.0.0.1;rm")],               # not a host
    [{**vol(VOL1, "vdb"), "source": {"protocol": "nbd", "host": "h", "export": "a b"}}],
    [{**vol(VOL1, "vdb"), "source": {"protocol": "rbd", "host": "h", "export": "x"}}],
])
def test_invalid_volumes_are_refused_before_anything_happens(agent, bad):
    spec = make_spec(volumes=bad)
    r = agent.put(f"/v1/instances/{spec['instance_id']}", json=spec)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "InvalidParameterValue"
    assert agent.hv.calls == []
