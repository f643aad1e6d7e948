"""Booting guests by hand on a lab host for image tests: a qcow2 overlay on a built image, a seed
ISO, a domain from the agent's designer on the host's own libvirtd, and a console to wait on.

Below the agent on purpose: these tests prove the images and the host pieces (overlay, seed,
domain XML, libvirt driver) before any controller is involved. Domains are named `boot-...`,
never like an instance (`i-...`), so the lab's agents leave them alone.
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent import qemu_img, seed
from agent.drivers.base import DomainNic, DomainPlan
from agent.drivers.disks import instance_disks
from agent.hypervisor_choice import choose_hypervisor
from agent.libvirt.driver import LibvirtHypervisor
from lab.naming import host_netns
from lab.testing import until

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]


def new_instance_id() -> str:
    return "i-" + secrets.token_hex(9)[:17]


def ssh_keypair(directory: Path) -> tuple[Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kumo-test",
                        "-f", str(key)], check=True)
    return key, key.with_suffix(".pub").read_text().strip()


@dataclass
class Guest:
    name: str
    netns: str
    console: Path
    hypervisor: LibvirtHypervisor
    started_at: float = field(default_factory=time.monotonic)

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, timeout: float) -> re.Match:
        """Wait for a regex on the serial console; fail with the console's tail otherwise."""
        rx = re.compile(pattern)
        try:
            return until(lambda: rx.search(self.console_text()), timeout,
                         f"{self.name}: {pattern!r} on the console", every=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}; tail:\n{self.console_text()[-3000:]}") from None

    def destroy(self) -> None:
        self.hypervisor.undefine(self.name)


def boot(lab, host_id: str, image: Path, workdir: Path, *, instance_id: str, hostname: str,
         user_data: bytes = b"", keys: tuple[str, ...] = (), network_config: dict | None = None,
         mac: str | None = None, bridge: str | None = None, vcpus: int = 1,
         memory_mib: int = 128, raw_seed: Path | None = None) -> Guest:
    """Define and start a guest on `host_id`'s libvirtd from an overlay of `image`."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    name = f"boot-{instance_id[2:]}"
    disk = workdir / "root.qcow2"
    qemu_img.create_overlay(image, disk, None)
    seed_path = raw_seed
    if seed_path is None:
        seed_path = workdir / "seed.iso"
        seed.build_seed(seed_path, instance_id=instance_id, hostname=hostname, user_data=user_data,
                        ssh_authorized_keys=keys, network_config=network_config)
    # Not a "tap*" name: on a lab host the agent's firewall owns every tap* (a tap it does not
    # know gets nothing through), and these test guests are not Kumo instances.
    nics = (DomainNic(mac=mac, bridge=bridge, tap="tg" + name[-12:]),) if bridge else ()
    plan = DomainPlan(name=name, vcpus=vcpus, memory_mib=memory_mib,
                      disks=instance_disks(disk, seed_path), console_log=workdir / "console.log",
                      nics=nics)
    hv = LibvirtHypervisor(lab.libvirt_uri(host_id), choose_hypervisor("auto"))
    hv.define(plan)
    guest = Guest(name=name, netns=host_netns(lab.prefix, host_id), console=plan.console_log, hypervisor=hv)
    hv.start(name)
    guest.started_at = time.monotonic()
    return guest


def static_network(mac: str, cidr: str, gateway: str) -> dict:
    return {"version": 2, "ethernets": {"eth0": {
        "match": {"macaddress": mac}, "set-name": "eth0", "addresses": [cidr],
        "gateway4": gateway}}}


def ssh(netns: str, key: Path, address: str, command: str, timeout: float = 30,
        user: str = "root") -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, "ssh", "-i", str(key), *SSH_OPTS,
                           f"{user}@{address}", command],
                          capture_output=True, text=True, timeout=timeout)


def wait_ssh(netns: str, key: Path, address: str, command: str, timeout: float,
             user: str = "root") -> subprocess.CompletedProcess:
    """Retry until the command succeeds or `timeout` passes. Each try may take what is left of
    the timeout (at least ssh()'s 30 s): a command that runs long by design (a 30 s CPU burner
    after the login) must not be cut off by the per-try default."""
    deadline = time.monotonic() + timeout
    while True:
        r = ssh(netns, key, address, command, user=user,
                timeout=max(30.0, deadline - time.monotonic()))
        if r.returncode == 0 or time.monotonic() > deadline:
            return r
        time.sleep(1)


def qemu_pid_of(instance_id: str) -> int:
    """The QEMU process libvirt runs for the instance's domain (`-name guest=<id>,...`)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(
                a.startswith(f"guest={instance_id},".encode()) for a in argv):
            return int(d)
    raise AssertionError(f"no QEMU process for {instance_id}")



def cpu_burner(seconds: int) -> str:
    """A guest shell command that keeps every vCPU busy for `seconds` (guest clock), ends by
    itself and prints "burned": one busy loop per processor, so CPUUtilization nears 100%."""
    return ("n=$(grep -c ^processor /proc/cpuinfo); end=$(( $(date +%s) + " + str(int(seconds))
            + " )); for k in $(seq $n); do (while [ $(date +%s) -lt $end ]; do i=0; "
            "while [ $i -lt 5000 ]; do i=$((i+1)); done; done) & done; wait; echo burned")
