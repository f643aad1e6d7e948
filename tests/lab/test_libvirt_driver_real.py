"""LibvirtHypervisor + LocalStorage against a real, private libvirtd booting a real (tiny) guest,
including the Hypervisor contract's live parts (tests/unit/hypervisor_contract.py): disks
hot-plugged into running guests and statistics counters moving while they run.

The libvirtd runs in its own network namespace and a private mount namespace (its own /etc/libvirt
without the `default` network, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt
all bind-mounted from a temp dir). The guest has NO network interface. Its disk is a 512-byte boot
sector that prints a ready line on COM1 and halts, so it boots under TCG in well under a second.
Everything started here is stopped by PID and the namespace is deleted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.drivers.base import DomainDisk, DomainNic, DomainPlan, FileSource
from agent.drivers.disks import instance_disks
from agent.libvirt.designer import tap_name
from agent.seed import meta_data
from agent.storage import LocalStorage
from lab.testing import until
from tests.unit import hypervisor_contract as contract

pytestmark = [pytest.mark.lab, pytest.mark.slow]

IID = "i-0000000000000b007"
AMI = "ami-0000000000000b007"
MARK = b"KUMO-READY instance-id=boot-sector"

MOUNT_AND_EXEC = r"""set -e
mount -t tmpfs -o mode=0755 kumo-test-run /run
mkdir -p /run/libvirt /run/lock
while [ "$1" != "--" ]; do mount --bind "$1" "$2"; shift 2; done
shift
exec "$@"
"""
BINDS = (("etc", "/etc/libvirt"), ("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"),
         ("cache", "/var/cache/libvirt"), ("log", "/var/log/libvirt"))


def _boot_sector(message: bytes) -> bytes:
    """Real-mode code: print `message` on COM1 (0x3f8), then cli+hlt forever (ignores ACPI)."""
    msg_addr = 0x7C00 + 22
    code = bytes([
        0xFA,                                    # cli
        0x31, 0xC0,                              # xor ax, ax
        0x8E, 0xD8,                              # mov ds, ax
        0xBE, msg_addr & 0xFF, msg_addr >> 8,    # mov si, msg
        0xBA, 0xF8, 0x03,                        # mov dx, 0x3f8
        0xAC,                                    # loop: lodsb
        0x84, 0xC0,                              # test al, al
        0x74, 0x03,                              # jz done
        0xEE,                                    # out dx, al
        0xEB, 0xF8,                              # jmp loop
        0xF4,                                    # done: hlt
        0xEB, 0xFD,                              # jmp done
    ])
    assert len(code) == 22
    body = code + message + b"\r\n\0"
    return body.ljust(510, b"\0") + b"\x55\xaa"


def _conf(values: dict) -> str:
    out = []
    for k, v in values.items():
        if isinstance(v, int):
            out.append(f"{k} = {v}")
        elif isinstance(v, list):
            out.append(f"{k} = []")
        else:
            assert '"' not in v and "\n" not in v
            out.append(f'{k} = "{v}"')
    return "\n".join(out) + "\n"


class PrivateLibvirtd:
    def __init__(self, base: Path):
        self.base = base
        self.ns = f"kumo-t{os.getpid() % 100000}"
        self.root = base / "lv"
        self.sock_dir = base / "sock"
        self.proc: subprocess.Popen | None = None
        self.uri = f"qemu:///system?socket={self.sock_dir}/libvirt-sock"

    def prepare(self) -> None:
        for sub, _ in BINDS:
            (self.root / sub).mkdir(parents=True)
        (self.root / "etc" / "qemu" / "networks").mkdir(parents=True)
        self.sock_dir.mkdir(mode=0o700)
        (self.root / "etc" / "libvirtd.conf").write_text(_conf({
            "unix_sock_dir": str(self.sock_dir), "unix_sock_rw_perms": "0700",
            "unix_sock_ro_perms": "0700", "unix_sock_admin_perms": "0700",
            "auth_unix_rw": "none", "auth_unix_ro": "none", "listen_tls": 0, "listen_tcp": 0,
            "log_outputs": "3:stderr"}))
        (self.root / "etc" / "qemu.conf").write_text(_conf({
            "stdio_handler": "file", "user": "root", "group": "root", "dynamic_ownership": 0,
            "remember_owner": 0, "security_driver": "none", "namespaces": []}))
        subprocess.run(["ip", "netns", "add", self.ns], check=True)

    def start(self) -> None:
        binds = [x for sub, target in BINDS for x in (str(self.root / sub), target)]
        argv = ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private",
                "sh", "-c", MOUNT_AND_EXEC, "kumo-test-libvirtd", *binds, "--",
                "/usr/sbin/libvirtd", "--config", str(self.root / "etc" / "libvirtd.conf"),
                "--pid-file", str(self.sock_dir / "libvirtd.pid")]
        log = open(self.base / "libvirtd.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        import libvirt
        libvirt.registerErrorHandler(lambda *_: None, None)

        def answers() -> bool:
            assert self.proc.poll() is None, (self.base / "libvirtd.log").read_text()[-2000:]
            try:
                libvirt.open(self.uri).close()
                return True
            except libvirt.libvirtError:
                return False
        until(answers, 60, "the private libvirtd answers", every=0.1)

    def qemu_pids(self) -> list[int]:
        pids = []
        for f in (self.root / "run" / "qemu").glob("*.pid"):
            try:
                pid = int(f.read_text().strip())
                # libvirt may leave the pid file behind: count only a live qemu with that pid.
                if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except (OSError, ValueError):
                pass
        return pids

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        for pid in self.qemu_pids():  # guests this libvirtd started, if any survived
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "delete", self.ns], check=False)


@pytest.fixture
def libvirtd(tmp_path):
    if os.geteuid() != 0 or not Path("/usr/sbin/libvirtd").exists() or not shutil.which("ip"):
        pytest.skip("needs root and libvirtd")
    d = PrivateLibvirtd(tmp_path)
    try:
        d.prepare()
        d.start()
        yield d
    finally:
        d.cleanup()


def _wait_console(path: Path, count: int, timeout: float = 30) -> None:
    try:
        until(lambda: path.exists() and path.read_bytes().count(MARK) >= count, timeout,
              f"marker #{count} on the console", every=0.1)
    except AssertionError as e:
        text = path.read_bytes()[-500:] if path.exists() else b"<no console log>"
        raise AssertionError(f"{e}: {text!r}") from None


def _boot_sector_image(tmp_path: Path) -> tuple[Path, str]:
    """A qcow2 image of the boot sector above, and its sha256."""
    raw = tmp_path / "boot.raw"
    raw.write_bytes(_boot_sector(MARK).ljust(1 << 20, b"\0"))
    img = tmp_path / "boot.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(img)],
                   check=True)
    return img, hashlib.sha256(img.read_bytes()).hexdigest()


def _volume(path: Path, serial: str) -> DomainDisk:
    """An empty 16 MiB qcow2 volume, attached as vdb."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return DomainDisk("vdb", FileSource(path), serial=serial, cache="none")


