"""The lab's storage node for real (issue 10): `lab up` runs `python -m agent.storage_node` inside
{prefix}-sn (100.64.0.250 on the fabric), its API on a unix socket in the lab's state dir.

On the session lab (read only: its controller owns the node's volumes): status reports it, it runs
in its namespace, both hosts reach it, the controller is told its URL, the API wants the token.
On a storage-only lab of this module's own (no controller to delete volumes it does not know of):
over the API (storage_v1, the lab's agent token) a volume is made and exported; the hosts reach it
over NBD across the fabric (qemu-io from inside h1 writes a pattern, from h2 reads it); the
qemu-storage-daemon is killed by its PID and the node's ensure loop serves the export again, data
intact, within a bounded wait; DELETE removes the export and the file. `up` again keeps a running
node, replaces a stopped one (which adopts the daemon: hosts are never cut off) and one left in a
re-created namespace; `down` leaves no namespace and no process of it (storage_lab checks).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from agent.contract.storage_v1 import StorageInfo, VolumeObserved
from agent.drivers.volumes import MiB
from lab import naming as nm
from lab import procs, services
from lab import state as lab_state
from lab.testing import ns_run, ping
from tests.lab.storage_support import (daemon_pid, lab_storage_client, lab_volume, nbd_url,
                                       qemu_io, skip_reason, storage_lab_fixture, volume_file)

pytestmark = [pytest.mark.lab]

VOL = "vol-0000000000051ab01"
SIZE = 16 * MiB
#: The ensure loop runs every 5 s; a crashed daemon restarts on the first retry.
REPAIR_WITHIN = 30.0


@pytest.fixture
def session_node(lab):
    """The session lab's node (read only)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if lab.status().storage is None or lab.status().storage.service is None:
        pytest.skip("the lab runs without services (KUMO_LAB_SERVICES=none)")
    with lab_storage_client(lab) as c:
        yield c


#: A storage-only lab of this module's own (2 hosts).
slab = storage_lab_fixture(hosts=2)


@pytest.fixture
def node(slab):
    with lab_storage_client(slab) as c:
        yield c


def _url() -> str:
    return nbd_url(str(nm.STORAGE_ADDR.ip), nm.STORAGE_NBD_PORT, VOL)


def _info_from(lab, hid: str):
    """`qemu-img info` of the volume over NBD, from inside a host namespace."""
    return ns_run(nm.host_netns(lab.prefix, hid), "qemu-img", "info", "--output=json", _url(),
                  check=False, timeout=15)


def _ns_inode(path: str) -> tuple[int, int]:
    s = os.stat(path)
    return s.st_ino, s.st_dev


def test_the_lab_reports_and_runs_its_storage_node(lab, session_node):
    st = lab.status()
    sn = st.storage
    assert st.ok and sn.ok, st.to_text()
    assert sn.netns == f"{lab.prefix}-sn" and sn.address == "100.64.0.250/24"
    assert sn.service.answering and sn.socket == str(services.storage_socket(lab.state_dir))
    assert f"storage {sn.netns} 100.64.0.250/24" in st.to_text()
    assert st.to_dict()["storage"]["ok"]
    # The node and its daemon run inside the storage namespace, never in the machine's own.
    ns_path = f"/run/netns/{sn.netns}"
    assert _ns_inode(f"/proc/{sn.service.pid}/ns/net") == _ns_inode(ns_path)
    # Both hosts reach it over the fabric.
    for h in st.hosts:
        assert ping(h.netns, str(nm.STORAGE_ADDR.ip))
    # The controller was told where it is.
    ctl = lab.status().controller
    if ctl is not None:
        environ = open(f"/proc/{ctl.pid}/environ", "rb").read().split(b"\0")
        assert f"KUMO_STORAGE_URL=unix:{sn.socket}".encode() in environ


def test_the_api_answers_with_the_token_only(lab, session_node):
    info = StorageInfo.model_validate(session_node.get("/v1/storage").json())
    assert info.node_id == "sn1" and info.protocol == "nbd" and "nbd" in info.capabilities
    with lab_storage_client(lab) as anon:
        anon.headers.pop("Authorization")
        r = anon.get("/v1/storage")
        assert r.status_code == 401 and r.json()["error"]["code"] == "AuthFailure"


