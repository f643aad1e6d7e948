"""The root disk grows: the RootDisk step's decisions on fake drivers (live through the hypervisor
while the domain runs, offline through Storage while it is shut off, never a shrink), the real
LocalStorage growing an image a guest holds open, the modify request and CLI, and the images'
boot-time growth settings (debian-12's cloud-init; kumo-tiny's initramfs)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from agent.contract.v1 import InstanceSpec
from agent.drivers.base import DriverError
from agent.drivers.fake import FakeHypervisor, FakeStorage
from agent.reconcile.planner import StepVerifyFailed, execute
from agent.reconcile.steps import Drivers, InstanceContext, RootDisk, steps_for
from agent.state import Runtime
from agent.storage import LocalStorage
from controller.cli.main import app
from controller.models import ModifyInstanceRequest
from test_cli_support import FakeKumo, instance

ROOT = Path(__file__).resolve().parents[2]
IID = "i-0000000000000a001"
GIB = 1 << 30


def spec(root_bytes: int = 2 * GIB, power: str = "running", generation: int = 1) -> InstanceSpec:
    return InstanceSpec.model_validate({
        "instance_id": IID, "generation": generation, "power": power, "vcpus": 1,
        "memory_mib": 128, "root_disk_bytes": root_bytes,
        "image": {"image_id": "ami-0000000000000a001", "url": "file:///nonexistent/img.qcow2",
                  "sha256": "ab" * 32, "virtual_size": GIB, "ready_marker": "KUMO-READY"},
        "hostname": "web-1", "user_data_b64": base64.b64encode(b"#cloud-config\n").decode()})


class World:
    """One instance's context on fake drivers, converged with the real steps."""

    def __init__(self, tmp_path: Path, hv: FakeHypervisor | None = None):
        self.hv = hv or FakeHypervisor()
        self.storage = FakeStorage(tmp_path)
        self.rt = Runtime()
        self.ctx = self.context(spec())

    def context(self, s: InstanceSpec) -> InstanceContext:
        self.ctx = InstanceContext(spec=s, rt=self.rt, drivers=Drivers(self.hv, self.storage),
                                   shutdown_timeout=0.1, clock=lambda: 0.0)
        return self.ctx

    def converge(self, s: InstanceSpec) -> list[str]:
        return execute(self.context(s), steps_for)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    w.converge(spec())
    assert w.hv.domains[IID].power == "running"
    return w


def test_a_new_disk_is_storage_work_only(tmp_path):
    w = World(tmp_path)
    w.converge(spec())
    assert ("resize_disk", IID) not in w.hv.calls
    assert w.storage.disk_sizes[IID] == 2 * GIB


def test_running_domain_grows_live_then_storage_finds_it_big_enough(world):
    world.hv.reset_calls()
    world.storage.calls.clear()
    ran = world.converge(spec(3 * GIB, generation=2))
    assert ran == ["root-disk"]  # no redefine, no restart: the guest keeps running
    assert world.hv.calls == [("resize_disk", IID)]
    assert world.hv.disk_capacity(IID, "vda") == 3 * GIB
    assert world.storage.calls == [("ensure_root_disk", IID)]
    assert world.storage.disk_sizes[IID] == 3 * GIB
    assert world.hv.domains[IID].power == "running" and world.hv.domains[IID].starts == 1
    # The same spec again: nothing to do.
    world.hv.reset_calls()
    assert world.converge(spec(3 * GIB, generation=2)) == []
    assert world.hv.calls == []


def test_shut_off_domain_grows_offline(world):
    world.converge(spec(power="stopped", generation=2))
    assert world.hv.domains[IID].power == "shutoff"
    world.hv.reset_calls()
    world.converge(spec(4 * GIB, power="stopped", generation=3))
    assert ("resize_disk", IID) not in world.hv.calls
    assert world.storage.disk_sizes[IID] == 4 * GIB