@contextlib.contextmanager
def guest_cleanup(hv, storage: LocalStorage, iid: str):
    """On the way out of a real-guest test: the domain undefined and the connection closed
    (even when the test failed), then the instance's files removed."""
    try:
        yield
    finally:
        try:
            hv.undefine(iid)
        finally:
            hv.close()
    storage.remove_instance(iid)


def _prepared_disks(storage: LocalStorage, iid: str, image: Path, sha: str, size: int,
                    hostname: str, user_data: bytes = b"",
                    network_config: dict | None = None) -> tuple[DomainDisk, ...]:
    """The instance's own disks as the agent prepares them: an overlay on `image`, a seed."""
    base = storage.cached_image(AMI, image.as_uri(), sha)
    root = storage.ensure_root_disk(iid, base, size)
    seed_iso = storage.write_seed(iid, meta_data(iid, hostname), user_data, network_config)
    return instance_disks(root, seed_iso)


def _bridge(libvirtd: PrivateLibvirtd, name: str) -> list[str]:
    """A bridge that exists only inside the private namespace (guests' taps join it); returns
    the `ip` command prefix for that namespace."""
    ns_ip = ["ip", "netns", "exec", libvirtd.ns, "ip"]
    subprocess.run([*ns_ip, "link", "add", name, "type", "bridge"], check=True)
    subprocess.run([*ns_ip, "link", "set", name, "up"], check=True)
    return ns_ip


