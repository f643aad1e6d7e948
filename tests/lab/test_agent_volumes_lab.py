"""The agent's volume step on real libvirt (contract extension "volumes"): the instance steps
(agent/reconcile/steps.py) drive a private libvirtd (tests/lab/test_libvirt_driver_real.py's)
whose guest is the boot-sector one, with NBD volumes served by the storage node's backend
(agent/storage_node, a qemu-storage-daemon) on the loopback of that libvirtd's own network
namespace. It checks what the fakes cannot: the volume disks the agent plans come back from
libvirt exactly (so a second pass does nothing), a volume change hot-plugs without a redefine,
a guest that never releases a volume leaves a retryable DeviceDetachTimeout whose detach a later
pass finishes in the definition. Live data through a volume: tests/lab/test_volume_moves_lab.py.
Everything started here is stopped by PID; the namespace goes with the libvirtd fixture.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from agent.contract.v1 import InstanceSpec
from agent.drivers.base import DeviceDetachTimeout
from agent.libvirt.disks import from_domain_xml
from agent.reconcile.planner import execute
from agent.reconcile.steps import (Drivers, InstanceContext, attached_volumes, extra_disks,
                                   steps_for, volume_disk)
from agent.state import Runtime
from agent.storage import LocalStorage
from agent.storage_node.backend import NbdBackend
from agent.supervisor import pid_alive
from tests.lab import test_libvirt_driver_real as real

pytestmark = [pytest.mark.lab, pytest.mark.slow]

libvirtd = real.libvirtd  # the private libvirtd fixture
IID = "i-0000000000000701e"
VOL1, VOL2 = "vol-" + "0" * 12 + "0701e", "vol-" + "0" * 12 + "0702e"
PORT = 10809


def _spec(generation: int, power: str, vols: list[str], image_url: str, sha: str) -> InstanceSpec:
    return InstanceSpec.model_validate({
        "instance_id": IID, "generation": generation, "power": power, "vcpus": 1,
        "memory_mib": 64, "root_disk_bytes": 8 << 20, "hostname": "vols",
        "image": {"image_id": "ami-" + "0" * 12 + "0701e", "url": image_url, "sha256": sha,
                  "virtual_size": 1 << 20},
        "volumes": [{"volume_id": v, "device": f"vd{chr(ord('b') + i)}",
                     "source": {"host": "127.0.0.1", "port": PORT, "export": v}}
                    for i, v in enumerate(vols)]})


def _config_volumes(uri: str) -> list:
    """The volume disks of the persistent definition (what the next start boots)."""
    import libvirt
    conn = libvirt.open(uri)
    try:
        xml = conn.lookupByName(IID).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    return extra_disks(from_domain_xml(xml))


def test_agent_steps_attach_and_detach_nbd_volumes(libvirtd, tmp_path):
    from agent.libvirt.driver import LibvirtHypervisor

    if shutil.which("qemu-storage-daemon") is None:
        pytest.skip("qemu-storage-daemon missing")
    subprocess.run(["ip", "-n", libvirtd.ns, "link", "set", "lo", "up"], check=True)
    img, sha = real._boot_sector_image(tmp_path)
    storage = LocalStorage(tmp_path / "state")
    hv = LibvirtHypervisor(libvirtd.uri, "qemu", poll_interval=0.1)
    backend = NbdBackend(tmp_path / "sn", "127.0.0.1", PORT, netns=libvirtd.ns, max_size=1 << 30)
    rt = Runtime()
    pids: list[int] = []

    def reconcile(spec: InstanceSpec) -> list[str]:
        ctx = InstanceContext(spec=spec, rt=rt, drivers=Drivers(hv, storage),
                              shutdown_timeout=1, clock=time.time, detach_timeout=1.0)
        return execute(ctx, steps_for)

    def spec(generation: int, power: str, *vols: str) -> InstanceSpec:
        return _spec(generation, power, list(vols), img.as_uri(), sha)

    try:
        for v in (VOL1, VOL2):
            backend.create(v, 16 << 20)
            backend.export(v)
        pids.append(backend.daemon.pid())

        # Created running with one volume: the first definition carries it.
        s1 = spec(1, "running", VOL1)
        ran = reconcile(s1)
        assert "domain-defined" in ran and "started" in ran and "volumes-attached" not in ran
        st = hv.status(IID)
        assert st.power == "running"
        assert extra_disks(st.disks) == [volume_disk(s1.volumes[0])]  # libvirt gives it back
        assert [(a.device, a.volume_id) for a in attached_volumes(s1, st.disks)] == [
            ("vdb", VOL1)]
        assert reconcile(s1) == []  # exactly: nothing left to do

        # A second volume: hot-plugged into the guest and the definition, no redefine.
        s2 = spec(2, "running", VOL1, VOL2)
        assert reconcile(s2) == ["volumes-attached"]
        want = [volume_disk(v) for v in s2.volumes]
        assert extra_disks(hv.status(IID).disks) == want == _config_volumes(libvirtd.uri)
        assert reconcile(s2) == []

        # Removed: this guest never releases a device, so the detach times out, retryable.
        s3 = spec(3, "running", VOL1)
        with pytest.raises(DeviceDetachTimeout) as e:
            reconcile(s3)
        assert e.value.retryable and rt.detaching == ["vdc"]
        assert _config_volumes(libvirtd.uri) == want  # the definition untouched meanwhile

        # Stopped: powered off, and the pending detach finishes in the definition.
        s4 = spec(4, "stopped", VOL1)
        ran = reconcile(s4)
        assert ran == ["powered-off", "volumes-attached"], ran
        assert rt.detaching == [] and hv.status(IID).power == "shutoff"
        assert _config_volumes(libvirtd.uri) == [volume_disk(s4.volumes[0])]
        assert reconcile(s4) == []

        # Started again: the guest boots with the one volume.
        s5 = spec(5, "running", VOL1)
        assert reconcile(s5) == ["started"]
        assert extra_disks(hv.status(IID).disks) == [volume_disk(s5.volumes[0])]
        assert reconcile(s5) == []
    finally:
        try:
            hv.undefine(IID)  # before the storage node goes
            hv.close()
        finally:
            backend.stop()
    storage.remove_instance(IID)
    assert not [p for p in pids if p is not None and pid_alive(p)], "a daemon survived"
