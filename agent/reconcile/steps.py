"""The steps that bring one instance to its spec, each with needed()/run()/verify().

A step looks at the host (through the drivers) and at the instance's runtime record, never at
what a previous step "probably" did, so re-planning after any failure or restart is safe.
Artifact steps (image, disk, seed, definition) remember a key of their inputs in the runtime
record: they redo work only when the inputs change or the artifact disappeared.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from agent.contract.v1 import AttachedVolume, InstanceSpec, NicSpec, VolumeAttachment
from agent.drivers.base import (CephAuth, DeviceDetachTimeout, DomainDisk, DomainNic, DomainPlan,
                                DomainStatus, DriverError,
                                Hypervisor, NetworkHost, NetworkSource, Storage)
from agent.drivers.disks import OWN_TARGETS, ROOT_TARGET, instance_disks
from agent.drivers.network_base import Network
from agent.seed import network_config_v2
from agent.state import Runtime

MAX_USER_DATA = 16 * 1024
#: Seconds a running guest gets to release a volume before the detach reports a (retryable)
#: DeviceDetachTimeout; the unplug request stays pending and the next pass asks again.
DETACH_TIMEOUT = 10.0
#: The serial VolumeAttachment derives from a volume id ("vol" + its 17 hex digits).
DERIVED_SERIAL_RE = re.compile(r"^vol[0-9a-f]{17}$")
NetworkConfigBuilder = Callable[[list[NicSpec]], dict | None]


@dataclass
class Drivers:
    hypervisor: Hypervisor
    storage: Storage
    network: Network | None = None
    #: The seed's network-config; production's renderer unless a test injects another.
    network_config: NetworkConfigBuilder = network_config_v2


def key_of(*parts: object) -> str:
    """A stable fingerprint of a step's inputs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _exists(path: str | None) -> bool:
    return path is not None and os.path.exists(path)