def test_boot_reboot_shutdown_reconnect_undefine(libvirtd, tmp_path):
    from agent.libvirt.driver import LibvirtHypervisor

    img, sha = _boot_sector_image(tmp_path)
    storage = LocalStorage(tmp_path / "state")
    disks = _prepared_disks(storage, IID, img, sha, 8 << 20, "boot")
    console = storage.console_log_path(IID)
    ns_ip = _bridge(libvirtd, "kbr-t0")
    plan = DomainPlan(name=IID, vcpus=1, memory_mib=64, disks=disks,
                      console_log=console, nics=(DomainNic("52:54:00:0b:00:07", "kbr-t0"),),
                      generation=3)
    tap = tap_name(IID, 0)

    def tap_master() -> str | None:
        out = subprocess.run([*ns_ip, "-j", "link", "show", "dev", tap], capture_output=True,
                             text=True)
        return json.loads(out.stdout)[0].get("master") if out.returncode == 0 else None

    hv = LibvirtHypervisor(libvirtd.uri, "qemu", poll_interval=0.05)
    try:
        hv.define(plan)
        assert hv.status(IID).power == "shutoff"
        t0 = time.monotonic()
        hv.start(IID)
        _wait_console(console, 1)
        boot_s = time.monotonic() - t0
        st = hv.status(IID)
        assert (st.power, st.vcpus, st.memory_mib) == ("running", 1, 64)
        assert [d.name for d in hv.list_domains()] == [IID]
        assert hv.defined_generation(IID) == 3
        assert tap_master() == "kbr-t0"  # the stable tap name, in the namespace, on the bridge

        hv.reboot(IID)  # a fresh boot: the marker is printed a second time
        _wait_console(console, 2)
        assert hv.status(IID).power == "running"
        assert tap_master() == "kbr-t0"

        # libvirtd restarts under the driver: it reconnects; the guest kept running.
        libvirtd.stop()
        libvirtd.start()
        assert hv.status(IID).power == "running"

        # The boot sector ignores ACPI: shutdown falls back to power-off after the timeout.
        t0 = time.monotonic()
        hv.shutdown(IID, timeout=1.0)
        assert 0.9 <= time.monotonic() - t0 < 15
        assert hv.status(IID).power == "shutoff"
        assert libvirtd.qemu_pids() == []
        assert tap_master() is None  # libvirt removed the tap with the guest

        hv.start(IID)
        _wait_console(console, 3)
        hv.undefine(IID)  # destroys first
        assert hv.status(IID).power == "absent"
        assert hv.list_domains() == []
        hv.undefine(IID)  # absent: no-op
        print(f"boot to marker: {boot_s:.2f}s")
    finally:
        try:
            hv.undefine(IID)
        finally:
            hv.close()
    storage.remove_instance(IID)
    assert storage.list_instance_dirs() == []


def _tiny_image() -> Path | None:
    env = os.environ.get("KUMO_TINY_IMAGE")
    if env:
        return Path(env)
    p = Path(os.environ.get("KUMO_IMAGE_CACHE") or "/var/cache/kumo/images") / "kumo-tiny.qcow2"
    return p if p.exists() else None


