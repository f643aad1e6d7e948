"""LibvirtHypervisor: the Hypervisor driver (agent/drivers/base.py) on a libvirt connection.

The connection is injected (a URI, an open virConnect, or a factory) and reopened when it drops
(libvirtd restarted). libvirt errors are translated here, at the boundary: a missing domain is
DomainNotFound (or a no-op for destroy/shutdown/undefine/detach), everything else a DriverError
with a stable code. Only Kumo's domains (named i-<17 hex> or carrying Kumo metadata) are listed.
Disk hot-plug is devices.py's, statistics stats.py's. A live disk grow is virDomainBlockResize
(in bytes) on the running domain: QEMU grows the image under the guest.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import libvirt

from agent.contract.v1 import INSTANCE_ID_RE
from agent.drivers.base import (DeviceNotFound, DomainDisk, DomainNotFound, DomainNotRunning,
                                DomainPlan, DomainStatus, DriverError, check_disk_size)
from agent.drivers.disks import on_target
from agent.drivers.stats import DomainStats
from agent.libvirt import ceph_secret, devices, nbd_reconnect, stats
from agent.libvirt.designer import DEFAULT_EMULATOR, DEFAULT_TCG_CPU_MODEL, design_domain
from agent.libvirt.disks import from_domain_xml
from agent.libvirt.domain import KUMO_NS, KumoMetadata

T = TypeVar("T")
ConnSource = str | libvirt.virConnect | Callable[[], libvirt.virConnect]

_CONNECTION_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC}
_DEFINITION_CODES = {libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL,
                     libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_ERR_XML_INVALID_SCHEMA}
_UNDEFINE_FLAG_SETS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    0,
)


def _quiet(_ctx, _err) -> None:
    """libvirt's default handler prints every error to stderr; we translate them instead."""


def _is_connection_error(e: libvirt.libvirtError) -> bool:
    return (e.get_error_code() in _CONNECTION_CODES
            or e.get_error_domain() == libvirt.VIR_FROM_RPC)


def _translate(e: libvirt.libvirtError, what: str) -> DriverError:
    code = e.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(f"{what}: {e}")
    if _is_connection_error(e):
        return DriverError(f"{what}: libvirt unavailable: {e}", code="HypervisorUnavailable",
                           retryable=True)
    if code in _DEFINITION_CODES:
        return DriverError(f"{what}: invalid domain definition: {e}",
                           code="InvalidDomainDefinition", retryable=False)
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return DriverError(f"{what}: {e}", code="HypervisorTimeout", retryable=True)
    if code == libvirt.VIR_ERR_NO_SUPPORT:
        return DriverError(f"{what}: not supported by this libvirt driver: {e}",
                           code="HypervisorUnsupported", retryable=False)
    return DriverError(f"{what}: libvirt error {code}: {e}", code="HypervisorError",
                       retryable=True)


