"""Typed objects for a libvirt domain definition, rendered with xml.etree.ElementTree.

No policy lives here (that is designer.py): every object renders exactly what it holds. Values go
into element text and attributes, never into string templates, so escaping is ElementTree's job.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Literal

#: Namespace of Kumo's <metadata> child, so the agent recognises its own domains.
KUMO_NS = "https://kumo.dev/xmlns/libvirt/instance/1"
KUMO_NS_PREFIX = "kumo"

ET.register_namespace(KUMO_NS_PREFIX, KUMO_NS)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


class _Xml:
    def to_element(self) -> ET.Element:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_xml(self) -> str:
        el = self.to_element()
        ET.indent(el, space="  ")
        return ET.tostring(el, encoding="unicode") + "\n"


@dataclass
class OS(_Xml):
    arch: str = "x86_64"
    machine: str = "pc"
    type: str = "hvm"
    boot_devs: tuple[str, ...] = ("hd",)
    #: <smbios mode='sysinfo'/>: the guest's SMBIOS tables come from the domain's <sysinfo>.
    smbios_sysinfo: bool = False

    def to_element(self) -> ET.Element:
        el = ET.Element("os")
        _sub(el, "type", self.type, arch=self.arch, machine=self.machine)
        for dev in self.boot_devs:
            _sub(el, "boot", dev=dev)
        if self.smbios_sysinfo:
            _sub(el, "smbios", mode="sysinfo")
        return el


@dataclass
class SysInfo(_Xml):
    """SMBIOS type 1 (system) strings the guest reads from /sys/class/dmi/id. The system uuid
    and serial are the domain's uuid (libvirt refuses a sysinfo uuid that differs from it)."""

    manufacturer: str
    product: str
    uuid: str | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("sysinfo", type="smbios")
        system = _sub(el, "system")
        _sub(system, "entry", self.manufacturer, name="manufacturer")
        _sub(system, "entry", self.product, name="product")
        if self.uuid:
            _sub(system, "entry", self.uuid, name="serial")
            _sub(system, "entry", self.uuid, name="uuid")
        return el


@dataclass
class CPU(_Xml):
    #: "host-passthrough", "host-model" or "custom" (then `model` is used).
    mode: str = "custom"
    model: str | None = None
    match: str | None = "exact"
    check: str | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("cpu", mode=self.mode)
        if self.mode == "custom" and self.match:
            el.set("match", self.match)
        if self.check:
            el.set("check", self.check)
        if self.model is not None:
            _sub(el, "model", self.model, fallback="allow")
        return el


@dataclass
class Timer(_Xml):
    name: str
    tickpolicy: str | None = None
    present: bool | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("timer", name=self.name)
        if self.tickpolicy:
            el.set("tickpolicy", self.tickpolicy)
        if self.present is not None:
            el.set("present", "yes" if self.present else "no")
        return el


@dataclass
class Clock(_Xml):
    offset: str = "utc"
    timers: tuple[Timer, ...] = ()

    def to_element(self) -> ET.Element:
        el = ET.Element("clock", offset=self.offset)
        for timer in self.timers:
            el.append(timer.to_element())
        return el


@dataclass
class DiskHost(_Xml):
    """<host> of a network disk: TCP `name` + `port`, or a unix `socket`."""

    name: str | None = None
    port: int | None = None
    socket: str | None = None

    def to_element(self) -> ET.Element:
        if self.socket is not None:
            return ET.Element("host", transport="unix", socket=self.socket)
        el = ET.Element("host", name=self.name or "")
        if self.port is not None:
            el.set("port", str(self.port))
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> DiskHost:
        if el.get("transport") == "unix":
            return cls(socket=el.get("socket"))
        port = el.get("port")
        return cls(name=el.get("name"), port=int(port) if port else None)


def _error_policy(drv: ET.Element | None) -> str | None:
    """The one policy Kumo sets for writes and reads alike, or None when they differ (a disk
    Kumo did not define: it then never equals one of Kumo's)."""
    if drv is None:
        return None
    write, read = drv.get("error_policy"), drv.get("rerror_policy")
    return write if write == read else None


