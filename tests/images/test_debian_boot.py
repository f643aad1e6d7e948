"""debian-12 boots under TCG with the real cloud-init from a NoCloud seed: hostname, SSH key for the
default user, static or DHCP network, root grown to the disk, and the KUMO-READY marker on ttyS0."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest
import yaml

from tests.images.guest import boot, in_ns, make_seed, netns_with_tap, overlay

pytestmark = pytest.mark.slow
IID = "i-00000000000000d12"


MODES = ("static", "dhcp")


@contextlib.contextmanager
def _booted(debian12, d, mode: str):
    """debian-12 booting (not yet ready) in its own namespace, with the seed for `mode`: a
    static network-config, or none and a DHCP server in the namespace."""
    key = d / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    user = "#cloud-config\n" + yaml.safe_dump({"ssh_authorized_keys": [(d / "key.pub").read_text().strip()]})
    net = None
    if mode == "static":
        net = {"version": 2, "ethernets": {"eth0": {"match": {"macaddress": "52:54:00:12:34:56"}, "set-name": "eth0",
               "addresses": ["10.99.0.6/24"], "gateway4": "10.99.0.1",
               "nameservers": {"addresses": ["10.99.0.1"]}}}}
    seed = make_seed(d, {"instance-id": IID, "local-hostname": "deb-1"}, user, net)
    with netns_with_tap() as ns:
        dns = None
        if mode == "dhcp":
            dns = subprocess.Popen(["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                                    "--no-hosts", "--port=0", "--interface=br0", "--bind-interfaces",
                                    f"--dhcp-leasefile={d / 'leases'}", "--pid-file=",
                                    "--dhcp-host=52:54:00:12:34:56,10.99.0.6", "--dhcp-option=6,10.99.0.1",
                                    "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,1h"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with boot(overlay(debian12.path, d, "4G"), seed, d, mem=512, netns=ns, tap="tap0") as g:
                yield g, ns, key
        finally:
            if dns:
                dns.kill()
                dns.wait()


@pytest.fixture(scope="module")
def guests(debian12, tmp_path_factory):
    """Both guests boot at once (each one vCPU; the runner has two cores): the module takes
    about one boot's time instead of two."""
    with contextlib.ExitStack() as stack:
        yield {mode: stack.enter_context(_booted(debian12, tmp_path_factory.mktemp(mode), mode))
               for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_debian_boots_with_cloud_init(debian12, guests, mode):
    assert debian12.min_ram_mib >= 256 and debian12.ready_marker == "KUMO-READY"
    g, ns, key = guests[mode]
    g.wait_for(rf"KUMO-READY instance-id={IID}", 400)
    print(f"debian-12 ({mode}) boot-to-ready under TCG: {time.monotonic() - g.started:.1f}s",
          file=sys.stderr)
    r = in_ns(ns, "ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
              "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
              "debian@10.99.0.6", "hostname; cloud-init status; cat /etc/resolv.conf; sudo -n true && echo sudo-ok; "
              "df -B1M --output=size / | tail -1",
              timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "deb-1" and "status: done" in r.stdout and "sudo-ok" in r.stdout
    assert "nameserver 10.99.0.1" in r.stdout
    assert int(lines[-1]) > 3000  # root grown from the 2 GiB image to the 4 GiB overlay
