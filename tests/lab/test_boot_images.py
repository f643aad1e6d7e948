"""Real guests from the built machine images on lab hosts: kumo-tiny on two hosts, each from a
qcow2 overlay and a seed ISO on the host's own libvirtd. Checks what the seed asked for from
outside the guest: console lines, ping and HTTP from the host namespace, SSH with the injected
key. debian-12's real cloud-init is proven once each where it is cheapest: from a NoCloud seed
(static and DHCP network) with plain QEMU in tests/images/test_debian_boot.py, and launched
through Kumo with the EC2 datasource (runcmd user-data, IMDSv2) in
tests/lab/test_metadata_cloud_init_lab.py. (tests/images also covers malformed seeds.)
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from images.builder import build
from lab.testing import ns_run, ping
from tests.lab.guests import (boot, new_instance_id, ssh, ssh_keypair, static_network,
                              wait_ssh)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

USER_DATA = b"""#!/bin/sh
echo "written by user-data on $(hostname)" > /root/user-data.txt
echo "USERDATA-OUTPUT host=$(hostname)"
"""


@pytest.fixture(scope="session")
def tiny_image() -> Path:
    return build("kumo-tiny").path


def _boot_tiny_with_network(lab, host_bridge, tmp_path, tiny_image, host_id, n):
    netns = f"{lab.prefix}-{host_id}"
    host_bridge(netns, "kbt0", f"10.77.{n}.1/24")
    key, pub = ssh_keypair(tmp_path)
    iid, mac, ip = new_instance_id(), f"52:54:00:77:{n:02x}:10", f"10.77.{n}.10"
    guest = boot(lab, host_id, tiny_image, tmp_path / host_id, instance_id=iid,
                 hostname=f"tiny-{host_id}", user_data=USER_DATA, keys=(pub,), mac=mac,
                 bridge="kbt0", network_config=static_network(mac, f"{ip}/24", f"10.77.{n}.1"))
    return guest, iid, ip, key


def test_kumo_tiny_boots_on_two_hosts_and_does_what_the_seed_asks(lab, host_bridge, tmp_path,
                                                                  tiny_image):
    guests = [(_boot_tiny_with_network(lab, host_bridge, tmp_path, tiny_image, h, n), h)
              for n, h in ((1, "h1"), (2, "h2"))]
    try:
        for (guest, iid, ip, key), host_id in guests:
            ready = guest.wait_console(rf"KUMO-READY instance-id={iid}", timeout=60)
            print(f"kumo-tiny on {host_id}: ready {time.monotonic() - guest.started_at:.1f} s "
                  "after start (TCG)")
            assert ready
            console = guest.console_text()
            assert f"hostname=tiny-{host_id} instance-id={iid}" in console
            assert f"USERDATA-OUTPUT host=tiny-{host_id}" in console

            # the static address from network-config answers from another namespace
            assert ping(guest.netns, ip, count=3, wait=2)
            http = ns_run(guest.netns, "curl", "-s", "--max-time", "5", f"http://{ip}/")
            assert iid in http.stdout
            # SSH with the injected key runs a command; the user-data script's file is there
            r = wait_ssh(guest.netns, key, ip, "hostname; cat /root/user-data.txt", timeout=30)
            assert r.returncode == 0, r.stderr
            assert r.stdout.splitlines()[0] == f"tiny-{host_id}"
            assert f"written by user-data on tiny-{host_id}" in r.stdout
            # a key that was not injected is refused
            other_key, _ = ssh_keypair(tmp_path / "other")
            assert ssh(guest.netns, other_key, ip, "true").returncode != 0
    finally:
        for (guest, *_), _h in guests:
            guest.destroy()
