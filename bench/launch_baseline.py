"""The plain `virsh create` baseline of bench/bench_launch.py: the domain of a Kumo instance, booted
by hand on the same lab host, and the check that it is the same domain.

"The same": the very base image file (the agent's cached copy), a qcow2 overlay of the same size,
a NoCloud seed with the same contents (meta-data, user-data, network-config for the same MAC and
address), and the domain XML from agent.libvirt.designer for the same vCPUs, memory, disks and
NIC. Only the NIC's bridge cannot be Kumo's: a Kumo NIC joins its VPC's bridge (kb-<vni>), which
the agent removes with the VPC's last port, so it is gone by the time the baseline boots. The
baseline's NIC joins a bridge the baseline owns (BaselineBridges): made inside the lab host's
namespace (never the machine's own) with the VPC bridge's MTU and no other port, kept for the
whole run, removed at its end. What the baseline leaves out is Kumo's own work: the API,
scheduling, the agent's steps, the VPC dataplane (VXLAN, router, security-group firewall) and
readiness reporting.

After every baseline boot its live domain XML is compared with the last Kumo instance's, names,
paths, the tap and the bridge normalised (domain_differences): anything else that differs would
make the comparison unfair, and the benchmark counts it as a failed check.
"""
from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Callable

from bench.launch_watch import MARKER, WATCH_EVERY, HostWatcher


class BaselineBridges:
    """The baseline's bridges: one per lab host it boots on, made on first use inside that
    host's namespace, all removed by close(). The name (`benchbr` + 6 hex) is nothing the
    agent's dataplane owns (k<role>-<vni>), so the agent leaves it alone."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.name = "benchbr" + secrets.token_hex(3)
        self.made: dict[str, str] = {}  # host id -> its namespace

    def on(self, host_id: str, mtu: int) -> str:
        """The bridge in `host_id`'s namespace (made now if it is not there yet)."""
        from lab.naming import host_netns
        if host_id not in self.made:
            netns = host_netns(self.prefix, host_id)
            self.made[host_id] = netns
            _ip(netns, "link", "add", self.name, "type", "bridge")
            _ip(netns, "link", "set", self.name, "mtu", str(mtu), "up")
        return self.name

    def describe(self, mtu: int) -> str:
        return (f"bridge {self.name} (MTU {mtu}, no other port) made by the benchmark in the lab "
                f"host's namespace ({', '.join(sorted(self.made.values())) or 'not yet made'})")

    def close(self) -> None:
        for netns in self.made.values():
            subprocess.run(["ip", "-n", netns, "link", "del", self.name], capture_output=True)
        self.made.clear()


def _ip(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True, text=True)