def test_kumo_tiny_reads_seed_from_ide_cdrom(libvirtd, tmp_path):
    """The designed domain boots the real kumo-tiny AMI, which finds the NoCloud seed on the IDE
    cdrom and prints its instance id (the image is built by `python -m images build kumo-tiny`)."""
    from agent.libvirt.driver import LibvirtHypervisor
    from agent.seed import network_config_v2

    image = _tiny_image()
    if image is None or not image.exists():
        pytest.skip("kumo-tiny image not built (set KUMO_TINY_IMAGE or KUMO_IMAGE_CACHE)")
    from agent.contract.v1 import NicSpec

    iid = "i-00000000000071e57"
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    storage = LocalStorage(tmp_path / "state")
    _bridge(libvirtd, "kbr-t1")
    nic = NicSpec(mac="52:54:00:71:e5:70", bridge="kbr-t1", address="10.99.0.5/24",
                  gateway="10.99.0.1")
    disks = _prepared_disks(storage, iid, image, sha, 256 << 20, "tiny", b"#cloud-config\n",
                            network_config_v2([nic]))
    console = storage.console_log_path(iid)
    plan = DomainPlan(name=iid, vcpus=1, memory_mib=128, disks=disks,
                      console_log=console, nics=(DomainNic(nic.mac, nic.bridge),), generation=1)
    hv = LibvirtHypervisor(libvirtd.uri, "qemu")
    marker = f"KUMO-READY instance-id={iid}".encode()
    with guest_cleanup(hv, storage, iid):
        hv.define(plan)
        t0 = time.monotonic()
        hv.start(iid)

        def ready() -> bool:
            if console.exists() and marker in console.read_bytes():
                return True
            assert hv.status(iid).power == "running"
            return False
        try:
            until(ready, 90, f"{marker!r} on the console", every=0.25)
        except AssertionError as e:
            tail = console.read_bytes()[-1500:] if console.exists() else b""
            raise AssertionError(f"{e}; console tail: {tail!r}") from None
        print(f"kumo-tiny ready in {time.monotonic() - t0:.1f}s")


def test_disk_contract_on_a_guest_that_never_releases(libvirtd, tmp_path):
    """The boot sector halts with interrupts off: QEMU plugs a disk in without the guest, but
    the guest never answers an unplug. Config and live attach, the timeout and `force`."""
    from agent.libvirt.driver import LibvirtHypervisor

    img, sha = _boot_sector_image(tmp_path)
    storage = LocalStorage(tmp_path / "state")
    console = storage.console_log_path(IID)
    plan = DomainPlan(name=IID, vcpus=1, memory_mib=64, console_log=console,
                      disks=_prepared_disks(storage, IID, img, sha, 8 << 20, "boot"))
    vol = _volume(tmp_path / "vol.qcow2", "vol00000000000000b07")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "ide.qcow2"), "1M"],
                   check=True)
    hv = LibvirtHypervisor(libvirtd.uri, "qemu", poll_interval=0.05)
    boots = 0

    def boot() -> None:
        nonlocal boots
        hv.start(IID)
        boots += 1
        _wait_console(console, boots)

    def power_cycle() -> None:
        hv.destroy(IID)
        boot()

    try:
        contract.check_missing_domain(hv, "i-fffffffffffffffff", vol)
        contract.check_define_reports_plan_disks(hv, plan)
        contract.check_stats_of_defined(hv, plan)
        contract.check_config_attach_detach(hv, IID, vol, tmp_path)
        boot()
        contract.check_live_attach(hv, IID, vol, tmp_path)
        [s] = hv.stats([IID])
        assert [d.target for d in s.disks] == ["hdc", "vda", "vdb"]  # the new disk is counted
        contract.check_live_detach_held(hv, IID, "vdb", power_cycle)
        contract.check_stats_across_restart(hv, IID)
    finally:
        try:
            hv.undefine(IID)
        finally:
            hv.close()
    storage.remove_instance(IID)


# Prints the guest's virtio disks (name=serial) on the console whenever they change.
DISK_WATCHER = b"""#!/bin/sh
(
  last=none
  while :; do
    now=""
    for b in /sys/block/vd*; do
      n=${b##*/}
      [ -b /dev/$n ] && now="$now $n=$(cat $b/serial 2>/dev/null)"
    done
    [ "$now" != "$last" ] && echo "KUMO-DISKS$now" && last=$now
    sleep 1
  done
) &
"""