class LibvirtHypervisor:
    """Runs Kumo domains on one libvirt connection (qemu:///system or a lab host's socket)."""

    #: resize_offline: a redefinition with new vcpus/memory applies at the next start.
    #: disk_resize_live: resize_disk grows a running guest's disk (virDomainBlockResize).
    capabilities = frozenset({"reboot", "resize_offline", "console_log", "disk_hotplug",
                              "disk_resize_live", "stats"})

    def __init__(self, conn: ConnSource, kind: Literal["kvm", "qemu"], *,
                 emulator: str | None = DEFAULT_EMULATOR,
                 tcg_cpu_model: str = DEFAULT_TCG_CPU_MODEL,
                 reboot_mode: Literal["restart", "reset"] = "restart",
                 poll_interval: float = 0.2) -> None:
        if kind not in ("kvm", "qemu"):
            raise ValueError(f"unknown hypervisor kind {kind!r}")
        self.kind = kind
        self.emulator = emulator
        self.tcg_cpu_model = tcg_cpu_model
        self.reboot_mode = reboot_mode
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        libvirt.registerErrorHandler(_quiet, None)
        if isinstance(conn, str):
            uri = conn
            self._factory: Callable[[], libvirt.virConnect] = lambda: libvirt.open(uri)
        elif isinstance(conn, libvirt.virConnect):
            self._conn = conn
            uri = conn.getURI()
            self._factory = lambda: libvirt.open(uri)
        else:
            self._factory = conn

    # -- connection ------------------------------------------------------------------------

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                self._drop(conn)
            try:
                self._conn = self._factory()
            except libvirt.libvirtError as e:
                raise DriverError(f"cannot connect to libvirt: {e}", code="HypervisorUnavailable",
                                  retryable=True) from e
            return self._conn

    def _drop(self, conn: libvirt.virConnect) -> None:
        if self._conn is conn:
            self._conn = None
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run fn(conn); on a dropped connection reconnect and try once more."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return fn(conn)
            except libvirt.libvirtError as e:
                if attempt == 1 and _is_connection_error(e):
                    with self._lock:
                        self._drop(conn)
                    continue
                raise _translate(e, what) from e
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._drop(self._conn)

    # -- Hypervisor protocol ----------------------------------------------------------------

    def domain_xml(self, plan: DomainPlan) -> str:
        """The XML `define` would send (designed, not yet given its existing uuid)."""
        return design_domain(plan, self.kind, emulator=self.emulator,
                             tcg_cpu_model=self.tcg_cpu_model).to_xml()

    def define(self, plan: DomainPlan) -> None:
        domain = design_domain(plan, self.kind, emulator=self.emulator,
                               tcg_cpu_model=self.tcg_cpu_model)

        def run(conn: libvirt.virConnect) -> None:
            # Redefining needs the existing uuid, or libvirt refuses the name as taken; a new
            # domain gets the designed one (designer.ec2_uuid).
            try:
                domain.uuid = conn.lookupByName(plan.name).UUIDString()
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            ceph_secret.ensure_for(conn, plan.disks)  # the keys of its RBD disks with cephx
            conn.defineXML(domain.to_xml())

        self._call(f"define {plan.name}", run)

    def start(self, name: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            dom = conn.lookupByName(name)
            state, reason = dom.state()
            if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR:
                # Reconnect the network disks first, so the requests QEMU retries on resume
                # find them (nbd_reconnect.py); one that still fails pauses the guest again.
                for node in nbd_reconnect.network_nodes(dom.XMLDesc(0)):
                    nbd_reconnect.reconnect(dom, node)
                dom.resume()
            elif state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
                dom.resume()
            elif not dom.isActive():
                dom.create()

        self._call(f"start {name}", run)

    def destroy(self, name: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            try:
                _power_off(conn.lookupByName(name))
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # gone means "off" too
                    raise

        self._call(f"destroy {name}", run)

    def shutdown(self, name: str, timeout: float) -> None:
        def ask(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByName(name)
                if not dom.isActive():
                    return False
                # Flags 0: the hypervisor's default, ACPI power button for QEMU without a
                # guest agent channel (which Kumo domains never have).
                dom.shutdown()
                return True
            except libvirt.libvirtError as e:
                if e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN,
                                          libvirt.VIR_ERR_OPERATION_INVALID):
                    return False
                raise

        if not self._call(f"shutdown {name}", ask):
            return
        deadline = time.monotonic() + max(0.0, timeout)
        while time.monotonic() < deadline:
            if self.status(name).power in ("shutoff", "crashed", "absent"):
                return
            time.sleep(self.poll_interval)
        self.destroy(name)

    def reboot(self, name: str) -> None:
        """A fresh boot. "restart" (default): destroy + start, so the guest boots from the
        persistent definition in a new QEMU process whatever it does with ACPI (and a pending
        redefinition takes effect). "reset": a hardware reset of the running QEMU (taps kept)."""
        def run(conn: libvirt.virConnect) -> None:
            dom = conn.lookupByName(name)
            if self.reboot_mode == "reset" and dom.isActive():
                dom.reset()
                return
            _power_off(dom)
            dom.create()

        self._call(f"reboot {name}", run)

    def undefine(self, name: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            try:
                dom = conn.lookupByName(name)
                _power_off(dom)
                for flags in _UNDEFINE_FLAG_SETS:
                    try:
                        dom.undefineFlags(flags)
                        return
                    except libvirt.libvirtError as e:
                        # Older or test drivers reject some flags: retry with fewer.
                        if e.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG,
                                                      libvirt.VIR_ERR_NO_SUPPORT) or flags == 0:
                            raise
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise

        self._call(f"undefine {name}", run)

    def status(self, name: str) -> DomainStatus:
        def run(conn: libvirt.virConnect) -> DomainStatus:
            try:
                return self._status_of(conn.lookupByName(name))
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return DomainStatus(name=name, power="absent")
                raise

        return self._call(f"status {name}", run)

    def list_domains(self) -> list[DomainStatus]:
        def run(conn: libvirt.virConnect) -> list[DomainStatus]:
            out = []
            for dom in conn.listAllDomains(0):
                try:
                    if not self._is_kumo(dom):
                        continue
                    out.append(self._status_of(dom))
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished meanwhile
                        raise
            return sorted(out, key=lambda s: s.name)

        return self._call("list domains", run)

    def attach_disk(self, name: str, disk: DomainDisk) -> None:
        def run(conn: libvirt.virConnect) -> None:
            ceph_secret.ensure_for(conn, [disk])
            devices.attach(conn.lookupByName(name), disk)

        self._call(f"attach {disk.target} to {name}", run)

    def detach_disk(self, name: str, target: str, *, force: bool = False,
                    timeout: float = 10.0) -> None:
        def run(conn: libvirt.virConnect) -> None:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return  # no domain: nothing is attached to it
                raise
            devices.detach(dom, target, force=force, timeout=timeout,
                           poll_interval=self.poll_interval)

        self._call(f"detach {target} from {name}", run)

    def resize_disk(self, name: str, target: str, size_bytes: int) -> None:
        check_disk_size(size_bytes)

        def run(conn: libvirt.virConnect) -> None:
            dom = conn.lookupByName(name)
            if not dom.isActive():
                raise DomainNotRunning(f"resize {target} of {name}: the domain is not running")
            if on_target(from_domain_xml(dom.XMLDesc(0)), target) is None:
                raise DeviceNotFound(f"resize {target} of {name}: no disk on {target}")
            if size_bytes <= dom.blockInfo(target)[0]:
                return  # already that big: never shrink (QEMU would cut the image short)
            try:
                _block_resize(dom, target, size_bytes, self.poll_interval)
            except libvirt.libvirtError as e:
                # The domain stopped between the check and the call.
                if (e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
                        and not dom.isActive()):
                    raise DomainNotRunning(f"resize {target} of {name}: the domain stopped") \
                        from e
                raise

        self._call(f"resize {target} of {name}", run)

    def disk_capacity(self, name: str, target: str) -> int:
        def run(conn: libvirt.virConnect) -> int:
            dom = conn.lookupByName(name)
            if on_target(from_domain_xml(dom.XMLDesc(0)), target) is None:
                raise DeviceNotFound(f"capacity of {target} of {name}: no disk on {target}")
            return int(dom.blockInfo(target)[0])

        return self._call(f"capacity of {target} of {name}", run)

    def stats(self, names: list[str] | None = None) -> list[DomainStats]:
        wanted = None if names is None else set(names)

        def run(conn: libvirt.virConnect) -> list[DomainStats]:
            records = conn.getAllDomainStats(stats.GROUPS, stats.FLAGS)
            mono, wall = time.monotonic(), time.time()
            out = []
            for dom, record in records:
                name = dom.name()
                try:
                    keep = name in wanted if wanted is not None else self._is_kumo(dom)
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished meanwhile
                        raise
                    keep = False
                if keep:
                    out.append(stats.from_record(name, dom.ID(), record, mono, wall))
            return sorted(out, key=lambda s: s.name)

        return self._call("domain stats", run)

    def defined_generation(self, name: str) -> int | None:
        """The spec generation recorded in the domain's metadata (None: absent or not Kumo's)."""
        def run(conn: libvirt.virConnect) -> int | None:
            try:
                meta = self._metadata(conn.lookupByName(name))
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return meta.generation if meta else None

        return self._call(f"metadata {name}", run)

    def versions(self) -> dict[str, str]:
        """libvirt library/daemon and hypervisor versions, for HostInfo.versions."""
        def fmt(v: int) -> str:
            return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"

        def run(conn: libvirt.virConnect) -> dict[str, str]:
            out = {"libvirt": fmt(conn.getLibVersion()), "hypervisor_kind": self.kind}
            try:
                out["qemu"] = fmt(conn.getVersion())
            except libvirt.libvirtError:
                pass
            return out

        return self._call("versions", run)

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _metadata(dom: libvirt.virDomain) -> KumoMetadata | None:
        try:
            text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, KUMO_NS, 0)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise
        try:
            return KumoMetadata.from_xml(text)
        except (ValueError, SyntaxError):
            return None

    def _is_kumo(self, dom: libvirt.virDomain) -> bool:
        return bool(INSTANCE_ID_RE.match(dom.name())) or self._metadata(dom) is not None

    @staticmethod
    def _status_of(dom: libvirt.virDomain) -> DomainStatus:
        state, reason = dom.state()
        _, max_kib, _, vcpus, _ = dom.info()
        if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED,
                     libvirt.VIR_DOMAIN_SHUTDOWN):
            power = "running"
        elif state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
            power = "paused"
        elif state == libvirt.VIR_DOMAIN_CRASHED or (
                state == libvirt.VIR_DOMAIN_SHUTOFF
                and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED):
            power = "crashed"
        elif state == libvirt.VIR_DOMAIN_SHUTOFF:
            power = "shutoff"
        else:  # NOSTATE: trust isActive
            power = "running" if dom.isActive() else "shutoff"
        return DomainStatus(name=dom.name(), power=power, vcpus=vcpus, memory_mib=max_kib // 1024,
                            disks=tuple(sorted(from_domain_xml(dom.XMLDesc(0)),
                                               key=lambda d: d.target)),
                            io_error=(state == libvirt.VIR_DOMAIN_PAUSED
                                      and reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR))


#: block_resize attempts on a network disk whose client must reconnect to learn the new size.
NETWORK_RESIZE_ATTEMPTS = 10


def _block_resize(dom: libvirt.virDomain, target: str, size_bytes: int,
                  pause: float) -> None:
    """virDomainBlockResize; on a network disk whose client still knows the export's old size
    ("Cannot grow NBD nodes"), reconnect it and try again (nbd_reconnect.py). The storage node
    may not have grown the export yet: then the last error stands (retryable)."""
    node = None
    for attempt in range(NETWORK_RESIZE_ATTEMPTS):
        try:
            dom.blockResize(target, size_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            return
        except libvirt.libvirtError as e:
            if "Cannot grow NBD nodes" not in str(e) or attempt == NETWORK_RESIZE_ATTEMPTS - 1:
                raise
            node = node or nbd_reconnect.storage_node(dom.XMLDesc(0), target)
            if node is None:
                raise
        nbd_reconnect.reconnect(dom, node)
        if attempt:
            time.sleep(pause)


def _power_off(dom: libvirt.virDomain) -> None:
    """Destroy `dom` if it runs; one that stopped between the check and the call is off too."""
    if not dom.isActive():
        return
    try:
        dom.destroy()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
            raise
