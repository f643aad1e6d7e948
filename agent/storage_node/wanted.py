"""The storage node's desired export set, persisted: the volume ids that should be served over
NBD, each with the host its attachment is for ("" when the node serves every host alike, i.e.
without per-host TLS). It is what survives a daemon or agent restart (the daemon's own state
does not), written atomically (agent/fsutil.atomic_write) so a crash leaves the old set or the
new one.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from agent.drivers.volumes import VOLUME_ID_RE
from agent.fsutil import atomic_write

log = logging.getLogger(__name__)

#: A host id as the cloud CA names hosts (the CN of their certificates).
HOST_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class WantedExports:
    """Volume id -> host in one JSON file: {"exports": [ids, sorted], "hosts": {id: host}}
    (a file without "hosts", written before hosts were kept, means host "" for all)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load_hosts(self) -> dict[str, str]:
        """The saved map; empty when there is no file. Entries that are no volume id (or whose
        host is no host id) are dropped with a warning (never passed on to QMP)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        ids = data.get("exports", []) if isinstance(data, dict) else []
        hosts = data.get("hosts", {}) if isinstance(data, dict) else {}
        hosts = hosts if isinstance(hosts, dict) else {}
        good = {}
        for v in ids:
            host = hosts.get(v, "") if isinstance(v, str) else None
            if isinstance(v, str) and VOLUME_ID_RE.fullmatch(v) and isinstance(host, str) \
                    and (host == "" or HOST_ID_RE.fullmatch(host)):
                good[v] = host
        if len(good) != len(ids):
            log.warning("%s: ignoring entries that are no volume id and host", self.path)
        return good

    def load(self) -> set[str]:
        return set(self.load_hosts())

    def save(self, wanted: dict[str, str] | set[str]) -> None:
        hosts = wanted if isinstance(wanted, dict) else {v: "" for v in wanted}
        data: dict = {"exports": sorted(hosts)}
        if any(hosts.values()):  # else exactly the format from before hosts were kept
            data["hosts"] = {v: h for v, h in sorted(hosts.items()) if h}
        body = json.dumps(data, indent=1).encode() + b"\n"
        atomic_write(self.path, lambda f: f.write(body))

    def add(self, volume_id: str, host: str = "") -> None:
        hosts = self.load_hosts()
        if hosts.get(volume_id) != host:
            hosts[volume_id] = host
            self.save(hosts)

    def discard(self, volume_id: str) -> None:
        hosts = self.load_hosts()
        if hosts.pop(volume_id, None) is not None:
            self.save(hosts)
