"""kumo-tiny boots under TCG from its own disk: seed handling, persistence, root growth, network
(static and DHCP, inside a private network namespace), SSH with a key, HTTP on 80, PUT client."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.images.guest import boot, in_ns, make_seed, netns_with_tap, overlay

pytestmark = pytest.mark.slow
IID = "i-0123456789abcdef0"
READY = r"KUMO-READY instance-id=(\S+)"


def read_guest_file(ov: Path, tmp: Path, path: str) -> str:
    """Read a file from the guest's root partition offline (overlay -> raw -> partition 2 -> fsck -> debugfs)."""
    raw = tmp / "peek.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(ov), str(raw)], check=True)
    start = int(subprocess.run(["sfdisk", "-d", str(raw)], capture_output=True, text=True, check=True)
                .stdout.split("start=")[2].split(",")[0])
    part = tmp / "peek.ext4"
    subprocess.run(["dd", f"if={raw}", f"of={part}", "bs=512", f"skip={start}", "status=none"], check=True)
    # The guest synced, but a file it just created may exist only in the ext4 journal until the kernel
    # checkpoints it; debugfs does not replay the journal, so replay it first (as a mount would).
    fsck = subprocess.run(["e2fsck", "-fy", str(part)], capture_output=True, text=True)
    assert fsck.returncode < 4, fsck.stdout + fsck.stderr  # 0 clean, 1/2 fixed (journal replayed)
    out = subprocess.run(["debugfs", "-R", f"cat {path}", str(part)], capture_output=True, text=True).stdout
    raw.unlink()
    part.unlink()
    return out


def test_manifest(tiny):
    assert tiny.format == "qcow2" and tiny.boot_mode == "bios" and tiny.ready_marker == "KUMO-READY"
    assert tiny.path.exists() and tiny.size < 40_000_000


def test_boot_ready_user_data_once_persistence_and_grow(tiny, tmp_path):
    user = "#!/bin/sh\necho \"ran-$(cat /root/count 2>/dev/null)\"\necho x >> /root/count\n"
    seed = make_seed(tmp_path, {"instance-id": IID, "local-hostname": "tiny-1"}, user)
    ov = overlay(tiny.path, tmp_path, "1G")
    with boot(ov, seed, tmp_path) as g:
        g.wait_for(READY, 60)
        took = time.monotonic() - g.started
        print(f"kumo-tiny boot-to-ready under TCG: {took:.1f}s", file=sys.stderr)
        text = g.text()
        assert f"kumo-tiny: hostname=tiny-1 instance-id={IID}" in text
        assert "ran-\r\n" in text or "ran-\n" in text
        assert "grew root partition" in text and "resized root filesystem" in text
        assert "seed error" not in text
        assert took < 30
    assert read_guest_file(ov, tmp_path, "/root/count") == "x\n"
    with boot(ov, seed, tmp_path) as g:  # power-cycled: same instance, user-data must not run again
        g.wait_for(READY, 60)
        assert "running user-data" not in g.text() and "grew root" not in g.text()
    assert read_guest_file(ov, tmp_path, "/root/count") == "x\n"


def test_acpi_power_button_powers_off(tiny, tmp_path):
    seed = make_seed(tmp_path, {"instance-id": IID})
    with boot(overlay(tiny.path, tmp_path), seed, tmp_path) as g:
        g.wait_for(READY, 60)
        time.sleep(1)  # acpid is up well before READY; leave the console quiet a moment
        g.monitor("system_powerdown")
        g.proc.wait(30)  # raises TimeoutExpired if the guest ignores the power button
        assert "kumo-tiny: shutting down" in g.text()


def test_cloud_config_runcmd_and_hostname(tiny, tmp_path):
    user = "#cloud-config\n" + yaml.safe_dump({"hostname": "from-user-data",
                                                "runcmd": ["echo runcmd-$(hostname) > /root/r", "cat /root/r"]})
    seed = make_seed(tmp_path, {"instance-id": IID}, user)
    with boot(overlay(tiny.path, tmp_path), seed, tmp_path) as g:
        g.wait_for(READY, 60)
        assert "runcmd-from-user-data" in g.text() and "seed error" not in g.text()