def test_hosts_use_a_volume_and_it_survives_a_daemon_crash(slab, node):
    lab = slab
    with lab_volume(lab, node, VOL, SIZE) as obs:
        assert obs.exported and obs.size_bytes == SIZE and volume_file(lab, VOL).is_file()
        assert (obs.source.host, obs.source.port, obs.source.export) == (
            "100.64.0.250", 10809, VOL)
        # A host sees it over NBD, with its size; h1 writes, h2 reads the same bytes back.
        info = _info_from(lab, "h1")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["virtual-size"] == SIZE
        h1, h2 = nm.host_netns(lab.prefix, "h1"), nm.host_netns(lab.prefix, "h2")
        w = qemu_io(h1, _url(), "write -P 0x5a 0 1M")
        assert w.returncode == 0 and "wrote" in w.stdout, w.stdout + w.stderr
        r = qemu_io(h2, _url(), "read -P 0x5a 0 1M")
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout

        # The daemon dies: the node's ensure loop serves the export again, no request needed.
        pid = daemon_pid(lab)
        assert pid is not None
        sn_ns = f"/run/netns/{nm.storage_netns(lab.prefix)}"
        assert _ns_inode(f"/proc/{pid}/ns/net") == _ns_inode(sn_ns)
        started = procs.start_time(pid)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = t0 + REPAIR_WITHIN
        while procs.phase(pid, started) == "running":
            assert time.monotonic() < deadline, "the daemon did not die"
            time.sleep(0.05)
        while True:
            new = daemon_pid(lab)
            if new not in (None, pid) and _info_from(lab, "h1").returncode == 0:
                break
            assert time.monotonic() < deadline, f"no export {REPAIR_WITHIN} s after the crash"
            time.sleep(0.2)
        print(f"\nexport back {time.monotonic() - t0:.1f} s after the daemon was killed")
        got = VolumeObserved.model_validate(node.get(f"/v1/volumes/{VOL}").json())
        assert got.exported and got.source == obs.source
        r = qemu_io(h2, _url(), "read -P 0x5a 0 1M")  # the data survived
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout

        # Idempotent re-send; growing works while nobody is connected.
        spec = {"volume_id": VOL, "size_bytes": SIZE, "exported": True}
        assert node.put(f"/v1/volumes/{VOL}", json=spec).json() == got.model_dump()
        grown = node.put(f"/v1/volumes/{VOL}", json={**spec, "size_bytes": 2 * SIZE})
        assert grown.status_code == 200 and grown.json()["size_bytes"] == 2 * SIZE, grown.text
        info = _info_from(lab, "h2")
        assert info.returncode == 0 and json.loads(info.stdout)["virtual-size"] == 2 * SIZE
        smaller = node.put(f"/v1/volumes/{VOL}", json=spec)
        assert smaller.status_code == 400
        assert smaller.json()["error"]["code"] == "InvalidVolumeSize"
    # lab_volume deleted it (checked there: no volume, no file); the export is gone too.
    assert _info_from(lab, "h1").returncode != 0
    assert node.get("/v1/volumes").json() == []


def _node_pid(lab) -> int:
    return lab.status().storage.service.pid


def _served_to(lab, hid: str, vol: str) -> bool:
    url = nbd_url(str(nm.STORAGE_ADDR.ip), nm.STORAGE_NBD_PORT, vol)
    return ns_run(nm.host_netns(lab.prefix, hid), "qemu-img", "info", url, check=False,
                  timeout=15).returncode == 0


def test_up_keeps_a_running_node_and_repairs_a_dead_or_misplaced_one(slab, node):
    """Hosts keep their volume through all of it: the daemon outlives the node's exit."""
    lab = slab
    vol = "vol-0000000000051ab02"
    with lab_volume(lab, node, vol, SIZE):
        node_pid, qsd = _node_pid(lab), daemon_pid(lab)
        qsd_start = procs.start_time(qsd)
        assert lab.up(hosts=2).ok  # up again: the same node, the same daemon
        assert (_node_pid(lab), daemon_pid(lab)) == (node_pid, qsd)

        # The node stops (SIGTERM, as `lab down` or an upgrade does): the daemon keeps serving.
        rec = lab_state.load(lab.state_dir).processes["storage"]
        procs.stop(rec)
        assert procs.phase(rec.pid, rec.start_time) == "gone"
        assert procs.start_time(qsd) is not None and _served_to(lab, "h1", vol)
        assert not lab.status().ok and not lab.status().storage.service.alive
        # up starts a new node, which adopts the daemon (no restart, nobody cut off).
        assert lab.up(hosts=2).ok, lab.status().to_text()
        assert _node_pid(lab) != rec.pid and daemon_pid(lab) == qsd
        assert node.get(f"/v1/volumes/{vol}").json()["exported"] is True

        # The namespace is deleted and made again: the node and daemon in the old one serve
        # nobody; up replaces both and the export is back at the same address.
        old_node = _node_pid(lab)
        subprocess.run(["ip", "netns", "del", nm.storage_netns(lab.prefix)], check=True)
        assert lab.up(hosts=2).ok, lab.status().to_text()
        new_node, new_qsd = _node_pid(lab), daemon_pid(lab)
        assert new_node != old_node and procs.start_time(old_node) is None
        sn_ns = f"/run/netns/{nm.storage_netns(lab.prefix)}"
        deadline = time.monotonic() + REPAIR_WITHIN
        while not _served_to(lab, "h2", vol):
            assert time.monotonic() < deadline, "no export after the namespace was re-made"
            time.sleep(0.2)
        new_qsd = daemon_pid(lab)
        assert new_qsd != qsd
        # The old daemon has ended: gone, or a zombie its new parent (whatever PID 1 is on
        # this machine, not us) has not reaped yet; either way it serves nothing.
        while procs.phase(qsd, qsd_start) not in ("dead", "gone"):
            assert time.monotonic() < deadline, "the old qemu-storage-daemon still runs"
            time.sleep(0.2)
        assert _ns_inode(f"/proc/{new_qsd}/ns/net") == _ns_inode(sn_ns)
        assert _ns_inode(f"/proc/{new_node}/ns/net") == _ns_inode(sn_ns)
