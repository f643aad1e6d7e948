"""The lab's life: up (2 hosts) -> every part checked with independent tools -> up again changes
nothing -> up repairs a killed libvirtd and a deleted link -> a real domain runs -> down removes it all
and leaves the machine as found: the moment down returns, no process the lab started (or that ran in
its namespaces) is left in /proc and none of its namespaces exists. Plus down after a half-failed up
and with a dead daemon, without a readable state file, and with the controller and an agent.
All packets stay inside the lab's namespaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import Lab, LabError
from lab import libvirtd as lv
from lab import naming as nm
from lab import network, procs
from lab import state as lab_state
from lab.testing import (addresses, free_port, ip_json, machine_snapshot, ping, skip_reason,
                         unique_prefix)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

HOSTS = ["h1", "h2"]

#: A copy of the qemu capabilities cache the first lab up of this module made (lab.libvirtd
#: caps_dir). Later labs of the module get it before their libvirtd starts, as up itself seeds a
#: second host from the first: the ~8 s cold probe is proved by that first up (and the session
#: lab's), not repeated by each. libvirt re-validates the copy and re-probes when it is stale.
_CAPS: dict[str, Path] = {}


def _save_caps(lab: Lab, where: Path) -> None:
    src = lv.caps_dir(lab.host_paths("h1"))
    if "dir" not in _CAPS and lv.has_caps_cache(lab.host_paths("h1")):
        shutil.copytree(src, where / "qemu-caps")
        _CAPS["dir"] = where / "qemu-caps"


def _seed_caps(lab: Lab) -> None:
    if "dir" in _CAPS:
        dst = lv.caps_dir(lab.host_paths("h1"))
        dst.mkdir(parents=True, exist_ok=True)
        for f in _CAPS["dir"].glob("*.xml"):
            shutil.copy2(f, dst / f.name)


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("lablife")
    lab = Lab(state, prefix=unique_prefix(), start_services="none")
    info = {"lab": lab, "state": state, "before": machine_snapshot(state), "pids": set(), "t": {}}
    try:
        t = time.monotonic()
        info["status"] = lab.up(hosts=2)
        info["t"]["up"] = time.monotonic() - t
        _save_caps(lab, tmp_path_factory.mktemp("lifecycle-caps"))
        yield info
    finally:
        lab.down()


def _libvirtd_pids(lab: Lab) -> dict[str, int]:
    return {h.id: h.libvirtd.pid for h in lab.status().hosts}


def _ns_inode(path: str) -> tuple[int, int]:
    s = os.stat(path)
    return s.st_ino, s.st_dev


def _links(netns: str) -> set[tuple[int, str, str]]:
    return {(link["ifindex"], link["ifname"], link.get("master", "")) for link in ip_json(netns, "link")}


def test_up_reports_every_part_ok(life):
    st = life["status"]
    assert st.ok, st.to_text()
    assert [h.id for h in st.hosts] == HOSTS
    for h in st.hosts:
        assert h.libvirtd.answering and h.libvirtd.pid
        life["pids"].add(h.libvirtd.pid)
    print(f"\nlab up (2 hosts) took {life['t']['up']:.1f}s")


def test_each_libvirtd_answers_inside_its_host(life):
    import libvirt

    lab: Lab = life["lab"]
    for h in lab.status().hosts:
        assert h.libvirt_uri == f"qemu:///system?socket={life['state']}/hosts/{h.id}/run/libvirt-sock"
        conn = libvirt.open(h.libvirt_uri)
        try:
            assert "<capabilities>" in conn.getCapabilities()
            assert conn.listAllNetworks() == [], "libvirt's default network must not exist in the lab"
        finally:
            conn.close()
        # The daemon runs in the host's network namespace and in a mount namespace of its own.
        assert _ns_inode(f"/proc/{h.libvirtd.pid}/ns/net") == _ns_inode(f"/run/netns/{h.netns}")
        assert os.readlink(f"/proc/{h.libvirtd.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert "virbr0" not in {link["ifname"] for link in ip_json(h.netns, "link")}
    assert "virbr0" not in {link["ifname"] for link in ip_json(None, "link")}


def test_wiring_as_seen_by_ip(life):
    p = life["lab"].prefix
    fab, inet = nm.fabric_netns(p), nm.inet_netns(p)
    fab_links = {link["ifname"]: link for link in ip_json(fab, "link")}
    assert {"br0", "p-h1", "p-h2", "p-inet"} <= set(fab_links)
    for port in ("p-h1", "p-h2", "p-inet"):
        assert fab_links[port].get("master") == "br0"
        assert "UP" in fab_links[port]["flags"]
    for i, hid in enumerate(HOSTS, start=1):
        ns = nm.host_netns(p, hid)
        assert addresses(ns, "uplink0") == [f"100.64.0.{10 + i}/24"]
        assert {link["ifname"] for link in ip_json(ns, "link")} == {"lo", "uplink0"}
    assert addresses(inet, "uplink0") == ["100.64.0.1/24"]
    assert "198.51.100.1/32" in addresses(inet, "lo")


def test_hosts_ping_each_other_over_the_fabric(life):
    p = life["lab"].prefix
    assert ping(nm.host_netns(p, "h1"), "100.64.0.12")
    assert ping(nm.host_netns(p, "h2"), "100.64.0.11")


def test_internet_reaches_the_hosts_uplinks_and_hosts_reach_its_server(life):
    p = life["lab"].prefix
    for addr in ("100.64.0.11", "100.64.0.12"):
        assert ping(nm.inet_netns(p), addr)
    assert ping(nm.host_netns(p, "h1"), "198.51.100.1")


def test_internet_routes_nowhere_else(life):
    routes = ip_json(nm.inet_netns(life["lab"].prefix), "route", "show", "table", "all")
    main_v4 = [r for r in routes if r.get("table", "main") == "main" and ":" not in r["dst"]]
    assert sorted(r["dst"] for r in main_v4) == ["100.64.0.0/24", "203.0.113.0/24"], routes


def test_up_again_changes_nothing(life):
    lab: Lab = life["lab"]
    p = lab.prefix
    names = [nm.fabric_netns(p), nm.inet_netns(p)] + [nm.host_netns(p, h) for h in HOSTS]

    def observe():
        addrs = {h: addresses(nm.host_netns(p, h), "uplink0") for h in HOSTS}
        return {n: _links(n) for n in names}, _libvirtd_pids(lab), addrs

    before = observe()
    t = time.monotonic()
    st = lab.up(hosts=2)
    life["t"]["up_again"] = time.monotonic() - t
    after = observe()
    assert st.ok
    assert after == before
    print(f"\nsecond lab up took {life['t']['up_again']:.2f}s")


def test_up_repairs_a_dead_libvirtd_and_a_missing_link(life):
    lab: Lab = life["lab"]
    p = lab.prefix
    pids = _libvirtd_pids(lab)
    os.kill(pids["h2"], signal.SIGKILL)
    os.system(f"ip -n {nm.fabric_netns(p)} link del p-h2")  # noqa: S605 (fixed names, no user input)
    assert not ping(nm.host_netns(p, "h1"), "100.64.0.12", wait=1)
    assert not lab.status().ok
    st = lab.up(hosts=2)
    assert st.ok, st.to_text()
    new = _libvirtd_pids(lab)
    assert new["h1"] == pids["h1"] and new["h2"] != pids["h2"]
    life["pids"].update(new.values())
    assert ping(nm.host_netns(p, "h1"), "100.64.0.12")


def _probe_domain_xml(name: str, console: Path) -> str:
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "32"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    dev = ET.SubElement(dom, "devices")
    ET.SubElement(dev, "emulator").text = "/usr/bin/qemu-system-x86_64"
    serial = ET.SubElement(dev, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console))
    ET.SubElement(serial, "target", port="0")
    return ET.tostring(dom, encoding="unicode")


def test_a_domain_runs_on_a_lab_host(life):
    import libvirt

    lab: Lab = life["lab"]
    h1 = lab.status().hosts[0]
    console = life["state"] / "hosts" / "h1" / "probe-console.log"  # removed with the host
    conn = libvirt.open(h1.libvirt_uri)
    try:
        dom = conn.defineXML(_probe_domain_xml("kumo-lab-probe", console))
        dom.create()
        assert dom.isActive()
        qemu_pid = int((life["state"] / "hosts/h1/libvirt/run/qemu/kumo-lab-probe.pid").read_text())
    finally:
        conn.close()
    assert console.exists(), "qemu (stdio_handler=file, no DAC relabel) must write the console log"
    assert _ns_inode(f"/proc/{qemu_pid}/ns/net") == _ns_inode(f"/run/netns/{h1.netns}")
    life["pids"].add(qemu_pid)
    life["qemu_pid"] = qemu_pid


def _lab_processes(lab: Lab) -> dict[int, int]:
    """PID -> start time of every process the lab recorded or that runs in one of its namespaces."""
    s = lab_state.load(lab.state_dir)
    out = {r.pid: r.start_time for r in (s.processes.values() if s else ())}
    pattern = nm.all_netns_pattern(lab.prefix)
    for n in network.list_netns():
        if pattern.match(n):
            out.update((r.pid, r.start_time) for r in procs.netns_records(n))
    return out


def _left_behind(lab: Lab, started: dict[int, int]) -> list[str]:
    """What of the lab exists right now: its processes still in /proc (same PID, same start time:
    a zombie counts, it has not been reaped) and its namespaces."""
    pattern = nm.all_netns_pattern(lab.prefix)
    left = [f"pid {pid}" for pid, t in started.items() if procs.start_time(pid) == t]
    left += [f"netns {n}" for n in network.list_netns() if pattern.match(n)]
    return left


def test_down_leaves_the_machine_as_found(life):
    lab: Lab = life["lab"]
    started = _lab_processes(lab)
    assert len(started) >= 2 and life.get("qemu_pid", -1) in set(started) | {-1}  # libvirtds, qemu
    t = time.monotonic()
    lab.down()
    left = _left_behind(lab, started)  # immediately: down returns only once all of it is gone
    life["t"]["down"] = time.monotonic() - t
    assert not left, left
    assert not [pid for pid in life["pids"] if os.path.exists(f"/proc/{pid}")]
    print(f"\nlab down took {life['t']['down']:.1f}s")
    after = machine_snapshot(life["state"])
    before = life["before"]
    # Strict: the root namespace's links, addresses, routes and nft tables are untouched.
    for key in ("root_links", "root_addrs", "root_routes", "nft_tables"):
        assert after[key] == before[key], key
    # Namespaces, files and mounts may change under us from other runs on the machine: none of the
    # new ones may be this lab's (its prefix, its state dir, libvirt's dirs, empty runtime dirs).
    pattern = nm.all_netns_pattern(lab.prefix)
    assert not [n for n in after["netns"] if pattern.match(n)]

    def ours(x: str) -> bool:
        return lab.prefix in x or str(life["state"]) in x or "libvirt" in x

    new_files = after["files"] - before["files"]
    left = [f for f in new_files if ours(f)]
    left += [d for d in ("/run/netns", "/run/mount") if d in new_files and not any(Path(d).iterdir())]
    assert not left, left
    assert not [m for m in after["mounts"] - before["mounts"] if ours(m)]
    assert not life["state"].exists() or not any(life["state"].iterdir())
    lab.down()  # a second down is a no-op


def _in_own_process(lab: Lab, call: str) -> None:
    """Run `Lab(...).<call>` in a process of its own, as `kumo lab up|down` does: the daemons an
    up starts outlive it (their parent is gone), and the down that ends them is not their parent."""
    from lab import services

    code = (f"from lab import Lab; Lab({str(lab.state_dir)!r}, prefix={lab.prefix!r}, "
            f"listen={lab.requested_listen!r}, bootstrap=False).{call}")
    r = subprocess.run([sys.executable, "-c", code], cwd=services.REPO_ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_down_with_services_waits_for_the_controller_and_agents(tmp_path):
    """`up` and `down` each in a process of its own (as from the CLI), with the controller, an agent
    and libvirtd: the moment down's process returns, none of them is left in /proc, and an up
    right after starts from a clean machine."""
    from lab import services

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if not (services.controller_available() and services.agent_available()):
        pytest.skip("controller/agent code missing")
    lab = Lab(tmp_path / "lab", prefix=unique_prefix(), listen=f"127.0.0.1:{free_port()}",
              bootstrap=False)
    try:
        _seed_caps(lab)
        _in_own_process(lab, "up(1)")
        assert lab.status().ok, lab.status().to_text()
        _save_caps(lab, tmp_path)
        started = _lab_processes(lab)
        names = set(lab_state.load(lab.state_dir).processes)
        assert {"controller", "agent-h1", "libvirtd-h1"} <= names
        _in_own_process(lab, "down()")
        assert not _left_behind(lab, started)
        _seed_caps(lab)  # a file in the state dir: no process, nothing of the last life
        _in_own_process(lab, "up(1)")  # at once: nothing of the last life is in the way
        assert lab.status().ok, lab.status().to_text()
        again = _lab_processes(lab)
        assert not set(again.items()) & set(started.items())
        lab.down()  # in this process, not the daemons' parent either
        assert not _left_behind(lab, again)
    finally:
        lab.down()


def test_up_and_down_after_a_half_failed_up_and_a_dead_daemon(tmp_path, monkeypatch):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path / "lab", prefix=unique_prefix(), start_services="none")
    real_wait = lv.wait_ready
    calls = []

    def fail_second(uri, is_alive, log, timeout=30.0):
        calls.append(uri)
        if len(calls) == 2:
            raise LabError("LibvirtdTimeout", "injected failure")
        return real_wait(uri, is_alive, log, timeout)

    monkeypatch.setattr(lv, "wait_ready", fail_second)
    try:
        with pytest.raises(LabError, match="injected"):
            lab.up(hosts=2)
        st = lab.status()
        pids = [h.libvirtd.pid for h in st.hosts if h.libvirtd.pid]
        assert len(pids) == 2
        monkeypatch.setattr(lv, "wait_ready", real_wait)
        assert lab.up(hosts=2).ok  # a later up completes the half-made lab
        pids += [h.libvirtd.pid for h in lab.status().hosts if h.libvirtd.pid not in pids]
        os.kill(pids[0], signal.SIGKILL)  # and one daemon died before down
        time.sleep(0.2)
    finally:
        lab.down()
    pattern = nm.all_netns_pattern(lab.prefix)
    assert not [n for n in os.listdir("/run/netns") if pattern.match(n)] if os.path.isdir("/run/netns") else True
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]  # at once, not after a while
    assert not (tmp_path / "lab").exists()
    assert procs.netns_pids(nm.host_netns(lab.prefix, "h1")) == []


def test_session_lab_fixture_with_services_and_a_test_bridge(lab, host_bridge, ns_exec):
    from lab import services

    st = lab.status()
    assert st.ok, st.to_text()
    if lab.start_services == "auto" and services.controller_available():
        assert st.controller is not None and st.controller.answering
        assert "export KUMO_API_KEY=" in lab.env(admin=True)
    if lab.start_services == "auto" and services.agent_available():
        assert all(h.agent is not None and h.agent.answering for h in st.hosts)
    h1 = st.hosts[0].netns
    host_bridge(h1, "kt-br0", "10.99.0.1/24")
    assert addresses(h1, "kt-br0") == ["10.99.0.1/24"]
    assert "kt-br0" not in {link["ifname"] for link in ip_json(None, "link")}
    assert ns_exec(h1, "busybox", "ping", "-c", "1", "-W", "2", "10.99.0.1").returncode == 0


def test_prefix_mismatch_is_refused(tmp_path):
    from lab import state as lab_state

    lab_state.save(tmp_path, lab_state.LabState(prefix="kother"))
    for op in (lambda lab: lab.up(hosts=1), lambda lab: lab.down()):
        if os.geteuid() != 0:
            pytest.skip("needs root")
        with pytest.raises(LabError) as e:
            op(Lab(tmp_path, prefix="kmine"))
        assert e.value.code == "LabPrefixMismatch"


def test_down_without_a_readable_state_file_still_cleans_up(tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path / "lab", prefix=unique_prefix(), start_services="none")
    try:
        lab.up(hosts=1)
        pid = lab.status().hosts[0].libvirtd.pid
        (tmp_path / "lab" / "lab.json").write_text("garbage")
    finally:
        lab.down()
    pattern = nm.all_netns_pattern(lab.prefix)
    assert not [n for n in os.listdir("/run/netns") if pattern.match(n)] if os.path.isdir("/run/netns") else True
    # libvirtd lived in the host namespace: found there, stopped, and waited for
    assert not os.path.exists(f"/proc/{pid}")