@pytest.mark.parametrize("files,expect", [
    ({}, "no NoCloud seed found"),
    ({"user": "#!/bin/sh\necho hi\n"}, "meta-data missing"),
    ({"meta": "instance-id: [unclosed\n"}, "meta-data: line"),
    ({"meta": "local-hostname: x\n"}, "meta-data has no instance-id"),
    ({"meta": {"instance-id": IID}, "net": "version: 2\nethernets: {eth0: {addresses: [bad]}}\n"},
     "network-config: bad address"),
], ids=["no-seed", "no-meta", "bad-yaml", "no-iid", "bad-net"])
def test_malformed_seed_still_reaches_ready(tiny, tmp_path, files, expect):
    seed = make_seed(tmp_path, files.get("meta"), files.get("user"), files.get("net")) if files else None
    with boot(overlay(tiny.path, tmp_path), seed, tmp_path) as g:
        g.wait_for(READY, 60)
        text = g.text()
        assert f"kumo-tiny: seed error: {expect}" in text, text[-2000:]
        if "hostname" not in str(files.get("meta")):
            assert "kumo-tiny: hostname=kumo-tiny" in text


PUT_SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        reply = b'got ' + body + b' ttl=' + self.headers.get('X-Ttl', '').encode()
        self.send_response(200); self.send_header('Content-Length', str(len(reply))); self.end_headers()
        self.wfile.write(reply)
http.server.HTTPServer(('10.99.0.1', 8080), H).serve_forever()
"""


def ssh(ns: str, key: Path, ip: str, cmd: str) -> subprocess.CompletedProcess:
    return in_ns(ns, "ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "ConnectTimeout=20", "-o", "BatchMode=yes", f"root@{ip}", cmd, timeout=60)


def test_static_network_ssh_http_put(tiny, tmp_path):
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (tmp_path / "key.pub").read_text().strip()
    net = {"version": 2, "ethernets": {"eth0": {"match": {"macaddress": "52:54:00:12:34:56"}, "set-name": "eth0",
           "addresses": ["10.99.0.5/24"], "gateway4": "10.99.0.1", "nameservers": {"addresses": ["10.99.0.1"]}}}}
    seed = make_seed(tmp_path, {"instance-id": IID, "local-hostname": "net-1"},
                     "#cloud-config\n" + yaml.safe_dump({"ssh_authorized_keys": [pub]}), net)
    with netns_with_tap() as ns:
        srv = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PUT_SERVER],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with boot(overlay(tiny.path, tmp_path), seed, tmp_path, netns=ns, tap="tap0") as g:
                g.wait_for(READY, 90)
                assert in_ns(ns, "busybox", "ping", "-c", "1", "-W", "5", "10.99.0.5").returncode == 0
                http = in_ns(ns, "curl", "-s", "-m", "10", "http://10.99.0.5/")
                assert http.stdout.strip() == IID
                r = ssh(ns, key, "10.99.0.5", "hostname; cat /etc/resolv.conf; ip route; "
                        "echo hello | curl -s -X PUT -H 'X-Ttl: 60' --data-binary @- http://10.99.0.1:8080/t")
                assert r.returncode == 0, r.stderr
                assert r.stdout.startswith("net-1\n") and "nameserver 10.99.0.1" in r.stdout
                assert "default via 10.99.0.1" in r.stdout and "got hello\n ttl=60" in r.stdout
                bad = tmp_path / "other"
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bad)], check=True)
                assert ssh(ns, bad, "10.99.0.5", "true").returncode != 0
        finally:
            srv.kill()
            srv.wait()


def test_dhcp_without_network_config(tiny, tmp_path):
    seed = make_seed(tmp_path, {"instance-id": IID, "local-hostname": "dhcp-1"})
    with netns_with_tap() as ns:
        leases = tmp_path / "leases"
        dns = subprocess.Popen(["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                                "--no-hosts", "--port=0", "--interface=br0", "--bind-interfaces",
                                f"--dhcp-leasefile={leases}", "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,1h",
                                "--pid-file="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with boot(overlay(tiny.path, tmp_path), seed, tmp_path, netns=ns, tap="tap0") as g:
                g.wait_for(READY, 90)
                ip = g.wait_for(r"kumo-tiny: dhcp eth0 (10\.99\.0\.\d+)/24", 5).group(1)
                assert in_ns(ns, "busybox", "ping", "-c", "1", "-W", "5", ip).returncode == 0
                assert in_ns(ns, "curl", "-s", "-m", "10", f"http://{ip}/").stdout.strip() == IID
        finally:
            dns.kill()
            dns.wait()
