"""The agent's driver contracts: what the reconciler needs from a hypervisor and from storage.

Each concern has one Protocol here, one real implementation (libvirt, qemu-img) and one
in-memory fake used by fast functional tests. Drivers translate library errors into the
exceptions below at their boundary; deleting something already gone is not an error. The
value types a domain is planned from (DomainPlan, DomainDisk, DomainNic) validate themselves,
so bad input fails with a stable code before any driver sees it.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from agent.drivers.stats import DomainStats

DomainPower = Literal["running", "shutoff", "paused", "crashed", "absent"]
DiskDevice = Literal["disk", "cdrom"]
DiskBus = Literal["virtio", "scsi", "sata", "ide"]
#: Cache modes that never lose a write the guest was told is on disk: each one honours the
#: guest's flushes (writeback, none) or writes through. "unsafe" ignores flushes and is refused.
CacheMode = Literal["none", "writethrough", "writeback", "directsync"]
ErrorPolicy = Literal["stop"]
CACHE_MODES = frozenset({"none", "writethrough", "writeback", "directsync"})
FileFormat = Literal["qcow2", "raw"]
#: Each bus names its disks with its own prefix (and IDE has only four places).
_TARGET_PATTERNS = {"virtio": r"vd[a-z]{1,2}", "scsi": r"sd[a-z]{1,2}", "sata": r"sd[a-z]{1,2}",
                    "ide": r"hd[a-d]"}


class DriverError(Exception):
    """A driver operation failed. `code` is stable; `retryable` says whether trying again helps."""

    code = "DriverError"
    retryable = True

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable


class DomainNotFound(DriverError):
    code = "DomainNotFound"
    retryable = False


class InvalidDevice(DriverError):
    """A disk or NIC description no hypervisor could use (bad target, source, serial, ...)."""

    code = "InvalidDeviceDefinition"
    retryable = False


class DeviceTargetInUse(DriverError):
    """The target (e.g. vdb) already holds a different disk in the domain."""

    code = "DeviceTargetInUse"
    retryable = False


class DeviceSourceInUse(DriverError):
    """The source is already attached writable under another target (QEMU would refuse to
    open one image twice for writing)."""

    code = "DeviceSourceInUse"
    retryable = False


class DeviceNotHotpluggable(DriverError):
    """A running domain cannot take a disk on this bus (IDE and SATA are not hot-pluggable)."""

    code = "DeviceNotHotpluggable"
    retryable = False


class DeviceNotFound(DriverError):
    """The domain has no disk on that target."""

    code = "NoSuchDevice"
    retryable = False


class DomainNotRunning(DriverError):
    """The operation needs a running domain (e.g. a live disk resize). Retryable: the domain
    may be starting; a shut-off domain's image is changed offline instead (Storage)."""

    code = "DomainNotRunning"
    retryable = True


class DeviceDetachTimeout(DriverError):
    """The guest did not release the device in time. The unplug request stays with the guest,
    so trying again may find it gone; `force` gives up waiting."""

    code = "DeviceDetachTimeout"
    retryable = True


def check_disk_size(size_bytes: int) -> None:
    """A disk size every driver accepts: a positive whole number of 512-byte sectors."""
    if (not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0
            or size_bytes % 512):
        raise DriverError(f"disk size {size_bytes!r} is not a positive multiple of 512 bytes",
                          code="InvalidParameterValue", retryable=False)


def _check_text(what: str, value: str, pattern: str | None = None) -> None:
    """Refuse what would not survive the trip into XML and QEMU's command line intact."""
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidDevice(f"{what} {value!r} is empty or has control characters")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise InvalidDevice(f"{what} {value!r} does not match {pattern}")


def _check_absolute(what: str, path: Path) -> None:
    _check_text(what, str(path))
    if not Path(path).is_absolute():
        raise InvalidDevice(f"{what} {str(path)!r} is not an absolute path")


@dataclass(frozen=True)
class FileSource:
    """A local image file."""

    path: Path
    format: FileFormat = "qcow2"

    def __post_init__(self) -> None:
        _check_absolute("disk file", self.path)
        if self.format not in ("qcow2", "raw"):
            raise InvalidDevice(f"disk format {self.format!r} is not qcow2 or raw")


