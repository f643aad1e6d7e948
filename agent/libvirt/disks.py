"""DomainDisk (the driver contract's disk) to and from libvirt's <disk> objects (domain.Disk).

The designer renders plans through to_xml_disk; the driver reads the disks a domain has through
from_domain_xml, so attach checks and DomainStatus.disks see what libvirt holds, not what the
agent believes it asked for.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from agent.drivers.base import (CephAuth, DomainDisk, DriverError, FileSource, NetworkHost,
                                NetworkSource)
from agent.libvirt.ceph_secret import secret_uuid
from agent.libvirt.domain import Disk, DiskHost


def to_xml_disk(disk: DomainDisk) -> Disk:
    common = dict(target_dev=disk.target, target_bus=disk.bus, device=disk.device,
                  cache=disk.cache, error_policy=disk.error_policy, readonly=disk.readonly,
                  serial=disk.serial, boot_order=disk.boot_order)
    src = disk.source
    if isinstance(src, FileSource):
        return Disk(source_file=str(src.path), driver_type=src.format, **common)
    hosts = tuple(DiskHost(socket=str(h.socket)) if h.socket is not None
                  else DiskHost(name=h.name, port=h.port) for h in src.hosts)
    auth = dict(auth_username=src.auth.username,
                auth_secret_uuid=secret_uuid(src.auth.username)) if src.auth else {}
    return Disk(source_protocol=src.protocol, source_name=src.name, source_hosts=hosts,
                driver_type="raw", **auth, **common)


def from_xml_disk(disk: Disk) -> DomainDisk | None:
    """The DomainDisk `disk` is, or None when it is nothing Kumo would define (a foreign
    domain's USB disk, an iSCSI source, ...): such disks are left out of what is reported."""
    try:
        if disk.source_protocol is None:
            source: FileSource | NetworkSource = FileSource(Path(disk.source_file or ""),
                                                            disk.driver_type)
        else:
            # The key stays in libvirt's secret: the disk read back names the user only.
            source = NetworkSource(disk.source_protocol, disk.source_name or "", tuple(
                NetworkHost(socket=Path(h.socket)) if h.socket is not None
                else NetworkHost(name=h.name, port=h.port) for h in disk.source_hosts),
                CephAuth(disk.auth_username) if disk.auth_username is not None else None)
        return DomainDisk(target=disk.target_dev, source=source, device=disk.device,
                          bus=disk.target_bus, readonly=disk.readonly, serial=disk.serial,
                          cache=disk.cache,
                          error_policy="stop" if disk.error_policy == "stop" else None,
                          boot_order=disk.boot_order)
    except DriverError:
        return None


def from_domain_xml(xml: str) -> tuple[DomainDisk, ...]:
    """The disks of a domain's XML (virDomainGetXMLDesc), in the order it lists them."""
    out = []
    for el in ET.fromstring(xml).findall("devices/disk"):
        parsed = Disk.from_element(el)
        disk = from_xml_disk(parsed) if parsed is not None else None
        if disk is not None:
            out.append(disk)
    return tuple(out)


def disk_alias(xml: str, target: str) -> str | None:
    """The alias libvirt gave the disk on `target` in a running domain's XML (what
    virDomainDetachDeviceAlias takes), or None when no disk is on that target."""
    for el in ET.fromstring(xml).findall("devices/disk"):
        t = el.find("target")
        if t is not None and t.get("dev") == target:
            alias = el.find("alias")
            return alias.get("name") if alias is not None else None
    return None
