"""The libvirt secret holding a host's cephx key, for RBD disks with cephx (docs/security.md
"Storage access"; contract extension "volumes-rbd-cephx").

QEMU gets a Ceph key only through libvirt: a secret with `<usage type='ceph'>`, whose value is
the key's raw bytes (libvirt hands QEMU their base64, which is the key as Ceph prints it), named
by UUID in the disk's `<auth username=...><secret type='ceph' uuid=.../></auth>`. One secret per
Ceph user (in practice one per host: its own user), at a UUID derived from the user's name, so
the disk XML is a pure function of the spec and a disk read back from libvirt compares equal to
the one designed. The secret is private (no API call reads the value back) and persistent
(ephemeral='no': a libvirtd restart keeps it, and the domain's definition needs it at every
start). Its value is set again on every define or attach: that costs one call, and a key the
storage node changed reaches the host with its next spec. XML is built with ElementTree.
"""
from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable

import libvirt

from agent.drivers.base import CephAuth, DomainDisk, DriverError, NetworkSource

#: UUIDs of Kumo's ceph secrets: uuid5(this namespace, user name).
_NAMESPACE = uuid.UUID("6b756d6f-6365-7068-7873-656372657473")


def secret_uuid(username: str) -> str:
    """The UUID of the secret of Ceph user `username` (the same on every host)."""
    return str(uuid.uuid5(_NAMESPACE, "client." + username))


def secret_xml(username: str) -> str:
    """The secret's definition: private, persistent, usage ceph named after the user."""
    el = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(el, "description").text = f"Kumo: cephx key of client.{username}"
    ET.SubElement(el, "uuid").text = secret_uuid(username)
    usage = ET.SubElement(el, "usage", type="ceph")
    ET.SubElement(usage, "name").text = f"kumo client.{username}"
    return ET.tostring(el, encoding="unicode")


def auths_of(disks: Iterable[DomainDisk]) -> dict[str, str]:
    """user -> key of every RBD disk with cephx. Two disks naming one user with different keys
    are refused: one secret cannot hold both."""
    out: dict[str, str] = {}
    for d in disks:
        src = d.source
        if not isinstance(src, NetworkSource) or src.auth is None:
            continue
        if not src.auth.key:
            raise DriverError(f"disk {d.target}: Ceph user {src.auth.username} without a key",
                              code="InvalidDevice", retryable=False)
        if out.setdefault(src.auth.username, src.auth.key) != src.auth.key:
            raise DriverError(f"two keys for Ceph user {src.auth.username}",
                              code="InvalidDevice", retryable=False)
    return out


def ensure(conn: libvirt.virConnect, auth: CephAuth) -> None:
    """The secret of auth.username exists and holds auth.key (defined when missing)."""
    raw = base64.b64decode(auth.key, validate=True)
    try:
        secret = conn.secretLookupByUUIDString(secret_uuid(auth.username))
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
            raise
        secret = conn.secretDefineXML(secret_xml(auth.username))
    secret.setValue(raw)


def ensure_for(conn: libvirt.virConnect, disks: Iterable[DomainDisk]) -> None:
    """Every secret the disks' cephx users need, before their domain is defined or a disk
    attached (libvirt looks the secret up then)."""
    for user, key in sorted(auths_of(disks).items()):
        ensure(conn, CephAuth(user, key))