@dataclass
class InstanceContext:
    """One instance being reconciled: its spec, its runtime record and the drivers."""

    spec: InstanceSpec
    rt: Runtime
    drivers: Drivers
    shutdown_timeout: float
    clock: Callable[[], float]
    #: Persists the runtime record now (write-ahead of actions a crash must not lose).
    save: Callable[[], None] = lambda: None
    detach_timeout: float = DETACH_TIMEOUT

    @property
    def id(self) -> str:
        return self.spec.instance_id

    def status(self) -> DomainStatus:
        return self.drivers.hypervisor.status(self.id)

    def console_log(self) -> Path:
        return self.drivers.storage.instance_dir(self.id) / "console.log"

    def console_size(self) -> int:
        try:
            return self.console_log().stat().st_size
        except FileNotFoundError:
            return 0

    def begin_start(self, console_offset: int) -> None:
        """Record, durably, that a start from `console_offset` is about to happen."""
        self.rt.boot_intent_offset = console_offset
        self.save()

    def record_boot(self, console_offset: int) -> None:
        """A fresh boot began: readiness now only counts console bytes after `console_offset`."""
        rt = self.rt
        rt.boot_intent_offset = None
        rt.boot_count += 1
        rt.boot_started_at = self.clock()
        rt.booted, rt.booted_at = False, None
        rt.console_offset = rt.console_scan_pos = console_offset
        rt.applied_power = "running"
        rt.applied_reboot_nonce = max(rt.applied_reboot_nonce, self.spec.reboot_nonce)

    def record_stopped(self) -> None:
        rt = self.rt
        rt.applied_power = "stopped"
        rt.boot_started_at = None
        rt.booted, rt.booted_at = False, None

    # -- desired artifacts ---------------------------------------------------------------
    def image_key(self) -> str:
        return key_of(self.spec.image.image_id, self.spec.image.sha256)

    def disk_key(self) -> str:
        return key_of(self.image_key(), self.disk_size())

    def disk_size(self) -> int:
        return max(self.spec.root_disk_bytes, self.spec.image.virtual_size)

    def seed_inputs(self) -> tuple[dict, bytes, dict | None]:
        spec = self.spec
        meta: dict = {"instance-id": spec.instance_id, "local-hostname": spec.hostname}
        if spec.ssh_authorized_keys:
            meta["public-keys"] = list(spec.ssh_authorized_keys)
        try:
            user_data = base64.b64decode(spec.user_data_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise DriverError(f"user_data_b64 is not valid base64: {e}", code="InvalidUserData",
                              retryable=False) from None
        if len(user_data) > MAX_USER_DATA:
            raise DriverError("user data is larger than 16 KiB", code="InvalidUserData",
                              retryable=False)
        netcfg = self.drivers.network_config(list(spec.nics)) if spec.nics else None
        return meta, user_data, netcfg

    def seed_key(self) -> str:
        meta, user_data, netcfg = self.seed_inputs()
        return key_of(meta, base64.b64encode(user_data).decode(), netcfg)

    def own_disks(self) -> tuple[DomainDisk, ...]:
        """The instance's own disks: root disk, then seed (never touched by volume steps)."""
        if self.rt.disk_path is None:
            raise DriverError(f"{self.id}: no root disk prepared yet", code="RootDiskMissing",
                              retryable=True)
        seed = Path(self.rt.seed_path) if self.rt.seed_path else None
        return instance_disks(Path(self.rt.disk_path), seed)

    def volume_disks(self) -> tuple[DomainDisk, ...]:
        """The spec's volumes as the network disks the domain carries, in spec order."""
        return tuple(volume_disk(v) for v in self.spec.volumes)

    def plan(self) -> DomainPlan:
        """The domain this instance needs: its own disks (root disk, then seed), its volumes
        and its NICs."""
        return DomainPlan(
            name=self.id, vcpus=self.spec.vcpus, memory_mib=self.spec.memory_mib,
            disks=self.own_disks() + self.volume_disks(),
            console_log=self.console_log(),
            nics=tuple(DomainNic(mac=n.mac, bridge=n.bridge) for n in self.spec.nics))

    def plan_key(self) -> str:
        """The fingerprint DomainDefined redefines on. Volumes are left out on purpose:
        VolumesAttached changes them in place (live and in the definition), so a volume change
        alone never redefines the domain; every define still carries the spec's volumes."""
        p = self.plan()
        own = self.own_disks()
        return key_of(p.name, p.vcpus, p.memory_mib, [asdict(d) for d in own],
                      str(p.console_log), [(n.mac, n.bridge) for n in p.nics])


def volume_disk(v: VolumeAttachment) -> DomainDisk:
    """A volume as a virtio network disk. cache "none": the guest's flushes reach the storage
    node and no host page cache sits between hosts when the volume moves. Error policy "stop":
    while the storage node is out of reach (a daemon restart, an export re-made to grow the
    volume) the guest pauses instead of seeing I/O errors, and ResumedAfterIOError resumes it."""
    src = v.source
    auth = CephAuth(src.auth_user, src.auth_key or "") if src.auth_user is not None else None
    return DomainDisk(target=v.device,
                      source=NetworkSource(src.protocol, src.export,
                                           (NetworkHost(src.host, src.port),), auth),
                      bus="virtio", serial=v.disk_serial, cache="none", error_policy="stop")


def extra_disks(disks: tuple[DomainDisk, ...]) -> list[DomainDisk]:
    """The disks of `disks` that are not the instance's own (root, seed): its volumes."""
    return [d for d in disks if d.target not in OWN_TARGETS]


def attached_volumes(spec: InstanceSpec, disks: tuple[DomainDisk, ...]) -> list[AttachedVolume]:
    """InstanceObserved.volumes from a domain's disks: each volume disk by device, named by the
    spec volume it is exactly, else by its serial when that is a derived one ("vol" + 17 hex)."""
    wanted = {volume_disk(v): v.volume_id for v in spec.volumes}
    out = []
    for d in sorted(extra_disks(disks), key=lambda d: d.target):
        vid = wanted.get(d)
        if vid is None and d.serial is not None and DERIVED_SERIAL_RE.match(d.serial):
            vid = f"vol-{d.serial[3:]}"
        out.append(AttachedVolume(device=d.target, volume_id=vid))
    return out


class Step:
    """One idempotent action: run() only when needed(); verify() after run()."""

    name = "step"

    def needed(self, ctx: InstanceContext) -> bool:
        raise NotImplementedError

    def run(self, ctx: InstanceContext) -> None:
        raise NotImplementedError

    def verify(self, ctx: InstanceContext) -> bool:
        return not self.needed(ctx)


class ImageCached(Step):
    name = "image-cached"

    def needed(self, ctx):
        return ctx.rt.image_key != ctx.image_key() or not _exists(ctx.rt.image_path)

    def run(self, ctx):
        img = ctx.spec.image
        path = ctx.drivers.storage.cached_image(img.image_id, img.url, img.sha256)
        ctx.rt.image_path, ctx.rt.image_key = str(path), ctx.image_key()


class RootDisk(Step):
    """The root disk exists and is at least the spec's size; it only ever grows.

    A new or shut-off disk is Storage's (a qcow2 overlay created, or grown with qemu-img). The
    disk of a running domain is locked by QEMU, so the hypervisor grows it live first
    (resize_disk on vda): the guest sees the new size at once and grows its root filesystem at
    its next boot. Storage then finds the image big enough and leaves it alone."""

    name = "root-disk"

    def __init__(self) -> None:
        self.grew_live = False

    def needed(self, ctx):
        return ctx.rt.disk_key != ctx.disk_key() or not _exists(ctx.rt.disk_path)

    def _live(self, ctx) -> bool:
        """Whether the disk exists under a running domain that can grow it in place."""
        hv = ctx.drivers.hypervisor
        return (_exists(ctx.rt.disk_path) and "disk_resize_live" in hv.capabilities
                and ctx.status().power == "running")

    def run(self, ctx):
        size = ctx.disk_size()
        self.grew_live = False
        if self._live(ctx):
            ctx.drivers.hypervisor.resize_disk(ctx.id, ROOT_TARGET, size)  # never shrinks
            self.grew_live = True
        path = ctx.drivers.storage.ensure_root_disk(ctx.id, Path(ctx.rt.image_path), size)
        ctx.rt.disk_path, ctx.rt.disk_key = str(path), ctx.disk_key()

    def verify(self, ctx):
        if self.needed(ctx):
            return False
        # Storage checks the image it grew itself; a live grow is checked as the guest sees it.
        return (not self.grew_live
                or ctx.drivers.hypervisor.disk_capacity(ctx.id, ROOT_TARGET) >= ctx.disk_size())


class SeedWritten(Step):
    name = "seed-written"

    def needed(self, ctx):
        if not ctx.spec.nocloud_seed:  # the guest reads 169.254.169.254 only: no cdrom
            return ctx.rt.seed_path is not None
        return ctx.rt.seed_key != ctx.seed_key() or not _exists(ctx.rt.seed_path)

    def run(self, ctx):
        if not ctx.spec.nocloud_seed:
            # The domain loses its cdrom when next defined (its plan no longer lists it).
            ctx.rt.seed_path = ctx.rt.seed_key = None
            return
        meta, user_data, netcfg = ctx.seed_inputs()
        path = ctx.drivers.storage.write_seed(ctx.id, meta, user_data, netcfg)
        ctx.rt.seed_path, ctx.rt.seed_key = str(path), ctx.seed_key()


class NetworkReady(Step):
    name = "network-ready"

    def needed(self, ctx):
        net = ctx.drivers.network
        if net is None:
            return False  # no network driver: bridges are the operator's business
        return any(not net.bridge_ready(n.bridge) for n in ctx.spec.nics)

    def run(self, ctx):
        for nic in ctx.spec.nics:
            if not ctx.drivers.network.bridge_ready(nic.bridge):
                ctx.drivers.network.ensure_bridge(nic.bridge)


class DomainDefined(Step):
    """Define the domain, or redefine it when its plan changed (a new size applies at next start)."""

    name = "domain-defined"

    def needed(self, ctx):
        st = ctx.status()
        if st.power == "absent":
            return True
        if ctx.rt.defined_key is None:
            # A domain we have no record of defining (runtime lost): keep it when its size
            # matches, so a restarted agent never redefines a healthy guest.
            return (st.vcpus, st.memory_mib) != (ctx.spec.vcpus, ctx.spec.memory_mib)
        return ctx.rt.defined_key != ctx.plan_key()

    def run(self, ctx):
        ctx.drivers.hypervisor.define(ctx.plan())
        ctx.rt.defined_key = ctx.plan_key()


class PoweredOff(Step):
    """Desired stopped: ACPI shutdown with a timeout, then a hard power-off if still up."""

    name = "powered-off"

    def needed(self, ctx):
        return ctx.spec.power == "stopped" and ctx.status().power in ("running", "paused",
                                                                       "crashed")

    def run(self, ctx):
        hv = ctx.drivers.hypervisor
        if ctx.status().power == "running":
            hv.shutdown(ctx.id, ctx.shutdown_timeout)
        if ctx.status().power != "shutoff":
            hv.destroy(ctx.id)
        ctx.record_stopped()


def _start_wanted(ctx: InstanceContext, st: DomainStatus) -> bool:
    if ctx.spec.power != "running" or st.power not in ("shutoff", "crashed"):
        return False
    rt = ctx.rt
    # The agent has not started this run yet (first boot, or stopped -> running).
    if rt.applied_power != "running":
        return True
    # It was running and went down by itself: drift. Only restart when the policy says so, or
    # when the controller explicitly asked for a (re)boot.
    return ctx.spec.restart_policy == "always" or ctx.spec.reboot_nonce > rt.applied_reboot_nonce


class Started(Step):
    name = "started"

    def needed(self, ctx):
        return _start_wanted(ctx, ctx.status())

    def run(self, ctx):
        hv = ctx.drivers.hypervisor
        if ctx.status().power == "crashed":
            hv.destroy(ctx.id)  # a crashed domain must be torn down before it can start
        offset = ctx.console_size()
        ctx.begin_start(offset)
        hv.start(ctx.id)
        ctx.record_boot(offset)

    def verify(self, ctx):
        return ctx.status().power == "running"


class Rebooted(Step):
    """spec.reboot_nonce above the applied one: one fresh boot of the running domain."""

    name = "rebooted"

    def needed(self, ctx):
        return (ctx.spec.power == "running" and ctx.rt.applied_power == "running"
                and ctx.spec.reboot_nonce > ctx.rt.applied_reboot_nonce
                and ctx.status().power == "running")

    def run(self, ctx):
        hv = ctx.drivers.hypervisor
        offset = ctx.console_size()
        if "reboot" in hv.capabilities:
            hv.reboot(ctx.id)
        else:
            hv.destroy(ctx.id)
            hv.start(ctx.id)
        ctx.record_boot(offset)

    def verify(self, ctx):
        return ctx.status().power == "running" and not self.needed(ctx)


class VolumesAttached(Step):
    """The domain's volume disks match spec.volumes: the running guest's (hot-plug and unplug,
    each also changing the definition) or, while it is shut off, the definition's. The root
    disk and the seed are never touched. A guest that does not release a volume in time raises
    DeviceDetachTimeout (retryable); the target stays in rt.detaching, so a later pass finishes
    the detach (the definition's copy too) even after the guest let go by itself.

    A held disk blocks nothing else: the other detaches and the attaches still happen, and the
    first DeviceDetachTimeout is raised at the end (the planner retries with backoff). Only an
    attach that needs what the held disk has is left for a later pass: its target, or its very
    source (a volume moving to another target). This matters after a force detach: the storage
    node cut the host off, the guest may keep the dead disk (I/O errors) for as long as it likes,
    and the instance must still get other volumes, even this one again from its new export. Once
    the domain is shut off, the detach only edits the definition, so the disk is gone then."""

    name = "volumes-attached"

    def _diff(self, ctx: InstanceContext) -> tuple[list[str], list[DomainDisk], list[str]] | None:
        """(targets to detach, disks to attach, targets no longer detaching), or None when the
        domain is in no state to change (absent, paused, crashed: a define or start carries the
        spec's volumes)."""
        st = ctx.status()
        if st.power not in ("running", "shutoff"):
            return None
        have = extra_disks(st.disks)
        want = ctx.volume_disks()
        keep = {d.target for d in have if d in want}
        detach = [d.target for d in have if d not in want]
        detach += [t for t in ctx.rt.detaching if t not in keep and t not in detach]
        attach = [d for d in want if d not in have]
        settled = [t for t in ctx.rt.detaching if t in keep]
        return detach, attach, settled

    def needed(self, ctx):
        diff = self._diff(ctx)
        return diff is not None and any(diff)

    def run(self, ctx):
        diff = self._diff(ctx)
        if diff is None:
            return
        detach, attach, settled = diff
        rt, hv = ctx.rt, ctx.drivers.hypervisor
        rt.detaching = [t for t in rt.detaching if t not in settled]
        held: list[str] = []
        first_error: DeviceDetachTimeout | None = None
        for target in detach:  # first: a volume moving to another target frees its source
            if target not in rt.detaching:
                rt.detaching.append(target)
                ctx.save()  # write-ahead: a timeout or a crash leaves it to finish later
            try:
                hv.detach_disk(ctx.id, target, timeout=ctx.detach_timeout)
            except DeviceDetachTimeout as e:  # the guest holds it: the rest goes on
                held.append(target)
                first_error = first_error or e
                continue
            rt.detaching.remove(target)
            ctx.save()
        if held:
            kept = {d.target: d.source for d in extra_disks(ctx.status().disks)
                    if d.target in held}
            attach = [d for d in attach
                      if d.target not in kept and d.source not in kept.values()]
        for disk in attach:
            hv.attach_disk(ctx.id, disk)
        if first_error is not None:
            raise first_error


class VolumesGrown(Step):
    """Each volume disk of a running (or I/O-error paused) domain is as big as the volume the
    storage node serves (spec size_bytes): a volume grown while attached grows in the guest
    without a reboot. The hypervisor's resize_disk makes QEMU's NBD client reconnect to learn
    the new size (agent/libvirt/nbd_reconnect.py). rt.volume_sizes keeps what was checked, so
    a pass asks the hypervisor only about volumes whose size changed. A shut-off domain needs
    nothing: its disks connect afresh, at the export's size, when it starts."""

    name = "volumes-grown"

    def _unchecked(self, ctx: InstanceContext) -> list[VolumeAttachment]:
        st = ctx.status()
        if not (st.power == "running" or (st.power == "paused" and st.io_error)):
            return []
        present = set(extra_disks(st.disks))
        return [v for v in ctx.spec.volumes
                if v.size_bytes is not None and volume_disk(v) in present
                and ctx.rt.volume_sizes.get(v.volume_id) != v.size_bytes]

    def needed(self, ctx):
        return bool(self._unchecked(ctx))

    def run(self, ctx):
        hv = ctx.drivers.hypervisor
        for v in self._unchecked(ctx):
            if hv.disk_capacity(ctx.id, v.device) < v.size_bytes:
                hv.resize_disk(ctx.id, v.device, v.size_bytes)
            ctx.rt.volume_sizes[v.volume_id] = v.size_bytes
        wanted = {v.volume_id for v in ctx.spec.volumes}
        ctx.rt.volume_sizes = {k: s for k, s in ctx.rt.volume_sizes.items() if k in wanted}

    def verify(self, ctx):
        hv = ctx.drivers.hypervisor
        return all(hv.disk_capacity(ctx.id, v.device) >= v.size_bytes
                   for v in ctx.spec.volumes
                   if v.size_bytes is not None and v.volume_id in ctx.rt.volume_sizes
                   and v.device in {d.target for d in extra_disks(ctx.status().disks)})


class ResumedAfterIOError(Step):
    """A domain QEMU paused on a volume's I/O error (error policy "stop": the storage node was
    out of reach) runs again: the hypervisor reconnects its network disks and resumes it, and
    QEMU retries the requests it held. Should the storage still be away, the guest pauses again
    and a later pass retries; the guest's filesystem never sees the error."""

    name = "resumed-after-io-error"

    def needed(self, ctx):
        st = ctx.status()
        return ctx.spec.power == "running" and st.power == "paused" and st.io_error

    def run(self, ctx):
        ctx.drivers.hypervisor.start(ctx.id)  # resumes a paused domain: the same boot

    def verify(self, ctx):
        return ctx.status().power == "running"


def steps_for(ctx: InstanceContext) -> list[Step]:
    """Every step, in dependency order; the planner keeps those that are needed."""
    return [ImageCached(), RootDisk(), SeedWritten(), NetworkReady(), DomainDefined(),
            PoweredOff(), Started(), Rebooted(), VolumesAttached(), VolumesGrown(),
            ResumedAfterIOError()]
