"""Checks of per-host cephx on the RBD backend (agent/storage_node/rbd_cephx.py) against a real
cephx cluster (tests/lab/ceph_support.py, auth="cephx"), for tests/lab/test_rbd_backend_lab.py.

Each host's identity here is its Ceph user and key, exactly what the node hands that host in
its volume sources; QEMU's own rbd client (qemu-io) and `rbd` are the clients. A refusal is
the OSDs' EPERM ("Operation not permitted"), asked again and again for a whole window (at least
WINDOW seconds and 3 attempts) after a positive control with the right key just before it.
The guest check boots kumo-tiny under a private libvirtd (tests/lab/test_libvirt_driver_real.py's,
reused) whose QEMU opens the volume through the agent's own path: the contract's VolumeSource
-> reconcile.steps.volume_disk -> LibvirtHypervisor (libvirt secret + <auth>).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from agent.contract.v1 import VolumeAttachment, valid_ceph_key
from agent.drivers.base import DomainPlan, DriverError, NetworkHost
from agent.drivers.volumes import MiB
from agent.reconcile.steps import volume_disk
from agent.storage_node.app import wire_source
from agent.storage_node.rbd_backend import RbdBackend
from agent.storage_node.rbd_cephx import node_caps
from lab.testing import until
from tests.lab.ceph_support import MON_V1_PORT, Cluster, skip_reason
from tests.lab.storage_support import qemu_io_session
from tests.lab.test_libvirt_driver_real import (  # noqa: F401 (libvirtd: a fixture)
    _prepared_disks, _tiny_image, guest_cleanup, libvirtd)

PREFIX = "kumo-host-"
NODE_USER = "kumo-storage"
WINDOW = 4.0
EPERM = "Operation not permitted"


def cephx_backend_for(cluster: Cluster, tmp_path: Path) -> RbdBackend:
    """An RBD node as `python -m agent.storage_node` builds it with rbd_auth cephx: its own
    user with node_caps (not client.admin) and per-host users."""
    keyring = cluster.add_user(NODE_USER, node_caps(cluster.pool, PREFIX))
    return RbdBackend(tmp_path / "rbd-cephx", cluster.pool,
                      [NetworkHost("127.0.0.1", MON_V1_PORT)], conf=cluster.conf,
                      client_id=NODE_USER, keyring=keyring, host_user_prefix=PREFIX,
                      netns=cluster.ns, max_size=1 << 30)


def _url(cluster: Cluster, image: str, user: str, key: str) -> str:
    """QEMU's rbd: filename as `user` with `key`, and no keyring or admin key in reach."""
    return (f"rbd:{cluster.pool}/{image}:id={user}:key={key}:auth_supported=cephx:"
            f"mon_host=127.0.0.1\\:{MON_V1_PORT}:keyring=/dev/null")


def qio(cluster: Cluster, image: str, user: str, key: str, cmd: str):
    """One qemu-io command on the image as that user: (ok, what it printed)."""
    r = cluster.run("qemu-io", "-f", "raw", "-c", cmd, _url(cluster, image, user, key),
                    check=False)
    out = r.stdout + r.stderr
    return r.returncode == 0 and "failed" not in out and "error" not in out.lower(), out


def _refusals(cluster: Cluster, image: str, user: str, key: str) -> list[str]:
    """What one attempt of each client says as `user`: a read, a write (qemu-io) and
    `rbd export`; each must fail with EPERM."""
    outs = []
    for cmd in ("read 0 4k", "write -P 0x77 0 4k"):
        ok, out = qio(cluster, image, user, key, cmd)
        assert not ok, f"{user} could {cmd!r} {image}: {out}"
        outs.append(out)
    r = cluster.run("rbd", "--conf", "/dev/null", "-m", f"127.0.0.1:{MON_V1_PORT}", "--id", user,
                    "--key", key, "--keyring", "/dev/null", "export", "--no-progress",
                    f"{cluster.pool}/{image}", "-", check=False, timeout=60)
    assert r.returncode != 0 and not r.stdout, f"{user} exported {image}"
    outs.append(r.stderr)
    return outs


def refused_for_window(cluster: Cluster, image: str, user: str, key: str) -> None:
    """Every attempt for WINDOW seconds (3 at least) is refused with EPERM."""
    t0, attempts = time.monotonic(), 0
    while attempts < 3 or time.monotonic() - t0 < WINDOW:
        for out in _refusals(cluster, image, user, key):
            assert EPERM in out, f"{user} on {image}: not an EPERM refusal: {out[-400:]}"
        attempts += 1
    assert attempts >= 3 and time.monotonic() - t0 >= WINDOW