def test_kumo_tiny_sees_a_hot_plugged_volume_come_and_go(libvirtd, tmp_path):
    """A running kumo-tiny guest gets /dev/vdb with the volume's serial, gives it back on
    detach, and its counters move while it runs."""
    from agent.libvirt.driver import LibvirtHypervisor

    image = _tiny_image()
    if image is None or not image.exists():
        pytest.skip("kumo-tiny image not built (set KUMO_TINY_IMAGE or KUMO_IMAGE_CACHE)")
    iid = "i-000000000000071e5"
    storage = LocalStorage(tmp_path / "state")
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    console = storage.console_log_path(iid)
    _bridge(libvirtd, "kbr-t2")
    plan = DomainPlan(name=iid, vcpus=1, memory_mib=128, console_log=console,
                      disks=_prepared_disks(storage, iid, image, sha, 256 << 20, "tiny",
                                            DISK_WATCHER),
                      nics=(DomainNic("52:54:00:71:e5:02", "kbr-t2"),))
    serial = "vol000000000000071e5"
    vol = _volume(tmp_path / "vol.qcow2", serial)
    hv = LibvirtHypervisor(libvirtd.uri, "qemu", poll_interval=0.1)

    def console_after(offset: int, needle: str, timeout: float) -> int:
        def end_of_needle() -> int | None:
            text = console.read_bytes().decode(errors="replace") if console.exists() else ""
            at = text.find(needle, offset)
            return at + len(needle) if at >= 0 else None
        try:
            return until(end_of_needle, timeout, f"{needle!r} on the console", every=0.25)
        except AssertionError as e:
            raise AssertionError(f"{e}; tail: {console.read_bytes()[-1500:]!r}") from None

    with guest_cleanup(hv, storage, iid):
        hv.define(plan)
        hv.start(iid)
        console_after(0, f"KUMO-READY instance-id={iid}", 120)
        pos = console_after(0, "KUMO-DISKS vda=\r\n", 10)
        contract.check_stats_running(hv, iid, lambda: time.sleep(2))
        [s] = hv.stats([iid])
        assert [n.device for n in s.nics] == [tap_name(iid, 0)]
        assert next(d for d in s.disks if d.target == "vda").read_bytes > 0  # it booted from it

        hv.attach_disk(iid, vol)
        pos = console_after(pos, f"KUMO-DISKS vda= vdb={serial}\r\n", 30)
        [s] = hv.stats([iid])
        assert next(d for d in s.disks if d.target == "vdb").read_bytes > 0  # the guest probed it

        contract.check_live_detach_released(hv, iid, "vdb", timeout=30)
        console_after(pos, "KUMO-DISKS vda=\r\n", 10)
        hv.destroy(iid)
        assert "vdb" not in [d.target for d in hv.status(iid).disks]  # the definition lost it


def test_live_disk_resize_contract_on_a_running_guest(libvirtd, tmp_path):
    """virDomainBlockResize through the driver: QEMU grows the running guest's qcow2 overlay at
    once (the file says so, read with --force-share under QEMU's lock), never shrinks it, and a
    shut-off domain is refused (Storage grows it offline instead)."""
    from agent import qemu_img
    from agent.libvirt.driver import LibvirtHypervisor

    img, sha = _boot_sector_image(tmp_path)
    storage = LocalStorage(tmp_path / "state")
    console = storage.console_log_path(IID)
    plan = DomainPlan(name=IID, vcpus=1, memory_mib=64, console_log=console,
                      disks=_prepared_disks(storage, IID, img, sha, 8 << 20, "boot"))
    root = storage.root_disk_path(IID)
    hv = LibvirtHypervisor(libvirtd.uri, "qemu", poll_interval=0.05)
    try:
        hv.define(plan)
        contract.check_resize_refusals(hv, IID, "i-fffffffffffffffff")
        assert hv.disk_capacity(IID, "vda") == 8 << 20  # a shut-off domain: the image's size
        hv.start(IID)
        _wait_console(console, 1)
        contract.check_live_resize(hv, IID, "vda", grow_by=24 << 20)
        assert qemu_img.virtual_size(root) == 32 << 20  # QEMU grew the overlay itself
        # Storage finds it big enough and leaves the locked image alone.
        assert storage.ensure_root_disk(IID, storage.image_path(AMI, sha), 32 << 20) == root
        hv.destroy(IID)
        hv.start(IID)  # a fresh QEMU opens the grown image
        _wait_console(console, 2)
        assert hv.disk_capacity(IID, "vda") == 32 << 20
    finally:
        try:
            hv.undefine(IID)
        finally:
            hv.close()
    storage.remove_instance(IID)
