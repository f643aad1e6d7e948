"""The lab's storage node for real (issue 10): `lab up` runs `python -m agent.storage_node` inside
{prefix}-sn (100.64.0.250 on the fabric), its API there over mutual TLS (what the controller
dials) and on a unix socket in the lab's state dir (for tests; the only one with the opt-out).

On the session lab (read only: its controller owns the node's volumes): status reports it, it runs
in its namespace, both hosts reach it, the controller is told its URL, the API wants the
controller's certificate (the lab's default, per-host NBD over TLS; the token with
KUMO_LAB_STORAGE_TLS=0). On a storage-only lab of this module's own (no controller to delete
volumes it does not know of): over the API (storage_v1, as the controller) a volume is made and
exported for h1; the hosts reach it over NBD across the fabric, each with its own certificate
(qemu-io from inside h1 writes a pattern; exported for h2, from h2 reads it); the host's
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

import httpx
import pytest

from agent.contract import tls, transport
from agent.contract.storage_v1 import StorageInfo, VolumeObserved
from agent.drivers.volumes import MiB
from controller.services import cloud_ca
from lab import libvirtd, network
from lab import naming as nm
from lab import procs, services
from lab import state as lab_state
from lab.testing import ns_run, ping
from tests.lab.storage_support import (daemon_pid, host_nbd_identity, lab_storage_client,
                                       lab_volume, skip_reason, storage_lab_fixture, volume_file)

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
    """The node's API as the controller; h1 and h2 hold their certificates (as their agents
    would) when the node serves NBD over TLS."""
    if libvirtd.nbd_tls_enabled():
        for hid in ("h1", "h2"):
            if not (slab.state_dir / "hosts" / hid / "agent" / "tls" / "host.pem").exists():
                host_nbd_identity(slab, hid)
    with lab_storage_client(slab) as c:
        yield c


def _nbd(lab, hid: str, port: int, vol: str = VOL) -> list[str]:
    """qemu-io/qemu-img arguments opening `vol` over NBD at the node's port `port` from host
    hid: with hid's own certificate when the node serves NBD over TLS."""
    opts = (f"driver=nbd,server.type=inet,server.host={nm.STORAGE_ADDR.ip},"
            f"server.port={port},export={vol}")
    if not libvirtd.nbd_tls_enabled():
        return ["--image-opts", opts]
    creds = lab.state_dir / "hosts" / hid / "agent" / "tls" / "nbd"
    return ["--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={creds}",
            "--image-opts", f"{opts},tls-creds=tls0"]


def _info_from(lab, hid: str, port: int):
    """`qemu-img info` of the volume over NBD, from inside a host namespace."""
    return ns_run(nm.host_netns(lab.prefix, hid), "qemu-img", "info", "--output=json",
                  *_nbd(lab, hid, port), check=False, timeout=15)


def qemu_io(lab, hid: str, port: int, command: str):
    return ns_run(nm.host_netns(lab.prefix, hid), "qemu-io", *_nbd(lab, hid, port), "-c",
                  command, check=False, timeout=15)


