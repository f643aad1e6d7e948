"""The lab's state file `<state_dir>/lab.json`: what `up` made (hosts, namespaces, PIDs, sockets).

Written atomically (temp file + rename, mode 0600) after every step that creates something, so that
`down` can undo a half-finished `up`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError

STATE_VERSION = 1
STATE_FILE = "lab.json"


@dataclass
class ProcRecord:
    """A process the lab started. start_time (clock ticks since boot, /proc/PID/stat field 22) guards
    against PID reuse: a PID only counts as ours while its start time still matches."""

    name: str
    pid: int
    start_time: int
    argv: list[str]
    log: str
    netns: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProcRecord":
        return cls(
            name=str(d["name"]),
            pid=int(d["pid"]),
            start_time=int(d["start_time"]),
            argv=[str(a) for a in d.get("argv", [])],
            log=str(d.get("log", "")),
            netns=d.get("netns"),
        )


@dataclass
class LabState:
    prefix: str
    hosts: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)  # every namespace up created (or began to)
    processes: dict[str, ProcRecord] = field(default_factory=dict)
    sockets: dict[str, str] = field(default_factory=dict)  # e.g. "libvirtd-h1" -> path
    # System runtime dirs (/run/netns, ...) that did not exist before the first up: down removes
    # them again when empty.
    runtime_dirs_created: list[str] = field(default_factory=list)
    listen: str = ""  # the controller's HOST:PORT as started by up (status/env use it)
    version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["processes"] = {k: asdict(v) for k, v in self.processes.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabState":
        if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
            raise LabError("InvalidLabState", f"unsupported lab state version: {d.get('version')!r}")
        return cls(
            prefix=str(d["prefix"]),
            hosts=[str(h) for h in d.get("hosts", [])],
            netns=[str(n) for n in d.get("netns", [])],
            processes={k: ProcRecord.from_dict(v) for k, v in d.get("processes", {}).items()},
            sockets={str(k): str(v) for k, v in d.get("sockets", {}).items()},
            runtime_dirs_created=[str(p) for p in d.get("runtime_dirs_created", [])],
            listen=str(d.get("listen", "")),
        )

    def note_netns(self, name: str) -> None:
        if name not in self.netns:
            self.netns.append(name)


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def load(state_dir: Path) -> LabState | None:
    p = state_path(state_dir)
    try:
        raw = p.read_text()
    except FileNotFoundError:
        return None
    try:
        return LabState.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as e:
        raise LabError("InvalidLabState", f"cannot parse {p}: {e}") from e


def save(state_dir: Path, state: LabState) -> None:
    p = state_path(state_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, p)


def remove(state_dir: Path) -> None:
    for p in (state_path(state_dir), state_path(state_dir).with_name(STATE_FILE + ".tmp")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
