"""A volume moves between hosts with its data (issue 10, the first guest test): the NBD storage
node runs in a storage namespace this test creates and wires to the lab's fabric (a veth into
the fabric bridge, an underlay address no lab part uses), so both lab hosts reach it. A 64 MiB
volume is exported and live-attached (libvirt `<disk type='network'>`, virtio vdb, serial = the
volume id) to a kumo-tiny guest on h1, which writes a block with a per-run pattern and syncs;
the disk is detached live and the storage node holds the bytes (read over NBD from its
namespace); attached live to a guest on h2, it reads back the same checksum. The guests run
user-data scripts that wait for /dev/vdb and report on the serial console (no NIC). Afterwards
no guest, export, volume, daemon, namespace or veth is left.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path

import pytest

from agent.drivers.base import DomainDisk
from agent.drivers.volumes import MiB
from images.builder import build
from lab import naming as nm
from lab.testing import ns_run, ping
from tests.lab.guests import boot, new_instance_id
from tests.lab.storage_support import ip, nbd_url, skip_reason, storage_node

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# On the underlay (100.64.0.0/24): the internet namespace is .1, hosts are .(10+N) for N <= 99.
SN_ADDR = "100.64.0.250"
PORT = 10809
SN_PORT = "p-sn"  # the storage namespace's port on the fabric bridge
BLOCK = 1 * MiB  # what the guest writes at offset 0

# Both scripts run in the background (boot.sh waits for user-data) and report on the console.
VDB_WAIT = """while [ ! -b /dev/vdb ]; do usleep 200000; done
  echo "KUMO-VDB serial=$(cat /sys/block/vdb/serial) sectors=$(cat /sys/block/vdb/size)"\
 "by-id=$(ls /dev/disk/by-id 2>/dev/null | tr '\\n' ,)"