def _caps(cluster: Cluster, user: str) -> dict:
    [entry] = json.loads(cluster.ceph("auth", "get", f"client.{user}", "--format", "json"))
    return entry["caps"]


def check_cephx_hosts(b: RbdBackend, c: Cluster, v1: str, v2: str, v3: str, s1: str) -> None:
    ua, ub = PREFIX + "ha", PREFIX + "hb"
    b.create(v1, 64 * MiB)
    b.create(v2, 64 * MiB)
    with pytest.raises(DriverError) as e:
        b.export(v1)  # whom for?
    assert e.value.code == "HostRequired"
    src_a = b.export(v1, host="ha")
    src_b = b.export(v2, host="hb")
    assert src_a.auth.username == ua and valid_ceph_key(src_a.auth.key)
    assert src_b.auth.username == ub and src_b.auth.key != src_a.auth.key
    wire = wire_source(src_a)  # what the controller passes on to host A only
    assert (wire.auth_user, wire.auth_key) == (ua, src_a.auth.key)
    assert "auth_key" not in repr(wire) and src_a.auth.key not in repr(src_a)
    key_a, key_b = src_a.auth.key, src_b.auth.key
    assert b.exports() == {v1: src_a, v2: src_b}
    assert _caps(c, ua)["mon"] == "profile rbd" and v1 in _caps(c, ua)["osd"]
    assert v2 not in _caps(c, ua)["osd"]

    # Host A reads and writes its volume (the positive control), host B is refused.
    ok, out = qio(c, v1, ua, key_a, "write -P 0xa1 0 1M")
    assert ok and "wrote 1048576/1048576" in out, out
    ok, out = qio(c, v1, ua, key_a, "read -P 0xa1 0 1M")
    assert ok, out
    refused_for_window(c, v1, ub, key_b)
    refused_for_window(c, v2, ua, key_a)  # and the other way round
    ok, out = qio(c, v2, ub, key_b, "write -P 0xb2 0 1M")
    assert ok, out

    # The node's own user manages hosts' users only: no other user's key, no other caps.
    for args in (("auth", "get-key", "client.admin"),
                 ("auth", "caps", "client.admin", "mon", "allow r"),
                 ("auth", "get-or-create", "client.evil", "mon", "allow *")):
        r = c.run("ceph", "--conf", str(c.conf), "--id", NODE_USER, "--keyring",
                  str(c.dir / f"{NODE_USER}.keyring"), *args, check=False)
        assert r.returncode != 0 and "denied" in r.stderr.lower(), (args, r.stderr)

    # A move: host B gets v1, host A's key opens it no more (and B's opens both).
    moved = b.export(v1, host="hb")
    assert moved.auth.username == ub
    refused_for_window(c, v1, ua, key_a)
    ok, out = qio(c, v1, ub, key_b, "read -P 0xa1 0 1M")
    assert ok, out
    b.unexport(v1)
    refused_for_window(c, v1, ub, key_b)  # unexported: nobody's
    ok, out = qio(c, v2, ub, key_b, "read -P 0xb2 0 1M")  # its other volume still opens
    assert ok, out

    # A clone for host A reads its parent (v2's snapshot), which A cannot open by name.
    b.snapshot(v2, s1)
    b.create(v3, 128 * MiB, from_snapshot=s1)
    src3 = b.export(v3, host="ha")
    assert src3.auth.key == key_a  # one key per host
    ok, out = qio(c, v3, ua, key_a, "read -P 0xb2 0 1M")
    assert ok, out
    ok, out = qio(c, v3, ua, key_a, "write -P 0xc3 0 4k")
    assert ok, out
    refused_for_window(c, v2, ua, key_a)
    # A force detach while host A has it open: that client is cut off (blocklisted by the
    # node's own user), and A's key opens it no more.
    with qemu_io_session(["ip", "netns", "exec", c.ns, "qemu-io", "-f", "raw",
                          _url(c, v3, ua, key_a)], ended_is_refusal=True,
                         failure_words=("failed", "error")) as works:
        assert works()
        with pytest.raises(DriverError) as e:
            b.unexport(v3)
        assert e.value.code == "VolumeInUse"
        b.unexport(v3, force=True)
        assert not works()
    refused_for_window(c, v3, ua, key_a)
    # A node restart (a new backend on the same state) keeps the users and their caps.
    again = RbdBackend(b.state_dir, b.pool, b.mon_hosts, conf=b.conf, client_id=b.client_id,
                       keyring=b.keyring, host_user_prefix=PREFIX, netns=b.netns,
                       max_size=b.max_size)
    again.ensure()
    assert again.exports() == {v2: src_b}
    assert v3 not in _caps(c, ua).get("osd", "") and v2 in _caps(c, ub)["osd"]


