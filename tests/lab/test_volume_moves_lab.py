"""A volume moves between hosts with its data (issue 10, the first guest test): the lab's own
storage node (`lab up` runs it in {prefix}-sn at 100.64.0.250 on the fabric) makes a 64 MiB
volume and exports it through its storage_v1 API, and both lab hosts reach it. The lab is a
storage-only one of this module's own (tests/lab/storage_support.storage_lab): a lab's controller
would delete a volume it does not know of. The volume is
live-attached (libvirt `<disk type='network'>`, virtio vdb, serial = the
volume id) to a kumo-tiny guest on h1, which writes a block with a per-run pattern and syncs;
the disk is detached live and the storage node holds the bytes (read from its volume file);
the export then follows the attachment to h2 (VolumeSpec.host: with the lab's default per-host
NBD over TLS, h2's own NBD server, which admits only h2's certificate; docs/security.md "Storage
access") and, attached live to a guest on h2, it reads back the same checksum. The guests run
user-data scripts that wait for /dev/vdb and report on the serial console (no NIC). Afterwards
no guest, export or volume (file) is left; the storage node itself belongs to the lab.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path

import pytest

from agent.contract.storage_v1 import VolumeObserved
from agent.drivers.base import DomainDisk
from agent.drivers.volumes import MiB
from images.builder import build
from lab import libvirtd
from lab import naming as nm
from lab.testing import ns_run, ping
from tests.lab.guests import boot, new_instance_id
from tests.lab.storage_support import (host_nbd_identity, lab_storage_client, lab_volume,
                                       nbd_source, storage_lab_fixture, volume_file)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SN_ADDR = str(nm.STORAGE_ADDR.ip)
PORT = nm.STORAGE_NBD_PORT
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


slab = storage_lab_fixture(hosts=2)


def _pattern_sha(pattern: str) -> str:
    line = (pattern + "\n").encode()
    return hashlib.sha256((line * (BLOCK // len(line) + 1))[:BLOCK]).hexdigest()


def _opens(lab, hid: str, source, creds: Path | None) -> bool:
    """Whether `qemu-img info` from inside host hid's namespace opens the NBD export `source`,
    over TLS with hid's certificate when `creds` (its NBD certificate dir) is given."""
    h = source.hosts[0]
    opts = f"driver=nbd,server.type=inet,server.host={h.name},server.port={h.port}," \
           f"export={source.name}"
    argv = ["qemu-img", "info"]
    if creds is not None:
        argv += ["--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={creds}"]
        opts += ",tls-creds=tls0"
    return ns_run(nm.host_netns(lab.prefix, hid), *argv, "--image-opts", opts, check=False,
                  timeout=15).returncode == 0


def test_a_volume_moves_from_h1_to_h2_with_its_data(slab, tmp_path, tiny_image):
    lab = slab
    t0 = time.monotonic()
    vol = "vol-" + secrets.token_hex(9)[:17]
    serial = vol.replace("-", "")  # virtio-blk serials hold 20 characters, the id has 21
    pattern = "kumo-" + secrets.token_hex(8)
    want = _pattern_sha(pattern)
    size = 64 * MiB
    sn_ns = nm.storage_netns(lab.prefix)
    marks = {}

    def mark(what: str) -> None:
        marks[what] = round(time.monotonic() - t0, 1)

    def end_guests() -> None:
        for g in guests.values():
            g.destroy()
            assert g.hypervisor.status(g.name).power == "absent"

    tls = libvirtd.nbd_tls_enabled()
    creds = {h: host_nbd_identity(lab, h) for h in ("h1", "h2")} if tls else {}
    guests = {}
    try:
        # Both guests boot first, in parallel (each waits for its vdb), then the volume is made.
        for h, script in (("h1", WRITER), ("h2", READER)):
            guests[h] = boot(lab, h, tiny_image, tmp_path / h, instance_id=new_instance_id(),
                             hostname=f"mv-{h}", user_data=script.format(
                                 wait=VDB_WAIT, pattern=pattern, size=BLOCK).encode())
        # lab_volume deletes the volume on the way out (after the guests are gone) and checks it.
        with lab_storage_client(lab) as sn, \
                lab_volume(lab, sn, vol, size, host="h1") as observed:
            try:
                source = nbd_source(observed)
                assert (source.protocol, source.name) == ("nbd", vol)
                assert (source.hosts[0].name, source.hosts[0].port) == (SN_ADDR, PORT)
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

                # The bytes are on the storage node: its volume file (-U: its daemon holds it).
                copy = tmp_path / "readback.raw"
                ns_run(sn_ns, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
                       str(volume_file(lab, vol)), str(copy), timeout=30)
                data = copy.read_bytes()
                copy.unlink()
                assert len(data) == size
                assert hashlib.sha256(data[:BLOCK]).hexdigest() == want
                assert data[BLOCK:].count(0) == size - BLOCK  # nothing else was written
                mark("storage node checked")

                # The attachment moves to h2: the node exports the volume for h2 now.
                r = sn.put(f"/v1/volumes/{vol}", json={"volume_id": vol, "size_bytes": size,
                                                       "exported": True, "host": "h2"})
                assert r.status_code == 200, r.text
                moved = nbd_source(VolumeObserved.model_validate(r.json()))
                if tls:  # h2's own server; h1's no longer serves it
                    assert moved.hosts[0].port != PORT
                    assert not _opens(lab, "h1", source, creds.get("h1"))
                assert _opens(lab, "h2", moved, creds.get("h2"))
                disk = DomainDisk("vdb", moved, serial=serial, cache="none")
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

                end_guests()  # no client left connected: the volume can go
            finally:
                end_guests()  # before the volume goes (a no-op when already done)
    finally:
        try:
            end_guests()
        finally:
            for g in guests.values():
                g.hypervisor.close()
    # The export is gone with the volume (lab_volume checked the API and the file).
    assert not _opens(lab, "h2", moved, creds.get("h2"))
    mark("cleaned up")
    print(f"timings (s since start): {marks}")
