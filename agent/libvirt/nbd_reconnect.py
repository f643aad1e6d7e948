"""Making a running QEMU's NBD client connect again, so it sees an export as it is now.

Why this exists: QEMU 7.2's NBD client learns an export's size only when it connects, and its
block_resize refuses anything bigger ("Cannot grow NBD nodes"). libvirt 9.0 gives an NBD disk no
reconnect-delay (no <reconnect> in an NBD <source>), so QEMU's default applies: after the storage
node re-makes an export (a hard re-export that cut the clients off, to grow the volume, or a
restart of its daemon) the client notices only when a request finds the connection dead, fails
that request and the next, and connects again on the third (measured with qemu-storage-daemon
and qemu-system-x86_64 7.2: 20 of 20 trials, 3 reads each, then block_resize to the new size
succeeded; record in controller/services/volumes.py).

Those failing requests are ours: a read of the disk's storage node through the monitor (HMP
`qemu-io`, passed through by libvirt, which marks the domain tainted "custom-monitor" in its
log). A guest request that comes first is not lost either: Kumo's volume disks have error
policy "stop", so QEMU pauses the guest and retries the request on resume.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import libvirt
import libvirt_qemu

#: libvirt's node name for a disk's protocol layer (-blockdev), from the source's index.
_NODE_RE = re.compile(r"libvirt-[0-9]{1,6}-storage")
#: Requests a reconnect takes: two fail on the dead connection, the third connects.
POKES_PER_RECONNECT = 3


def storage_node(dom_xml: str, target: str) -> str | None:
    """The block node of the network disk on `target` in a running domain's XML, or None
    (no such disk, not a network disk, or no index: not a -blockdev libvirt)."""
    for el in ET.fromstring(dom_xml).findall("devices/disk"):
        t = el.find("target")
        if t is None or t.get("dev") != target or el.get("type") != "network":
            continue
        src = el.find("source")
        index = src.get("index") if src is not None else None
        if index is None or not index.isdigit():
            return None
        node = f"libvirt-{int(index)}-storage"
        return node if _NODE_RE.fullmatch(node) else None
    return None


def network_nodes(dom_xml: str) -> list[str]:
    """The storage nodes of every NBD disk of a running domain (an RBD client needs no help:
    librbd reconnects by itself)."""
    out = []
    for el in ET.fromstring(dom_xml).findall("devices/disk"):
        t, src = el.find("target"), el.find("source")
        if (el.get("type") == "network" and t is not None and src is not None
                and src.get("protocol") == "nbd"):
            node = storage_node(dom_xml, t.get("dev", ""))
            if node is not None:
                out.append(node)
    return out


def poke(dom: libvirt.virDomain, node: str) -> None:
    """One 512-byte read of `node` through QEMU's block layer: on a dead connection it fails
    (the error goes to QEMU's log, not to the guest) and moves the client on to reconnecting;
    on a live one it is a harmless read."""
    if not _NODE_RE.fullmatch(node):
        raise ValueError(f"not a libvirt storage node name: {node!r}")
    libvirt_qemu.qemuMonitorCommand(dom, f'qemu-io {node} "read 0 512"',
                                    libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)


def reconnect(dom: libvirt.virDomain, node: str) -> None:
    """Enough requests on `node` for a client whose connection was cut to connect again."""
    for _ in range(POKES_PER_RECONNECT):
        poke(dom, node)