GUEST_SCRIPT = b"""#!/bin/sh
(
  i=0
  while [ ! -b /dev/vdb ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
  echo "KUMO-RBD-READ=$(dd if=/dev/vdb bs=1048576 skip=1 count=1 2>/dev/null | head -c 15)"
  printf 'written-by-guest' | dd of=/dev/vdb conv=fsync 2>/dev/null && echo KUMO-RBD-WROTE
) &
"""


def check_guest_on_host_a(b: RbdBackend, c: Cluster, lv, tmp_path: Path,
                          vid: str) -> None:
    """kumo-tiny on host A with the volume as vdb through the agent's disk path."""
    import libvirt

    from agent.libvirt.ceph_secret import secret_uuid
    from agent.libvirt.driver import LibvirtHypervisor
    from agent.storage import LocalStorage

    image = _tiny_image()
    b.create(vid, 64 * MiB)
    (tmp_path / "node-marker").write_bytes(b"written-by-node")
    marker = c.run("qemu-io", "-f", "raw", "-c", f"write -s {tmp_path / 'node-marker'} 1M 15",
                   c.rbd_url(vid), check=False)
    assert "wrote 15/15" in marker.stdout, marker.stdout + marker.stderr
    src = b.export(vid, host="ha")
    att = VolumeAttachment(volume_id=vid, device="vdb", source=wire_source(src))
    disk = volume_disk(att)  # what the agent makes of the host's spec
    assert disk.source.auth.username == PREFIX + "ha"

    iid = "i-00000000000c0ffee"
    storage = LocalStorage(tmp_path / "state")
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    own = _prepared_disks(storage, iid, image, sha, 256 << 20, "tiny", GUEST_SCRIPT)
    console = storage.console_log_path(iid)
    plan = DomainPlan(name=iid, vcpus=1, memory_mib=128, console_log=console,
                      disks=own + (disk,), nics=())
    hv = LibvirtHypervisor(lv.uri, "qemu", poll_interval=0.1)
    with guest_cleanup(hv, storage, iid):
        hv.define(plan)
        xml = hv.domain_xml(plan)
        assert f"<auth username=\"{PREFIX}ha\">" in xml and secret_uuid(PREFIX + "ha") in xml
        assert src.auth.key not in xml
        hv.start(iid)
        t0 = time.monotonic()

        def said(needle: str) -> bool:
            return console.exists() and needle in console.read_bytes().decode(errors="replace")
        until(lambda: said("KUMO-RBD-WROTE"), 120, "the guest read and wrote its RBD disk")
        print(f"guest on RBD with cephx: read+write in {time.monotonic() - t0:.1f} s")
        assert said("KUMO-RBD-READ=written-by-node"), console.read_bytes()[-1500:]
        assert [d.source for d in hv.status(iid).disks if d.target == "vdb"] == [disk.source]
        conn = libvirt.open(lv.uri)
        try:
            sec = conn.secretLookupByUUIDString(secret_uuid(PREFIX + "ha"))
            assert sec.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_CEPH
            with pytest.raises(libvirt.libvirtError):
                sec.value()  # private: the key is not read back
        finally:
            conn.close()
        assert _watched(c, vid), "QEMU does not hold the image open"
        hv.destroy(iid)  # QEMU closes the image (and flushes) as it ends
    got = c.run("qemu-io", "-f", "raw", "-c", "read -v 0 16", c.rbd_url(vid)).stdout
    assert " ".join(f"{x:02x}" for x in b"written-by-guest") in got, got  # qemu-io's hexdump
    until(lambda: not _watched(c, vid), 60, "QEMU let go of the image")
    b.unexport(vid)
    refused_for_window(c, vid, PREFIX + "ha", src.auth.key)
    b.delete(vid)


def _watched(c: Cluster, vid: str) -> bool:
    r = c.run("rbd", "--conf", str(c.conf), "status", "--format", "json", f"{c.pool}/{vid}")
    return bool(json.loads(r.stdout)["watchers"])


def guest_skip_reason() -> str | None:
    """Why the guest check cannot run here, or None."""
    image = _tiny_image()
    return skip_reason() or (None if image is not None and image.exists()
                             else "kumo-tiny image not built (set KUMO_TINY_IMAGE)")
