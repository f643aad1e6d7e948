"""Disk hot-plug on one libvirt domain: attach and detach with the Hypervisor device rules
(agent/drivers/base.py, checks shared with the fake in agent/drivers/disks.py).

Both definitions are read before anything changes: the persistent one (what the next start
boots) and, while the domain runs, the live one (what the guest has now). A live detach is
asynchronous on purpose (virDomainDetachDeviceAlias): the guest decides when it lets go, so the
wait is ours, bounded by the caller's timeout, not libvirt's fixed one. libvirt errors pass
through; the driver translates them.
"""
from __future__ import annotations

import time

import libvirt

from agent.drivers.base import DeviceDetachTimeout, DomainDisk
from agent.drivers.disks import on_target, plan_attach
from agent.libvirt.disks import disk_alias, from_domain_xml, to_xml_disk

_CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE


def _definitions(dom: libvirt.virDomain) -> tuple[tuple[DomainDisk, ...], str | None]:
    """(the persistent definition's disks, the live XML or None when not running)."""
    config = from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return config, (dom.XMLDesc(0) if dom.isActive() else None)


def attach(dom: libvirt.virDomain, disk: DomainDisk) -> None:
    """Attach `disk` where it is missing: the definition, and the guest when it runs."""
    for attempt in (1, 2):
        config, live_xml = _definitions(dom)
        live = from_domain_xml(live_xml) if live_xml is not None else None
        into_config, into_live = plan_attach(config, live, disk)
        flags = (_CONFIG if into_config else 0) | (_LIVE if into_live else 0)
        if not flags:
            return
        try:
            dom.attachDeviceFlags(to_xml_disk(disk).to_xml(), flags)
            return
        except libvirt.libvirtError as e:
            # The domain stopped (or started) between the read and the attach: decide again.
            if attempt == 2 or e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise


def _released(dom: libvirt.virDomain, target: str) -> bool:
    # A domain that stopped has let go of everything; libvirt then shows the definition.
    return not dom.isActive() or on_target(from_domain_xml(dom.XMLDesc(0)), target) is None


def _unplug(dom: libvirt.virDomain, live_xml: str, target: str, timeout: float,
            poll_interval: float) -> bool:
    """Ask the running guest to release `target`; True once it has, False at the timeout."""
    alias = disk_alias(live_xml, target)
    try:
        if alias is not None:
            dom.detachDeviceAlias(alias, _LIVE)
        else:  # no alias (older libvirt): detach by the disk's own description
            dom.detachDeviceFlags(to_xml_disk(on_target(from_domain_xml(live_xml),
                                                        target)).to_xml(), _LIVE)
    except libvirt.libvirtError:
        # An earlier request may still be pending with the guest (QEMU refuses a second one);
        # only a device that is still there after the wait makes this a failure.
        if _released(dom, target):
            return True
        raise
    deadline = time.monotonic() + max(0.0, timeout)
    while not _released(dom, target):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_interval)
    return True


def detach(dom: libvirt.virDomain, target: str, *, force: bool, timeout: float,
           poll_interval: float) -> None:
    """Detach the disk on `target` from the guest (waiting for it) and from the definition."""
    config, live_xml = _definitions(dom)
    if live_xml is not None and on_target(from_domain_xml(live_xml), target) is not None:
        if not _unplug(dom, live_xml, target, timeout, poll_interval) and not force:
            raise DeviceDetachTimeout(f"{dom.name()}: the guest did not release {target} "
                                      f"within {timeout} s")
    disk = on_target(config, target)
    if disk is not None:
        dom.detachDeviceFlags(to_xml_disk(disk).to_xml(), _CONFIG)