def test_never_shrinks(world):
    world.converge(spec(3 * GIB, generation=2))
    world.hv.reset_calls()
    world.converge(spec(2 * GIB, generation=3))  # a smaller spec: the disk keeps its size
    assert world.hv.disk_capacity(IID, "vda") == 3 * GIB
    assert world.storage.disk_sizes[IID] == 3 * GIB
    # The root disk is at least the image, whatever the spec says.
    world.converge(spec(GIB // 2, generation=4))
    assert world.hv.disk_capacity(IID, "vda") == 3 * GIB


def test_without_live_resize_a_running_disk_waits_for_storage(tmp_path):
    hv = FakeHypervisor(capabilities=frozenset({"reboot", "console_log"}))
    w = World(tmp_path, hv)
    w.converge(spec())
    busy = DriverError("image in use", code="RootDiskResizeFailed", retryable=True)
    w.storage.fail("ensure_root_disk", IID, busy)
    with pytest.raises(DriverError) as e:
        w.converge(spec(3 * GIB, generation=2))
    assert e.value.code == "RootDiskResizeFailed" and e.value.retryable
    assert ("resize_disk", IID) not in hv.calls


def test_a_failed_live_grow_is_retryable_and_records_nothing(world):
    key = world.rt.disk_key
    world.hv.fail("resize_disk", IID, DriverError("qemu busy", code="HypervisorError"))
    with pytest.raises(DriverError):
        world.converge(spec(3 * GIB, generation=2))
    assert world.rt.disk_key == key  # the next pass tries again
    world.converge(spec(3 * GIB, generation=2))
    assert world.hv.disk_capacity(IID, "vda") == 3 * GIB


def test_verify_checks_the_size_the_guest_sees(world):
    class Liar(FakeHypervisor):
        def resize_disk(self, name, target, size_bytes):
            self.calls.append(("resize_disk", name))  # says yes, grows nothing
    hv = Liar()
    hv.domains, hv.disk_sizes = world.hv.domains, {(IID, "vda"): 2 * GIB}
    world.hv = hv
    with pytest.raises(StepVerifyFailed):
        world.converge(spec(3 * GIB, generation=2))


def test_step_needed_only_when_the_size_or_file_changes(world):
    ctx = world.context(spec(generation=2))
    assert not RootDisk().needed(ctx)
    assert RootDisk().needed(world.context(spec(3 * GIB, generation=2)))
    Path(world.rt.disk_path).unlink()
    assert RootDisk().needed(world.context(spec(generation=2)))


# -- LocalStorage with qemu-img -----------------------------------------------------------------

def test_local_storage_grows_and_reads_the_size_under_a_write_lock(tmp_path):
    """Grown offline with qemu-img; once QEMU holds the image, storage still reads its size
    (--force-share) and leaves an image that is big enough alone."""
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    st = LocalStorage(tmp_path / "state")
    path = st.ensure_root_disk(IID, base, 32 << 20)
    st.ensure_root_disk(IID, base, 64 << 20)
    assert _virtual_size(path) == 64 << 20
    st.ensure_root_disk(IID, base, 32 << 20)  # never shrinks
    assert _virtual_size(path) == 64 << 20
    # A process holding the image open for writing, as a running guest's QEMU does.
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_locked(path, holder)
        assert st.ensure_root_disk(IID, base, 64 << 20) == path  # big enough: no resize
        with pytest.raises(DriverError) as e:
            st.ensure_root_disk(IID, base, 128 << 20)
        assert e.value.code == "RootDiskResizeFailed" and e.value.retryable
    finally:
        holder.communicate(b"quit\n", timeout=10)
    assert _virtual_size(path) == 64 << 20


def _virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["virtual-size"]


def _wait_locked(path: Path, holder: subprocess.Popen) -> None:
    """Until the holder has the image open (and so its write lock, taken at open): it answers
    a read. Not probed with a locking tool: a `qemu-img info` holding its own lock at the wrong
    moment made the holder's open fail. Generous: on a loaded 2-core machine qemu-io can take
    seconds to start."""
    import select
    import time
    holder.stdin.write(b"read 0 512\n")
    holder.stdin.flush()
    deadline, seen = time.monotonic() + 60, b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([holder.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(holder.stdout.fileno(), 4096)
            seen += chunk
            if b"read 512/512 bytes" in seen:
                return
            if not chunk:
                break
    raise AssertionError(f"qemu-io did not open {path}: exit {holder.poll()}, out {seen!r}, "
                         f"err {holder.stderr.read() if holder.poll() is not None else b''!r}")


# -- controller request model and CLI ---------------------------------------------------------

def test_modify_request_fields_are_optional_and_bounded():
    assert ModifyInstanceRequest().model_dump() == {"instance_type": None, "root_disk_gib": None}
    assert ModifyInstanceRequest(root_disk_gib=20).root_disk_gib == 20
    for bad in (0, -1, 16385):
        with pytest.raises(ValidationError):
            ModifyInstanceRequest(root_disk_gib=bad)


class ModifyKumo(FakeKumo):
    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            self.requests.append(request)
            inst = self.instances[request.url.path.rsplit("/", 1)[1]]
            inst.update(json.loads(request.content))
            return httpx.Response(200, json=inst, request=request)
        return super().handle(request)


def kumo(fake, *args):
    env = {"KUMO_API_KEY": "secret", "KUMO_URL": "http://controller:8787"}
    return CliRunner().invoke(app, list(args), obj=fake.state(), env=env)


def test_cli_modify_root_size_and_type():
    fake = ModifyKumo()
    fake.instances["i-1"] = instance("i-1", state="running", root_disk_gib=1)
    r = kumo(fake, "instances", "modify", "i-1", "--root-size", "8", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(fake.requests[-1].content) == {"root_disk_gib": 8}
    assert json.loads(r.stdout)["root_disk_gib"] == 8
    r = kumo(fake, "instances", "modify", "i-1", "--type", "t3.small", "--root-size", "9")
    assert r.exit_code == 0, r.output
    assert json.loads(fake.requests[-1].content) == {"instance_type": "t3.small",
                                                     "root_disk_gib": 9}
    n = len(fake.requests)
    r = kumo(fake, "instances", "modify", "i-1")
    assert r.exit_code != 0 and len(fake.requests) == n  # nothing to change: nothing sent
    r = kumo(fake, "instances", "modify", "i-1", "--root-size", "0")
    assert r.exit_code != 0 and len(fake.requests) == n


# -- the images grow their root filesystem at boot --------------------------------------------

def test_debian_12_cloud_init_grows_the_root_partition_and_filesystem():
    cfg = yaml.safe_load((ROOT / "images/files/debian-12/overlay/etc/cloud/cloud.cfg.d/"
                          "90_kumo.cfg").read_text())
    assert cfg["growpart"]["mode"] in ("auto", "growpart")
    assert "/" in cfg["growpart"]["devices"]
    assert cfg["resize_rootfs"] is True
    from images.recipes.debian12 import PACKAGES
    assert {"cloud-guest-utils", "fdisk", "e2fsprogs"} <= set(PACKAGES)  # growpart, resize2fs


def test_kumo_tiny_initramfs_grows_the_root_partition_and_filesystem():
    init = (ROOT / "images/files/tiny/initramfs/init").read_text()
    assert "grow_partition" in init and "resize2fs" in init
    assert "resized root filesystem" in init  # the console line the lab test looks for