"""
VDB_SEEN = r"KUMO-VDB serial=(\S*) sectors=(\d+) by-id=(\S*)"
WRITER = """#!/bin/sh
(
  {wait}  yes {pattern} | head -c {size} > /tmp/block
  if dd if=/tmp/block of=/dev/vdb bs=65536 conv=fsync 2>/dev/null && sync; then
    echo "KUMO-WROTE $(sha256sum < /tmp/block | cut -d' ' -f1)"
  else
    echo "KUMO-WRITE-FAILED"
  fi
  while [ -b /dev/vdb ]; do usleep 200000; done
  echo "KUMO-VDB-GONE"
) > /dev/console 2>&1 &
"""
WROTE = r"KUMO-WROTE ([0-9a-f]{64})|KUMO-WRITE-FAILED"
READER = """#!/bin/sh
(
  {wait}  echo "KUMO-READ $(head -c {size} /dev/vdb | sha256sum | cut -d' ' -f1)"
) > /dev/console 2>&1 &
"""


@pytest.fixture(scope="module")
def tiny_image() -> Path:
    return build("kumo-tiny").path


def _fabric_wiring(prefix: str):
    """wire(ns), unwire(): a veth from the fabric bridge into the storage namespace, made from
    inside the fabric namespace (as lab/network.py makes the hosts' uplinks)."""
    fab = nm.fabric_netns(prefix)

    def wire(ns: str) -> None:
        ip(fab, "link", "add", SN_PORT, "type", "veth", "peer", "name", nm.UPLINK, "netns", ns)
        ip(fab, "link", "set", SN_PORT, "master", nm.FABRIC_BRIDGE, "mtu", str(nm.FABRIC_MTU),
           "up")
        ip(ns, "link", "set", nm.UPLINK, "mtu", str(nm.FABRIC_MTU), "up")
        ip(ns, "addr", "add", f"{SN_ADDR}/{nm.FABRIC_NET.prefixlen}", "dev", nm.UPLINK)

    def unwire() -> None:
        ip(fab, "link", "del", SN_PORT, check=False)

    return wire, unwire


def _pattern_sha(pattern: str) -> str:
    line = (pattern + "\n").encode()
    return hashlib.sha256((line * (BLOCK // len(line) + 1))[:BLOCK]).hexdigest()


def test_a_volume_moves_from_h1_to_h2_with_its_data(lab, tmp_path, tiny_image):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    lab_addrs = {str(nm.host_address(h).ip) for h in nm.host_ids(nm.MAX_HOSTS)}
    assert SN_ADDR not in lab_addrs | {str(nm.INET_FABRIC_ADDR)}
    vol = "vol-" + secrets.token_hex(9)[:17]
    serial = vol.replace("-", "")  # virtio-blk serials hold 20 characters, the id has 21
    pattern = "kumo-" + secrets.token_hex(8)
    want = _pattern_sha(pattern)
    size = 64 * MiB
    wire, unwire = _fabric_wiring(lab.prefix)
    marks = {}

    def mark(what: str) -> None:
        marks[what] = round(time.monotonic() - t0, 1)

    def end_guests() -> None:
        for g in guests.values():
            g.destroy()
            assert g.hypervisor.status(g.name).power == "absent"

    guests = {}
    try:
        # Both guests boot first, in parallel (each waits for its vdb), the storage node meanwhile.
        for h, script in (("h1", WRITER), ("h2", READER)):
            guests[h] = boot(lab, h, tiny_image, tmp_path / h, instance_id=new_instance_id(),
                             hostname=f"mv-{h}", user_data=script.format(
                                 wait=VDB_WAIT, pattern=pattern, size=BLOCK).encode())
        with storage_node(lab.prefix + "-sn", SN_ADDR, PORT, wire, unwire) as (backend, _, _):
            try:
                backend.create(vol, size)
                source = backend.export(vol)
                assert (source.protocol, source.name) == ("nbd", vol)
                assert (source.hosts[0].name, source.hosts[0].port) == (SN_ADDR, PORT)
                ns = backend.daemon.child.spec.netns
                # Both hosts reach the storage node over the underlay.
                for h in ("h1", "h2"):
                    assert ping(nm.host_netns(lab.prefix, h), SN_ADDR), f"{h} cannot reach it"
                disk = DomainDisk("vdb", source, serial=serial, cache="none")
                mark("storage up")

                g1, g2 = guests["h1"], guests["h2"]
                for g in (g1, g2):
                    g.wait_console(r"KUMO-READY instance-id=", timeout=90)
                mark("guests ready")

                g1.hypervisor.attach_disk(g1.name, disk)
                seen = g1.wait_console(VDB_SEEN, timeout=30)
                assert seen.groups()[:2] == (serial, str(size // 512)), seen.group(0)
                wrote = g1.wait_console(WROTE, timeout=60)
                assert wrote.group(1) == want, wrote.group(0)
                mark("h1 wrote")
                g1.hypervisor.detach_disk(g1.name, "vdb", timeout=30)
                g1.wait_console(r"KUMO-VDB-GONE", timeout=15)
                assert "vdb" not in [d.target for d in g1.hypervisor.status(g1.name).disks]
                mark("h1 detached")

                # The bytes are on the storage node: read over NBD from its own namespace.
                copy = backend.state_dir / "readback.raw"
                ns_run(ns, "qemu-img", "convert", "-f", "raw", "-O", "raw",
                       nbd_url(SN_ADDR, PORT, vol), str(copy), timeout=30)
                data = copy.read_bytes()
                copy.unlink()
                assert len(data) == size
                assert hashlib.sha256(data[:BLOCK]).hexdigest() == want
                assert data[BLOCK:].count(0) == size - BLOCK  # nothing else was written
                mark("storage node checked")

                g2.hypervisor.attach_disk(g2.name, disk)
                seen = g2.wait_console(VDB_SEEN, timeout=30)
                assert seen.groups()[:2] == (serial, str(size // 512)), seen.group(0)
                read = g2.wait_console(r"KUMO-READ ([0-9a-f]{64})", timeout=60)
                assert read.group(1) == want, read.group(0)
                mark("h2 read")
                g2.hypervisor.detach_disk(g2.name, "vdb", timeout=30)
                assert "vdb" not in [d.target for d in g2.hypervisor.status(g2.name).disks]
                mark("h2 detached")
                print(f"/dev/disk/by-id in the guest: {seen.group(3)!r}")

                end_guests()
                backend.unexport(vol)  # no client left connected
                backend.delete(vol)
                assert backend.exports() == {} and backend.volumes() == []
            finally:
                end_guests()  # before the storage node goes (a no-op when already done)
    finally:
        try:
            end_guests()
        finally:
            for g in guests.values():
                g.hypervisor.close()
    # The storage namespace and its fabric port are gone (storage_node checked the rest).
    links = ns_run(nm.fabric_netns(lab.prefix), "ip", "-o", "link").stdout
    assert f" {SN_PORT}@" not in links and f" {SN_PORT}:" not in links
    mark("cleaned up")
    print(f"timings (s since start): {marks}")