@dataclass
class Disk(_Xml):
    """<disk type='file'> (source_file) or <disk type='network'> (source_protocol, name, hosts)."""

    target_dev: str
    target_bus: str
    source_file: str | None = None
    source_protocol: str | None = None
    source_name: str | None = None
    source_hosts: tuple[DiskHost, ...] = ()
    device: Literal["disk", "cdrom"] = "disk"
    driver_type: str = "qcow2"
    cache: str | None = None
    #: libvirt's error_policy and rerror_policy together ("stop": pause the guest on an I/O
    #: error, the request kept for a retry on resume).
    error_policy: str | None = None
    readonly: bool = False
    serial: str | None = None
    boot_order: int | None = None
    #: A network disk's <auth>: the Ceph user (username) and the UUID of the libvirt secret
    #: holding its key (<secret type='ceph'>); None without cephx.
    auth_username: str | None = None
    auth_secret_uuid: str | None = None

    def to_element(self) -> ET.Element:
        network = self.source_protocol is not None
        el = ET.Element("disk", type="network" if network else "file", device=self.device)
        drv = _sub(el, "driver", name="qemu", type=self.driver_type)
        if self.cache:
            drv.set("cache", self.cache)
        if self.error_policy:
            drv.set("error_policy", self.error_policy)
            drv.set("rerror_policy", self.error_policy)
        if network:
            src = _sub(el, "source", protocol=self.source_protocol, name=self.source_name or "")
            for host in self.source_hosts:
                src.append(host.to_element())
            if self.auth_username is not None:
                # Inside <source> (libvirt >= 3.9), where libvirt also keeps it.
                auth = _sub(src, "auth", username=self.auth_username)
                _sub(auth, "secret", type="ceph", uuid=self.auth_secret_uuid or "")
        else:
            _sub(el, "source", file=self.source_file or "")
        _sub(el, "target", dev=self.target_dev, bus=self.target_bus)
        if self.boot_order is not None:
            _sub(el, "boot", order=str(self.boot_order))
        if self.readonly:
            _sub(el, "readonly")
        if self.serial is not None:
            _sub(el, "serial", self.serial)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> Disk | None:
        """Read a <disk> of libvirt's XML; None for kinds Kumo never defines (block, volume,
        an empty cdrom tray). What libvirt adds (alias, address, backing chain) is ignored."""
        kind, src, target = el.get("type"), el.find("source"), el.find("target")
        if kind not in ("file", "network") or src is None or target is None:
            return None
        drv = el.find("driver")
        boot = el.find("boot")
        common = dict(target_dev=target.get("dev", ""), target_bus=target.get("bus", ""),
                      device=el.get("device", "disk"),
                      driver_type=drv.get("type", "raw") if drv is not None else "raw",
                      cache=drv.get("cache") if drv is not None else None,
                      error_policy=_error_policy(drv),
                      readonly=el.find("readonly") is not None,
                      serial=el.findtext("serial"),
                      boot_order=int(boot.get("order")) if boot is not None else None)
        if kind == "file":
            if src.get("file") is None:
                return None
            return cls(source_file=src.get("file"), **common)
        # <auth> may sit in <source> or (libvirt's older place) directly in <disk>.
        auth = src.find("auth")
        auth = auth if auth is not None else el.find("auth")
        secret = auth.find("secret") if auth is not None else None
        return cls(source_protocol=src.get("protocol"), source_name=src.get("name"),
                   source_hosts=tuple(DiskHost.from_element(h) for h in src.findall("host")),
                   auth_username=auth.get("username") if auth is not None else None,
                   auth_secret_uuid=secret.get("uuid") if secret is not None else None,
                   **common)


@dataclass
class BridgeInterface(_Xml):
    mac: str
    bridge: str
    target_dev: str | None = None
    model: str = "virtio"
    #: Load the NIC's option ROM (network boot firmware); None leaves libvirt's default.
    rom: bool | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("interface", type="bridge")
        _sub(el, "mac", address=self.mac)
        _sub(el, "source", bridge=self.bridge)
        if self.target_dev:
            _sub(el, "target", dev=self.target_dev)
        _sub(el, "model", type=self.model)
        if self.rom is not None:
            _sub(el, "rom", enabled="yes" if self.rom else "no")
        return el