@dataclass(frozen=True)
class NetworkHost:
    """Where a network disk is served: a TCP `name` (host name or address) and `port`, or a
    unix `socket` on this host (e.g. a qemu-storage-daemon's NBD export)."""

    name: str | None = None
    port: int | None = None
    socket: Path | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.socket is None):
            raise InvalidDevice("a network disk host has either a name or a socket")
        if self.socket is not None:
            _check_absolute("network disk socket", self.socket)
            if self.port is not None:
                raise InvalidDevice("a unix socket host has no port")
            return
        _check_text("network disk host", self.name, r"[A-Za-z0-9._:-]{1,253}")
        if self.port is not None and not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise InvalidDevice(f"network disk port {self.port!r} is not in 1..65535")


@dataclass(frozen=True)
class CephAuth:
    """The Ceph user an RBD disk authenticates as (cephx). `key` is its secret: the hypervisor
    keeps it (libvirt: a private secret) and never shows it, so a disk read back from the
    hypervisor has the user only; the key takes no part in comparisons."""

    username: str
    key: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_text("Ceph user", self.username, r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
        if self.key:
            _check_text("cephx key", self.key, r"[A-Za-z0-9+/]{38}==")


@dataclass(frozen=True)
class NetworkSource:
    """A disk served over the network, always raw bytes (the format lives on the storage side):
    NBD (`name` is the export, one host) or RBD (`name` is "pool/image", one host per monitor;
    `auth`: the cephx user, None without cephx)."""

    protocol: Literal["nbd", "rbd"]
    name: str
    hosts: tuple[NetworkHost, ...]
    auth: CephAuth | None = None

    def __post_init__(self) -> None:
        if self.protocol == "nbd":
            _check_text("NBD export", self.name, r"[A-Za-z0-9._-][A-Za-z0-9._/-]{0,254}")
            if len(self.hosts) != 1:
                raise InvalidDevice("an NBD disk has exactly one host")
        elif self.protocol == "rbd":
            _check_text("RBD image", self.name, r"[A-Za-z0-9._-]{1,127}/[A-Za-z0-9._-]{1,127}")
            if not self.hosts or any(h.socket is not None for h in self.hosts):
                raise InvalidDevice("an RBD disk has one or more TCP monitor hosts")
        else:
            raise InvalidDevice(f"network disk protocol {self.protocol!r} is not nbd or rbd")
        if not all(isinstance(h, NetworkHost) for h in self.hosts):
            raise InvalidDevice("network disk hosts must be NetworkHost values")
        if self.auth is not None and (self.protocol != "rbd"
                                      or not isinstance(self.auth, CephAuth)):
            raise InvalidDevice("only an RBD disk has a Ceph user (a CephAuth)")


@dataclass(frozen=True)
class DomainDisk:
    """One disk of a domain, as the guest sees it: device kind, where (bus + target) and what."""

    target: str  # e.g. "vda"; its prefix matches the bus (vd virtio, sd scsi/sata, hd ide)
    source: FileSource | NetworkSource
    device: DiskDevice = "disk"
    bus: DiskBus = "virtio"
    readonly: bool = False
    #: What the guest reads as the disk's serial: /dev/disk/by-id/virtio-<serial> is how it finds
    #: a volume by id. At most 20 characters (virtio-blk's limit), e.g. "vol0123456789abcdef0".
    serial: str | None = None
    #: None: the hypervisor's default (QEMU writeback honouring flushes). Never "unsafe".
    cache: CacheMode | None = None
    #: What an I/O error does, for reads and writes alike. None: the hypervisor's default (the
    #: guest gets the error). "stop": the domain pauses (DomainStatus.io_error) and keeps the
    #: request for a retry on resume, so a storage outage never reaches the guest's filesystem.
    error_policy: ErrorPolicy | None = None
    #: Boot priority (1 first). No disk of a plan has one: the domain boots its first hard disk.
    boot_order: int | None = None

    def __post_init__(self) -> None:
        if self.bus not in _TARGET_PATTERNS:
            raise InvalidDevice(f"disk bus {self.bus!r} is not one of {sorted(_TARGET_PATTERNS)}")
        _check_text(f"{self.bus} disk target", self.target, _TARGET_PATTERNS[self.bus])
        if not isinstance(self.source, FileSource | NetworkSource):
            raise InvalidDevice("a disk source is a FileSource or a NetworkSource")
        if self.device not in ("disk", "cdrom"):
            raise InvalidDevice(f"disk device {self.device!r} is not disk or cdrom")
        if self.device == "cdrom" and (self.bus == "virtio" or not self.readonly):
            raise InvalidDevice("a cdrom is read-only and on an ide, sata or scsi bus")
        if self.serial is not None:
            _check_text("disk serial", self.serial, r"[A-Za-z0-9_.-]{1,20}")
        if self.cache is not None and self.cache not in CACHE_MODES:
            raise InvalidDevice(f"cache mode {self.cache!r} is not one of {sorted(CACHE_MODES)}")
        if self.error_policy not in (None, "stop"):
            raise InvalidDevice(f"error policy {self.error_policy!r} is not 'stop'")
        if self.boot_order is not None and not (isinstance(self.boot_order, int)
                                                and self.boot_order >= 1):
            raise InvalidDevice(f"boot order {self.boot_order!r} is not a positive integer")


@dataclass(frozen=True)
class DomainNic:
    mac: str
    bridge: str
    #: Host-side tap name; None: agent.libvirt.names.tap_name(domain name, index), the name the
    #: VPC dataplane and the firewall expect for an instance.
    tap: str | None = None


@dataclass(frozen=True)
class DomainPlan:
    """Everything a hypervisor needs to define one instance's domain; no policy inside."""

    name: str  # the instance id
    vcpus: int
    memory_mib: int
    #: Every disk of the domain: an instance's root disk and NoCloud seed first
    #: (agent.drivers.disks.instance_disks), then any volumes. Targets are unique.
    disks: tuple[DomainDisk, ...]
    console_log: Path  # the serial console is appended here
    nics: tuple[DomainNic, ...] = field(default_factory=tuple)
    #: Generation of the spec this plan comes from (recorded in the domain's metadata).
    generation: int = 0

    def __post_init__(self) -> None:
        targets = Counter(d.target for d in self.disks)
        orders = Counter(d.boot_order for d in self.disks if d.boot_order is not None)
        twice = [t for t, n in (targets + orders).items() if n > 1]
        if twice:
            raise InvalidDevice(f"domain {self.name}: disk target or boot order used twice: "
                                f"{sorted(map(str, twice))}")


@dataclass(frozen=True)
class DomainStatus:
    name: str
    power: DomainPower
    vcpus: int | None = None
    memory_mib: int | None = None
    #: The disks attached now, sorted by target: the running guest's when it runs, else the
    #: definition's.
    disks: tuple[DomainDisk, ...] = ()
    #: Paused because a disk with error_policy "stop" failed a request (a storage outage, a
    #: volume's export re-made): start() resumes it and QEMU retries the request.
    io_error: bool = False


class Hypervisor(Protocol):
    """Runs domains. libvirt is the authority for power state.

    Device rules, the same for every driver (agent/drivers/disks.py holds the shared checks):
    - attach_disk puts the disk in the running guest (when it runs) and in the definition
      (always), so it survives a restart. Attaching a disk that is already there (the same
      DomainDisk on that target) is a no-op; a different disk on its target is
      DeviceTargetInUse; a writable source already on another target is DeviceSourceInUse; an
      IDE or SATA disk for a running domain is DeviceNotHotpluggable. A missing domain is
      DomainNotFound.
    - detach_disk of a target that is not attached, or of a domain that does not exist, succeeds.
      A shut-off domain loses it from its definition at once. A running guest is asked to
      release it and waited for up to `timeout` seconds; then the definition loses it too. A
      guest that does not release it in time: DeviceDetachTimeout, the definition untouched
      (the unplug request stays pending with the guest). With `force`, the definition loses it
      anyway and the running domain drops it when the guest lets go or at its next power-off:
      nothing can pull a PCI device out of a running guest that holds on to it.
    - define(plan) replaces the whole definition: a disk attached here that is not in the plan
      leaves the definition with the next define, so volumes belong in DomainPlan.disks too.
    - resize_disk grows the disk on `target` of a *running* (or paused) domain to `size_bytes`
      at once: the hypervisor grows the image under the guest, which sees the new size without
      a reboot (its filesystem grows when the guest grows it). A network disk's image is grown
      by its storage first; the hypervisor then makes its client learn the new size. It never
      shrinks: a size at or below the
      disk's capacity is a no-op. A shut-off domain is DomainNotRunning (its image is
      grown offline, Storage.ensure_root_disk); no disk on `target` is DeviceNotFound; a size
      that is not a positive multiple of 512 is InvalidParameterValue; a missing domain is
      DomainNotFound. Capability "disk_resize_live".
    - disk_capacity is the size in bytes of the disk on `target` as the domain sees it (the
      running guest's, else the image's); no disk there is DeviceNotFound.
    """

    #: e.g. {"reboot", "resize_offline", "console_log", "disk_hotplug", "disk_resize_live",
    #: "stats"}
    capabilities: frozenset[str]
    #: "kvm" or "qemu" (TCG)
    kind: str

    def define(self, plan: DomainPlan) -> None:
        """Create or replace the persistent definition (only applied to a running domain at its next start)."""

    def start(self, name: str) -> None:
        """Start a defined domain; starting a running one is a no-op."""

    def shutdown(self, name: str, timeout: float) -> None:
        """ACPI shutdown, then hard power-off after `timeout` seconds; a shut-off domain is a no-op."""

    def destroy(self, name: str) -> None:
        """Hard power-off now; absent or shut off is a no-op."""

    def reboot(self, name: str) -> None:
        """Reset the running domain (a fresh boot of the same definition)."""

    def undefine(self, name: str) -> None:
        """Remove the definition (destroying first); absent is a no-op."""

    def status(self, name: str) -> DomainStatus:
        """Power state, size and disks of one domain; power="absent" when it does not exist."""

    def list_domains(self) -> list[DomainStatus]:
        """Every domain this driver manages on the host (Kumo's, by name i-...)."""

    def attach_disk(self, name: str, disk: DomainDisk) -> None:
        """Attach `disk` to the running domain and its definition (see the device rules)."""

    def detach_disk(self, name: str, target: str, *, force: bool = False,
                    timeout: float = 10.0) -> None:
        """Detach the disk on `target` (e.g. "vdb"), waiting for the guest (see the rules)."""

    def resize_disk(self, name: str, target: str, size_bytes: int) -> None:
        """Grow the running domain's disk on `target` to `size_bytes` (see the rules). A network
        disk's source must have that size already (the storage node grew the volume): the
        driver makes the domain see it."""

    def disk_capacity(self, name: str, target: str) -> int:
        """Bytes of the disk on `target` as the domain sees it (see the rules)."""

    def stats(self, names: list[str] | None = None) -> list[DomainStats]:
        """Cumulative counters of the domains named (every Kumo domain when None), sampled in
        one call, sorted by name; a name with no domain is left out. Counters start from zero
        each time a domain starts (DomainStats.run_id changes); agent.drivers.stats derives
        rates from two samples."""


class Storage(Protocol):
    """Image cache, root disks and seeds under the agent's state directory."""

    def cached_image(self, image_id: str, url: str, sha256: str) -> Path:
        """The verified local copy of an image, fetched once per host."""

    def ensure_root_disk(self, instance_id: str, base: Path, size_bytes: int) -> Path:
        """A qcow2 overlay on `base`, at least `size_bytes` big (grown, never shrunk)."""

    def write_seed(self, instance_id: str, meta_data: dict, user_data: bytes,
                   network_config: dict | None) -> Path:
        """A NoCloud seed ISO for the instance (rewritten when its content changes)."""

    def instance_dir(self, instance_id: str) -> Path:
        """The per-instance directory (disk, seed, console log)."""

    def remove_instance(self, instance_id: str) -> None:
        """Delete every file of the instance; absent is a no-op."""

    def list_instance_dirs(self) -> list[str]:
        """Instance ids that have files on this host (to find orphans)."""

    def prune_images(self, keep: Collection[tuple[str, str]], *,
                     recheck: Callable[[], Collection[tuple[str, str]]] | None = None,
                     ) -> list[tuple[str, str]]:
        """Delete cached images whose (image_id, sha256) is not in `keep`; return those deleted.

        The rule, the same for every driver: an image is deleted only under the lock its
        download and lookup (cached_image) and the creation of an overlay on it take, and only
        when, under that lock, `recheck()` (the caller's wanted set read afresh, if given) does
        not name it and no overlay on this host (root disk, or one being created) backs onto
        it. An image locked right now (downloading, looked up, overlaid) is skipped, never
        waited for. A download in progress is never touched. So a caller that re-reads its
        accepted specs in `recheck` never loses the image of a spec accepted after it computed
        `keep`: that spec's lookup happens either before the recheck (which then sees the
        spec) or after the deletion (which then downloads it again)."""