def plain_boot(lab, spec: dict, work: Path, bridges: BaselineBridges, timeout: float = 180,
               keep: Callable[[str, Path, str], None] | None = None) -> tuple[dict, str]:
    """Boot `spec`'s domain with `virsh create` on its host; (phases in s after t=0, live XML).
    t=0 is right before virsh; done when the ready marker is on the console file. `keep(name,
    console log, live XML)` may copy what the boot left before its files are removed."""
    from agent import qemu_img, seed
    from agent.contract.v1 import NicSpec
    from agent.drivers.base import DomainNic, DomainPlan
    from agent.drivers.disks import instance_disks
    from agent.hypervisor_choice import choose_hypervisor
    from agent.libvirt.driver import LibvirtHypervisor
    host = spec["host_id"]
    uri = lab.libvirt_uri(host)
    image = Path(spec["base_image_path"])
    fake_id = "i-" + secrets.token_hex(9)[:17]
    name = f"boot-{fake_id[2:]}"
    d = work / name
    d.mkdir(parents=True)
    d.chmod(0o755)
    t_prep = time.time()
    disk = d / "root.qcow2"
    qemu_img.create_overlay(image, disk, max(spec["root_disk_bytes"],
                                             spec["image"]["virtual_size"]))
    nics = [NicSpec.model_validate(n) for n in spec["nics"]]
    # The agent's seed contents (agent/reconcile/steps.py seed_inputs), for a new instance id.
    meta: dict = {"instance-id": fake_id, "local-hostname": spec["hostname"]}
    if spec.get("ssh_authorized_keys"):
        meta["public-keys"] = list(spec["ssh_authorized_keys"])
    seed.write_seed_iso(d / "seed.iso", meta, base64.b64decode(spec["user_data_b64"]),
                        seed.network_config_v2(nics))
    bridge = bridges.on(host, spec["bridge_mtu"])
    plan = DomainPlan(name=name, vcpus=spec["vcpus"], memory_mib=spec["memory_mib"],
                      disks=instance_disks(disk, d / "seed.iso"), console_log=d / "console.log",
                      nics=tuple(DomainNic(mac=n.mac, bridge=bridge) for n in nics))
    hv = LibvirtHypervisor(uri, choose_hypervisor("auto"))
    xml = d / "domain.xml"
    xml.write_text(hv.domain_xml(plan))
    hv.close()
    prep = time.time() - t_prep
    watcher = HostWatcher(uri, name, plan.console_log, files={})
    watcher.start()
    t0 = time.time()
    seen: dict[str, float] = {}
    try:
        subprocess.run(["virsh", "-q", "-c", uri, "create", str(xml)], check=True,
                       capture_output=True, timeout=60)
        t_created = time.time()
        deadline = time.monotonic() + timeout
        while "ready marker on console" not in watcher.seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no {MARKER} within {timeout} s")
            time.sleep(WATCH_EVERY)
    finally:
        seen = watcher.finish()
        subprocess.run(["virsh", "-q", "-c", uri, "destroy", name], capture_output=True)
        if keep is not None:
            keep(f"plain-{name}", plan.console_log, watcher.xml)
        shutil.rmtree(d, ignore_errors=True)
    ph = {k: v - t0 for k, v in seen.items()}
    ph["virsh create returned"] = t_created - t0
    ph["overlay + seed + XML prepared (before t=0)"] = prep
    return ph, watcher.xml


# --- the fairness check: the two live domains must be the same domain ----------------------------
#: Attributes whose values name this one boot (host devices, terminals), not the domain's shape.
_PER_BOOT = {("interface/target", "dev"), ("interface/source", "bridge"), ("console", "tty"),
             ("domain", "id")}


def _shape(xml: str) -> Counter:
    """The live domain XML as a multiset of `path@attr=value` / `path=text` lines; the name,
    uuid, Kumo metadata and per-boot values dropped, file paths cut to their last component
    (every file of both boots has the same name in its own directory); the uuid where it is
    repeated (the SMBIOS system uuid and serial) stands as <uuid>."""
    root = ET.fromstring(xml)
    out: Counter = Counter()
    uuid = (root.findtext("uuid") or "").strip()

    def norm(value: str) -> str:
        value = value.strip()
        if uuid and value == uuid:
            return "<uuid>"
        if value.startswith("/dev/pts/"):
            return "<pty>"
        return value.rsplit("/", 1)[-1] if value.startswith("/") else value

    def walk(el: ET.Element, path: str) -> None:
        parts = path.split("/")
        for attr, value in el.attrib.items():
            if ("/".join(parts[-2:]), attr) in _PER_BOOT or (parts[-1], attr) in _PER_BOOT:
                continue
            out[f"{path}@{attr}={norm(value)}"] += 1
        if el.text and el.text.strip():
            out[f"{path}={norm(el.text)}"] += 1
        for child in el:
            if path == "domain" and child.tag in ("name", "uuid", "metadata"):
                continue
            walk(child, f"{path}/{child.tag}")

    walk(root, root.tag)
    return out


def domain_differences(kumo_xml: str, plain_xml: str) -> list[str]:
    """What the baseline's live domain has that Kumo's has not (+) and the reverse (-)."""
    a, b = _shape(kumo_xml), _shape(plain_xml)
    return sorted([f"+ {x}" for x in (b - a).elements()] + [f"- {x}" for x in (a - b).elements()])
