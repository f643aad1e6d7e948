"""What the lab reports: the LabStatus/HostStatus snapshot returned by `up` and `status`, and the
shell text of `lab env` (pure functions; values are shell-quoted, never templated raw)."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ProcStatus:
    name: str
    pid: int | None
    alive: bool
    answering: bool


def _serving(proc: ProcStatus | None) -> bool:
    """A process not started (None) is fine; a started one must be alive and answering."""
    return proc is None or (proc.alive and proc.answering)


@dataclass
class HostStatus:
    id: str
    netns: str
    netns_exists: bool
    address: str
    uplink_up: bool
    libvirt_uri: str
    libvirtd: ProcStatus
    agent: ProcStatus | None = None

    @property
    def ok(self) -> bool:
        return (self.netns_exists and self.uplink_up and self.libvirtd.answering
                and _serving(self.agent))


@dataclass
class StorageStatus:
    """The storage node: its namespace on the fabric and, when started, its service (API on
    `socket`, NBD on address:nbd_port)."""

    netns: str
    netns_exists: bool
    address: str
    uplink_up: bool
    nbd_port: int
    socket: str
    service: ProcStatus | None = None

    @property
    def ok(self) -> bool:
        return self.netns_exists and self.uplink_up and _serving(self.service)


@dataclass
class LabStatus:
    prefix: str
    state_dir: str
    exists: bool
    fabric_netns: str
    fabric_ok: bool
    inet_netns: str
    inet_ok: bool
    hosts: list[HostStatus] = field(default_factory=list)
    controller: ProcStatus | None = None
    storage: StorageStatus | None = None

    @property
    def ok(self) -> bool:
        sn_ok = self.storage is None or self.storage.ok
        return (self.exists and self.fabric_ok and self.inet_ok and all(h.ok for h in self.hosts)
                and _serving(self.controller) and sn_ok)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        for h, hd in zip(self.hosts, d["hosts"]):
            hd["ok"] = h.ok
        if self.storage is not None:
            d["storage"]["ok"] = self.storage.ok
        return d

    def to_text(self) -> str:
        def proc(p: ProcStatus | None) -> str:
            if p is None:
                return "not started"
            state = "answering" if p.answering else ("running" if p.alive else "down")
            return f"{state} (pid {p.pid})"

        lines = [
            f"lab {self.prefix!r} at {self.state_dir}: {'OK' if self.ok else 'NOT OK'}",
            f"  fabric {self.fabric_netns}: {'ok' if self.fabric_ok else 'missing'}",
            f"  internet {self.inet_netns}: {'ok' if self.inet_ok else 'missing'}",
            f"  controller: {proc(self.controller)}",
        ]
        for h in self.hosts:
            lines.append(
                f"  {h.id} {h.netns} {h.address}: netns {'ok' if h.netns_exists else 'missing'}, "
                f"uplink {'up' if h.uplink_up else 'down'}, libvirtd {proc(h.libvirtd)}, "
                f"agent {proc(h.agent)}"
            )
            lines.append(f"     {h.libvirt_uri}")
        sn = self.storage
        if sn is not None:
            lines.append(
                f"  storage {sn.netns} {sn.address}: netns {'ok' if sn.netns_exists else 'missing'}, "
                f"uplink {'up' if sn.uplink_up else 'down'}, node {proc(sn.service)}"
            )
            lines.append(f"     API unix:{sn.socket}, NBD {sn.address.split('/')[0]}:{sn.nbd_port}")
        keys = [(who, path) for who, path in (
            ("admin", Path(self.state_dir) / "controller" / "admin.key"),
            ("demo", Path(self.state_dir) / "demo.key")) if path.exists()]
        for who, path in keys:  # where `kumo lab env [--admin]` reads them from
            lines.append(f"  {who} API key: {path}")
        return "\n".join(lines)


def render_env(url: str, key_file: Path, account: str, lab_vars: dict[str, str] | None = None) -> str:
    """`export` lines for a shell. A missing key (controller not started yet) is reported as a
    comment instead of failing, so `eval "$(kumo lab env)"` never breaks a shell. `lab_vars`
    (KUMO_LAB_PREFIX, KUMO_LAB_STATE) let `kumo ssh` and `kumo lab` find this lab again."""
    lines = [f"export KUMO_URL={shlex.quote(url)}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted((lab_vars or {}).items())]
    try:
        key = Path(key_file).read_text().strip()
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        key = ""
    if key:
        lines.append(f"export KUMO_API_KEY={shlex.quote(key)}")
    else:
        lines.append(f"# no {account} API key yet ({key_file} missing): is the controller running?")
    return "\n".join(lines) + "\n"
