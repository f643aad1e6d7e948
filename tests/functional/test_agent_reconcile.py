"""The agent's reconcile loop on fake drivers, driven through the HTTP API: power, reboots,
drift, orphans, restarts of the agent, readiness and failures that stay per instance."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.drivers.base import DomainPlan, DriverError
from agent.drivers.disks import instance_disks
from agent.drivers.fake import FakeHypervisor, FakeNetwork, FakeStorage

from tests.functional.agent_harness import make_spec, obs, put, running_agent, until, wait_for


@pytest.fixture
def agent(tmp_path):
    with running_agent(tmp_path) as client:
        yield client


def test_reconciles_a_new_instance_to_running(agent, tmp_path):
    spec = make_spec()
    iid = spec["instance_id"]
    first = put(agent, spec)
    assert first["power"] == "building"
    o = until(agent, iid, power="running")
    assert o["boot_count"] == 1 and o["boot_started_at"] is not None
    assert (o["vcpus"], o["memory_mib"]) == (1, 128)
    assert o["error"] is None and o["booted"] is False
    # Every artifact was prepared through the drivers, in dependency order.
    ops = [op for op, _ in agent.storage.calls]
    assert ops == ["cached_image", "ensure_root_disk", "write_seed"]
    assert agent.storage.disk_sizes[iid] == 2 << 30
    seed = agent.storage.seeds[iid]
    assert seed["meta_data"] == {"instance-id": iid, "local-hostname": "web-1",
                                 "public-keys": ["ssh-ed25519 AAAAC3Nza test@kumo"]}
    assert seed["user_data"] == "#cloud-config\n"
    # The network-config production renders (agent.seed), not a fake's own.
    assert seed["network_config"] == {"version": 2, "ethernets": {"eth0": {
        "match": {"macaddress": "52:54:00:00:00:01"}, "set-name": "eth0",
        "addresses": ["10.0.0.11/24"], "gateway4": "10.0.0.1"}}}
    assert agent.network.bridges == {"br-sub1"}  # the NIC's bridge was made ready
    plan = agent.hv.domains[iid].plan
    d = tmp_path / "instances" / iid
    # The instance's own disks, first in the plan: root disk, then the seed.
    assert plan.disks == instance_disks(d / "root.qcow2", d / "seed.iso")
    assert [(x.target, x.bus, x.device) for x in plan.disks] == [("vda", "virtio", "disk"),
                                                                ("hdc", "ide", "cdrom")]
    assert plan.console_log == tmp_path / "instances" / iid / "console.log"
    assert [(n.mac, n.bridge) for n in plan.nics] == [("52:54:00:00:00:01", "br-sub1")]
    assert agent.hv.calls == [("define", iid), ("start", iid)]


def test_stop_and_start_again(agent):
    iid = make_spec()["instance_id"]
    put(agent, make_spec())
    until(agent, iid, power="running")
    put(agent, make_spec(generation=2, power="stopped"))
    o = until(agent, iid, power="shutoff", generation=2)
    assert o["boot_started_at"] is None and o["booted"] is False
    assert ("shutdown", iid) in agent.hv.calls
    time.sleep(0.2)
    assert agent.hv.domains[iid].power == "shutoff"  # stays stopped: stopped is desired
    put(agent, make_spec(generation=3, power="running"))
    o = until(agent, iid, power="running", generation=3)
    assert o["boot_count"] == 2


def test_a_guest_ignoring_acpi_is_powered_off(agent):
    iid = make_spec()["instance_id"]
    put(agent, make_spec())
    until(agent, iid, power="running")
    agent.hv.ignore_acpi.add(iid)
    put(agent, make_spec(generation=2, power="stopped"))
    until(agent, iid, power="shutoff")
    assert agent.hv.calls[-2:] == [("shutdown", iid), ("destroy", iid)]


def test_create_stopped_defines_but_never_starts(agent):
    spec = make_spec(power="stopped")
    put(agent, spec)
    until(agent, spec["instance_id"], power="shutoff")
    time.sleep(0.2)
    assert ("start", spec["instance_id"]) not in agent.hv.calls


def test_reboot_nonce_reboots_once(agent):
    iid = make_spec()["instance_id"]
    put(agent, make_spec())
    until(agent, iid, power="running")
    agent.hv.write_console(iid, "KUMO-READY instance-id=" + iid)
    until(agent, iid, booted=True)
    put(agent, make_spec(generation=2, reboot_nonce=1))
    o = until(agent, iid, boot_count=2)
    assert o["booted"] is False  # the old boot's marker does not count for the new boot
    assert agent.hv.domains[iid].reboots == 1
    put(agent, make_spec(generation=3, reboot_nonce=1, vcpus=1))  # same nonce: no reboot
    time.sleep(0.3)
    assert agent.hv.domains[iid].reboots == 1
    assert obs(agent, iid)["boot_count"] == 2


def test_reboot_without_the_reboot_capability_is_a_power_cycle(tmp_path):
    hv = FakeHypervisor(capabilities=frozenset())
    iid = make_spec()["instance_id"]
    with running_agent(tmp_path, hv) as agent:
        put(agent, make_spec())
        until(agent, iid, power="running")
        put(agent, make_spec(generation=2, reboot_nonce=1))
        until(agent, iid, power="running", boot_count=2)
        assert hv.calls[-2:] == [("destroy", iid), ("start", iid)]
        assert hv.domains[iid].reboots == 0


def test_crash_is_reported_not_restarted(agent):
    iid = make_spec()["instance_id"]
    put(agent, make_spec())
    until(agent, iid, power="running")
    agent.hv.write_console(iid, "KUMO-READY")
    until(agent, iid, booted=True)
    agent.hv.crash(iid)
    o = until(agent, iid, power="crashed")
    assert o["booted"] is False and o["boot_started_at"] is None
    time.sleep(0.4)  # many resync passes
    assert agent.hv.calls.count(("start", iid)) == 1
    assert obs(agent, iid)["power"] == "crashed"
    agent.hv.crash(iid, power="shutoff")  # powered off from inside the guest: also just reported
    until(agent, iid, power="shutoff")
    time.sleep(0.2)
    assert agent.hv.calls.count(("start", iid)) == 1
    # An explicit reboot request brings it back.
    put(agent, make_spec(generation=2, reboot_nonce=1))
    assert until(agent, iid, power="running")["boot_count"] == 2


def test_crash_is_restarted_with_restart_policy_always(agent):
    spec = make_spec(restart_policy="always")
    iid = spec["instance_id"]
    put(agent, spec)
    until(agent, iid, power="running")
    agent.hv.crash(iid)
    until(agent, iid, power="running", boot_count=2)
    assert ("destroy", iid) in agent.hv.calls  # a crashed domain is torn down before start


def test_resize_applies_at_next_start(agent):
    iid = make_spec()["instance_id"]
    put(agent, make_spec())
    until(agent, iid, power="running")
    put(agent, make_spec(generation=2, vcpus=2, memory_mib=256))
    wait_for(lambda: agent.hv.calls.count(("define", iid)) == 2)
    o = obs(agent, iid)
    assert (o["power"], o["vcpus"], o["memory_mib"], o["boot_count"]) == ("running", 1, 128, 1)
    put(agent, make_spec(generation=3, vcpus=2, memory_mib=256, power="stopped"))
    until(agent, iid, power="shutoff")
    put(agent, make_spec(generation=4, vcpus=2, memory_mib=256))
    o = until(agent, iid, power="running", generation=4)
    assert (o["vcpus"], o["memory_mib"]) == (2, 256)


def test_orphans_are_removed_but_foreign_domains_are_not(agent, tmp_path):
    orphan = "i-0123456789abcdef0"
    agent.hv.add_foreign(DomainPlan(name=orphan, vcpus=1, memory_mib=64,
                                    disks=instance_disks(Path("/x"), None),
                                    console_log=tmp_path / "c.log"))
    agent.hv.add_foreign(DomainPlan(name="my-pet-vm", vcpus=1, memory_mib=64,
                                    disks=instance_disks(Path("/x"), None),
                                    console_log=tmp_path / "c.log"))
    leftover = "i-00000000000000abc"
    (tmp_path / "instances" / leftover).mkdir(parents=True)
    (tmp_path / "instances" / leftover / "root.qcow2").write_text("x")
    keep = make_spec()
    put(agent, keep)
    wait_for(lambda: orphan not in agent.hv.domains)
    wait_for(lambda: not (tmp_path / "instances" / leftover).exists())
    assert "my-pet-vm" in agent.hv.domains and agent.hv.domains["my-pet-vm"].power == "running"
    until(agent, keep["instance_id"], power="running")
    assert (tmp_path / "instances" / keep["instance_id"]).is_dir()


def test_agent_restart_touches_nothing(tmp_path):
    hv, storage, network = FakeHypervisor(), FakeStorage(tmp_path), FakeNetwork()
    a, b = make_spec(1), make_spec(2, power="stopped")
    with running_agent(tmp_path, hv, storage, network) as agent:
        put(agent, a)
        put(agent, b)
        until(agent, a["instance_id"], power="running")
        until(agent, b["instance_id"], power="shutoff")
        agent.hv.write_console(a["instance_id"], "KUMO-READY")
        before = until(agent, a["instance_id"], booted=True)
    # The agent stopped: guests are left exactly as they were.
    assert hv.domains[a["instance_id"]].power == "running"
    hv.reset_calls()
    storage.calls.clear()
    network.calls.clear()
    with running_agent(tmp_path, hv, storage, network) as agent:
        time.sleep(0.4)  # several passes of the new agent
        after = obs(agent, a["instance_id"])
        assert after == before
        assert obs(agent, b["instance_id"])["power"] == "shutoff"
        assert hv.calls == [] and storage.calls == [] and network.calls == []
        # ... and it still repairs drift afterwards.
        network.bridges.clear()
        wait_for(lambda: "br-sub1" in network.bridges)


def test_adopts_a_matching_running_guest_when_runtime_records_are_lost(tmp_path):
    hv, storage = FakeHypervisor(), FakeStorage(tmp_path)
    spec = make_spec(reboot_nonce=4)
    with running_agent(tmp_path, hv, storage) as agent:
        put(agent, spec)
        until(agent, spec["instance_id"], power="running")
    for p in (tmp_path / "agent-state" / "runtime").iterdir():
        p.unlink()
    hv.reset_calls()
    with running_agent(tmp_path, hv, storage) as agent:
        time.sleep(0.4)
        assert obs(agent, spec["instance_id"])["power"] == "running"
        assert hv.calls == []


def test_readiness_from_the_console_marker(agent):
    iid = make_spec()["instance_id"]
    put(agent, make_spec())
    until(agent, iid, power="running")
    agent.hv.write_console(iid, "[    0.000000] Linux version 6.1")
    time.sleep(0.2)
    assert obs(agent, iid)["booted"] is False
    agent.hv.write_console(iid, f"KUMO-READY instance-id={iid}")
    o = until(agent, iid, booted=True)
    assert o["booted_at"] >= o["boot_started_at"]


def test_marker_from_a_previous_boot_does_not_count(tmp_path):
    hv = FakeHypervisor()
    spec = make_spec()
    iid = spec["instance_id"]
    log = tmp_path / "instances" / iid / "console.log"
    log.parent.mkdir(parents=True)
    log.write_text("KUMO-READY instance-id=old boot\n")
    with running_agent(tmp_path, hv) as agent:
        put(agent, spec)
        until(agent, iid, power="running")
        time.sleep(0.2)
        assert obs(agent, iid)["booted"] is False
        hv.boot_lines[iid] = ["booting", "KUMO-READY"]
        put(agent, make_spec(generation=2, reboot_nonce=1))
        until(agent, iid, booted=True, boot_count=2)


def test_image_without_marker_never_becomes_booted(agent):
    spec = make_spec()
    spec["image"] = {**spec["image"], "ready_marker": None}
    put(agent, spec)
    until(agent, spec["instance_id"], power="running")
    agent.hv.write_console(spec["instance_id"], "KUMO-READY")
    time.sleep(0.2)
    assert obs(agent, spec["instance_id"])["booted"] is False


def test_a_failing_step_is_reported_and_does_not_block_others(agent):
    bad, good = make_spec(1), make_spec(2)
    agent.storage.fail("cached_image", bad["image"]["image_id"],
                       DriverError("sha256 mismatch", code="ImageChecksumMismatch",
                                   retryable=False))
    put(agent, bad)
    put(agent, good)
    o = wait_for(lambda: (x := obs(agent, bad["instance_id"]))["error"] and x)
    assert o["error"] == {"code": "ImageChecksumMismatch", "message": "sha256 mismatch",
                          "retryable": False}
    assert o["power"] == "error"
    until(agent, good["instance_id"], power="running", error=None)
    listed = {x["instance_id"]: x for x in agent.get("/v1/instances").json()}
    assert listed[bad["instance_id"]]["error"]["code"] == "ImageChecksumMismatch"
    # The cause goes away; a new spec (or the backoff running out) retries and clears the error.
    agent.storage.clear_faults()
    put(agent, make_spec(1, generation=2))
    until(agent, bad["instance_id"], power="running", error=None)


def test_retryable_errors_back_off_and_recover(agent):
    spec = make_spec()
    iid = spec["instance_id"]
    agent.hv.fail("start", iid, DriverError("libvirt busy", code="HypervisorTimeout"), times=3)
    put(agent, spec)
    o = wait_for(lambda: (x := obs(agent, iid))["error"] and x)
    assert o["error"]["code"] == "HypervisorTimeout" and o["error"]["retryable"] is True
    assert o["power"] == "shutoff"
    o = until(agent, iid, power="running", error=None)
    assert o["boot_count"] == 1


def test_drift_is_repaired_while_the_controller_is_away(agent, tmp_path):
    spec = make_spec()
    iid = spec["instance_id"]
    put(agent, spec)
    until(agent, iid, power="running")
    agent.network.bridges.clear()
    (tmp_path / "instances" / iid / "seed.iso").unlink()
    wait_for(lambda: "br-sub1" in agent.network.bridges)
    wait_for(lambda: (tmp_path / "instances" / iid / "seed.iso").exists())
    assert agent.hv.calls.count(("start", iid)) == 1


def test_heartbeat_kick_on_change(tmp_path):
    with running_agent(tmp_path) as agent:
        kicks = []
        agent.app_.state.reconciler.on_change = lambda: kicks.append(1)
        put(agent, make_spec())
        until(agent, make_spec()["instance_id"], power="running")
        wait_for(lambda: kicks)
        n = len(kicks)
        time.sleep(0.3)
        assert len(kicks) == n  # steady state: no change, no kick
        agent.hv.crash(make_spec()["instance_id"])
        wait_for(lambda: len(kicks) > n)


def test_a_boot_started_just_before_the_agent_died_still_becomes_ready(tmp_path):
    """The agent starts a domain and dies before recording the boot; the guest prints its marker
    meanwhile. The next agent must recognise the boot as its own (write-ahead start intent) and
    see the marker, not adopt the domain with the console read from its current end."""

    class DiesRightAfterStart(FakeHypervisor):
        def start(self, name):
            super().start(name)
            self.write_console(name, f"KUMO-READY instance-id={name}")
            raise RuntimeError("agent killed between start and recording the boot")

    spec = make_spec()
    iid = spec["instance_id"]
    hv = DiesRightAfterStart()
    with running_agent(tmp_path, hv) as agent:
        put(agent, spec)
        wait_for(lambda: ("start", iid) in hv.calls)
    hv.__class__ = FakeHypervisor  # the next agent process: starting works again
    hv.reset_calls()
    with running_agent(tmp_path, hv) as agent:
        o = until(agent, iid, booted=True)
        assert o["power"] == "running" and o["boot_count"] == 1
        assert ("start", iid) not in hv.calls  # the running guest was left alone


def test_readiness_is_seen_between_resync_passes(tmp_path):
    """The ready marker is noticed by the console watcher, not only by the (slow) resync pass."""
    with running_agent(tmp_path, resync_interval=30.0, readiness_interval=0.05) as agent:
        spec = make_spec()
        iid = spec["instance_id"]
        put(agent, spec)  # a PUT kicks one pass at once; the next would be 30 s later
        until(agent, iid, power="running")
        agent.hv.write_console(iid, f"KUMO-READY instance-id={iid}")
        until(agent, iid, booted=True)  # gives up after 5 s, long before the next resync pass


def test_no_nocloud_seed_means_no_cdrom_at_all(agent, tmp_path):
    """nocloud_seed False (extension nocloud-optional): no seed written, the domain has only its
    root disk; the guest reads 169.254.169.254 instead."""
    spec = make_spec(nocloud_seed=False)
    iid = spec["instance_id"]
    put(agent, spec)
    until(agent, iid, power="running")
    assert [op for op, _ in agent.storage.calls] == ["cached_image", "ensure_root_disk"]
    assert iid not in agent.storage.seeds
    plan = agent.hv.domains[iid].plan
    assert plan.disks == instance_disks(tmp_path / "instances" / iid / "root.qcow2", None)
