"""The agent's driver contracts: what the reconciler needs from a hypervisor and from storage.

Each concern has one Protocol here, one real implementation (libvirt, qemu-img) and one
in-memory fake used by fast functional tests. Drivers translate library errors into the
exceptions below at their boundary; deleting something already gone is not an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

DomainPower = Literal["running", "shutoff", "paused", "crashed", "absent"]


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
    root_disk: Path  # qcow2 overlay
    seed_iso: Path | None  # NoCloud seed (ISO 9660, label cidata)
    console_log: Path  # the serial console is appended here
    nics: tuple[DomainNic, ...] = field(default_factory=tuple)
    #: Generation of the spec this plan comes from (recorded in the domain's metadata).
    generation: int = 0


@dataclass(frozen=True)
class DomainStatus:
    name: str
    power: DomainPower
    vcpus: int | None = None
    memory_mib: int | None = None


class Hypervisor(Protocol):
    """Runs domains. libvirt is the authority for power state."""

    #: e.g. {"reboot", "resize_offline", "console_log"}
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
        """Power state and size of one domain; power="absent" when it does not exist."""

    def list_domains(self) -> list[DomainStatus]:
        """Every domain this driver manages on the host (Kumo's, by name i-...)."""


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