def _daemon_pid(lab, hid: str) -> int | None:
    """The pid of the qemu-storage-daemon serving hid's exports: the host's own with per-host
    NBD over TLS (hosts/<hid>/qsd.pid), else the node's one."""
    if not libvirtd.nbd_tls_enabled():
        return daemon_pid(lab)
    try:
        return int((services.storage_dir(lab.state_dir) / "hosts" / hid / "qsd.pid")
                   .read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


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
    # The controller was told where it is: across the fabric over mutual TLS (the default), as
    # on separate machines; the unix socket only with the opt-out.
    ctl = lab.status().controller
    if ctl is not None:
        environ = open(f"/proc/{ctl.pid}/environ", "rb").read().split(b"\0")
        want = (f"https://{services.storage_listen()}" if libvirtd.nbd_tls_enabled()
                else f"unix:{sn.socket}")
        assert f"KUMO_STORAGE_URL={want}".encode() in environ
    if libvirtd.nbd_tls_enabled():
        # From the controller's namespace its certificate is served there; a host's is not.
        def ask(certfile: str) -> int:
            ctx = tls.client_context(cloud_ca.load(cdir).cert_pem, certfile,
                                     peer_uri=tls.ANY_STORAGE)
            with transport.client(f"https://{services.storage_listen()}", timeout=10,
                                  tls=ctx) as c:
                return c.get("/v1/storage").status_code

        cdir = services.controller_dir(lab.state_dir)
        ctl_ns = nm.ctl_netns(lab.prefix)
        assert network.call_in(ctl_ns, ask, str(cloud_ca.controller_certificate(cdir))) == 200
        host_pem = services.agent_state_dir(lab.state_dir, "h1") / "tls" / "host.pem"
        assert network.call_in(ctl_ns, ask, str(host_pem)) == 403


def test_the_api_answers_the_controller_only(lab, session_node):
    info = StorageInfo.model_validate(session_node.get("/v1/storage").json())
    assert info.node_id == "sn1" and info.protocol == "nbd" and "nbd" in info.capabilities
    if libvirtd.nbd_tls_enabled():  # mutual TLS: the token over plain HTTP never gets in
        assert "export-host" in info.extensions
        token = services.ensure_token(lab.state_dir)
        with transport.client(services.storage_url(lab.state_dir), token, timeout=10) as c:
            with pytest.raises(httpx.HTTPError):
                c.get("/v1/storage")
        return
    with lab_storage_client(lab) as anon:
        anon.headers.pop("Authorization")
        r = anon.get("/v1/storage")
        assert r.status_code == 401 and r.json()["error"]["code"] == "AuthFailure"


def test_hosts_use_a_volume_and_it_survives_a_daemon_crash(slab, node):
    lab = slab
    with lab_volume(lab, node, VOL, SIZE, host="h1") as obs:
        assert obs.exported and obs.size_bytes == SIZE and volume_file(lab, VOL).is_file()
        p1 = obs.source.port
        assert (obs.source.host, p1, obs.source.export) == ("100.64.0.250", 10809, VOL)
        # A host sees it over NBD, with its size; h1 writes; exported for h2 (its own server
        # with per-host TLS, the same one without), h2 reads the same bytes back.
        info = _info_from(lab, "h1", p1)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["virtual-size"] == SIZE
        w = qemu_io(lab, "h1", p1, "write -P 0x5a 0 1M")
        assert w.returncode == 0 and "wrote" in w.stdout, w.stdout + w.stderr
        spec = {"volume_id": VOL, "size_bytes": SIZE, "exported": True, "host": "h2"}
        moved = node.put(f"/v1/volumes/{VOL}", json=spec)
        assert moved.status_code == 200, moved.text
        obs = VolumeObserved.model_validate(moved.json())
        p2 = obs.source.port
        r = qemu_io(lab, "h2", p2, "read -P 0x5a 0 1M")
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout

        # The daemon dies: the node's ensure loop serves the export again, no request needed.
        pid = _daemon_pid(lab, "h2")
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
            new = _daemon_pid(lab, "h2")
            if new not in (None, pid) and _info_from(lab, "h2", p2).returncode == 0:
                break
            assert time.monotonic() < deadline, f"no export {REPAIR_WITHIN} s after the crash"
            time.sleep(0.2)
        print(f"\nexport back {time.monotonic() - t0:.1f} s after the daemon was killed")
        got = VolumeObserved.model_validate(node.get(f"/v1/volumes/{VOL}").json())
        assert got.exported and got.source == obs.source
        r = qemu_io(lab, "h2", p2, "read -P 0x5a 0 1M")  # the data survived
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout

        # Idempotent re-send; growing works while nobody is connected.
        assert node.put(f"/v1/volumes/{VOL}", json=spec).json() == got.model_dump()
        grown = node.put(f"/v1/volumes/{VOL}", json={**spec, "size_bytes": 2 * SIZE})
        assert grown.status_code == 200 and grown.json()["size_bytes"] == 2 * SIZE, grown.text
        info = _info_from(lab, "h2", p2)
        assert info.returncode == 0 and json.loads(info.stdout)["virtual-size"] == 2 * SIZE
        smaller = node.put(f"/v1/volumes/{VOL}", json=spec)
        assert smaller.status_code == 400
        assert smaller.json()["error"]["code"] == "InvalidVolumeSize"
    # lab_volume deleted it (checked there: no volume, no file); the export is gone too.
    assert _info_from(lab, "h2", p2).returncode != 0
    assert node.get("/v1/volumes").json() == []


def _node_pid(lab) -> int:
    return lab.status().storage.service.pid


def _served_to(lab, hid: str, vol: str, port: int) -> bool:
    return ns_run(nm.host_netns(lab.prefix, hid), "qemu-img", "info", *_nbd(lab, hid, port, vol),
                  check=False, timeout=15).returncode == 0


def test_up_keeps_a_running_node_and_repairs_a_dead_or_misplaced_one(slab, node):
    """Hosts keep their volume through all of it: the daemon outlives the node's exit."""
    lab = slab
    vol = "vol-0000000000051ab02"
    with lab_volume(lab, node, vol, SIZE, host="h1") as obs:
        port = obs.source.port
        node_pid, qsd = _node_pid(lab), _daemon_pid(lab, "h1")
        qsd_start = procs.start_time(qsd)
        assert lab.up(hosts=2).ok  # up again: the same node, the same daemon
        assert (_node_pid(lab), _daemon_pid(lab, "h1")) == (node_pid, qsd)

        # The node stops (SIGTERM, as `lab down` or an upgrade does): the daemon keeps serving.
        rec = lab_state.load(lab.state_dir).processes["storage"]
        procs.stop(rec)
        assert procs.phase(rec.pid, rec.start_time) == "gone"
        assert procs.start_time(qsd) is not None and _served_to(lab, "h1", vol, port)
        assert not lab.status().ok and not lab.status().storage.service.alive
        # up starts a new node, which adopts the daemon (no restart, nobody cut off).
        assert lab.up(hosts=2).ok, lab.status().to_text()
        assert _node_pid(lab) != rec.pid and _daemon_pid(lab, "h1") == qsd
        assert node.get(f"/v1/volumes/{vol}").json()["exported"] is True

        # The namespace is deleted and made again: the node and daemon in the old one serve
        # nobody; up replaces both and the export is back at the same address.
        old_node = _node_pid(lab)
        subprocess.run(["ip", "netns", "del", nm.storage_netns(lab.prefix)], check=True)
        assert lab.up(hosts=2).ok, lab.status().to_text()
        new_node = _node_pid(lab)
        assert new_node != old_node and procs.start_time(old_node) is None
        sn_ns = f"/run/netns/{nm.storage_netns(lab.prefix)}"
        deadline = time.monotonic() + REPAIR_WITHIN
        while not _served_to(lab, "h1", vol, port):
            assert time.monotonic() < deadline, "no export after the namespace was re-made"
            time.sleep(0.2)
        new_qsd = _daemon_pid(lab, "h1")
        assert new_qsd != qsd
        # The old daemon has ended: gone, or a zombie its new parent (whatever PID 1 is on
        # this machine, not us) has not reaped yet; either way it serves nothing.
        while procs.phase(qsd, qsd_start) not in ("dead", "gone"):
            assert time.monotonic() < deadline, "the old qemu-storage-daemon still runs"
            time.sleep(0.2)
        assert _ns_inode(f"/proc/{new_qsd}/ns/net") == _ns_inode(sn_ns)
        assert _ns_inode(f"/proc/{new_node}/ns/net") == _ns_inode(sn_ns)