@dataclass
class PtySerial(_Xml):
    """A serial port on a pty (for `virsh console`), also appended to a log file."""

    log_file: str | None = None
    port: int = 0

    def to_element(self) -> ET.Element:
        el = ET.Element("serial", type="pty")
        if self.log_file:
            _sub(el, "log", file=self.log_file, append="on")
        _sub(el, "target", port=str(self.port))
        return el


@dataclass
class SerialConsole(_Xml):
    port: int = 0

    def to_element(self) -> ET.Element:
        el = ET.Element("console", type="pty")
        _sub(el, "target", type="serial", port=str(self.port))
        return el


@dataclass
class MemBalloon(_Xml):
    model: Literal["none", "virtio"] = "none"

    def to_element(self) -> ET.Element:
        return ET.Element("memballoon", model=self.model)


@dataclass
class Rng(_Xml):
    source: str = "/dev/urandom"
    model: str = "virtio"

    def to_element(self) -> ET.Element:
        el = ET.Element("rng", model=self.model)
        _sub(el, "backend", self.source, model="random")
        return el


Device = Disk | BridgeInterface | PtySerial | SerialConsole | MemBalloon | Rng


@dataclass
class KumoMetadata(_Xml):
    """<kumo:instance> inside <metadata>: how the agent finds and ages its domains."""

    instance_id: str
    generation: int = 0

    def to_element(self) -> ET.Element:
        el = ET.Element(f"{{{KUMO_NS}}}instance")
        _sub(el, f"{{{KUMO_NS}}}id", self.instance_id)
        _sub(el, f"{{{KUMO_NS}}}generation", str(self.generation))
        return el

    @classmethod
    def from_xml(cls, text: str) -> KumoMetadata:
        """Parse what virDomainGetMetadata returns (libvirt drops the namespace prefix)."""
        el = ET.fromstring(text)
        values = {child.tag.rpartition("}")[2]: (child.text or "").strip() for child in el}
        iid, gen = values.get("id"), values.get("generation") or "0"
        if not iid:
            raise ValueError("kumo metadata without an instance id")
        return cls(instance_id=iid, generation=int(gen))


@dataclass
class Domain(_Xml):
    name: str
    memory_kib: int
    vcpus: int
    type: Literal["qemu", "kvm"] = "qemu"
    uuid: str | None = None
    os: OS = field(default_factory=OS)
    features: tuple[str, ...] = ("acpi", "apic")
    cpu: CPU | None = None
    clock: Clock | None = field(default_factory=Clock)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    emulator: str | None = None
    devices: list[Device] = field(default_factory=list)
    metadata: KumoMetadata | None = None
    #: SMBIOS system strings; its uuid and serial are filled from `uuid` when rendered.
    sysinfo: SysInfo | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("domain", type=self.type)
        _sub(el, "name", self.name)
        if self.uuid:
            _sub(el, "uuid", self.uuid)
        if self.metadata is not None:
            _sub(el, "metadata").append(self.metadata.to_element())
        _sub(el, "memory", str(self.memory_kib), unit="KiB")
        _sub(el, "currentMemory", str(self.memory_kib), unit="KiB")
        _sub(el, "vcpu", str(self.vcpus), placement="static")
        if self.sysinfo is not None:
            el.append(replace(self.sysinfo, uuid=self.uuid).to_element())
        el.append(self.os.to_element())
        if self.features:
            feats = _sub(el, "features")
            for name in self.features:
                _sub(feats, name)
        if self.cpu is not None:
            el.append(self.cpu.to_element())
        if self.clock is not None:
            el.append(self.clock.to_element())
        _sub(el, "on_poweroff", self.on_poweroff)
        _sub(el, "on_reboot", self.on_reboot)
        _sub(el, "on_crash", self.on_crash)
        devs = _sub(el, "devices")
        if self.emulator:
            _sub(devs, "emulator", self.emulator)
        for dev in self.devices:
            devs.append(dev.to_element())
        return el
