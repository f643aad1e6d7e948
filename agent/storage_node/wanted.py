"""The storage node's desired export set, persisted: the volume ids that should be served over
NBD. It is what survives a daemon or agent restart (the daemon's own state does not), written
atomically (agent/fsutil.atomic_write) so a crash leaves the old set or the new one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.drivers.volumes import VOLUME_ID_RE
from agent.fsutil import atomic_write

log = logging.getLogger(__name__)


class WantedExports:
    """A set of volume ids kept in one JSON file: {"exports": [ids, sorted]}."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> set[str]:
        """The saved set; empty when there is no file. Entries that are no volume id are
        dropped with a warning (never passed on to QMP)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return set()
        ids = data.get("exports", []) if isinstance(data, dict) else []
        good = {v for v in ids if isinstance(v, str) and VOLUME_ID_RE.fullmatch(v)}
        if len(good) != len(ids):
            log.warning("%s: ignoring entries that are no volume id", self.path)
        return good

    def save(self, ids: set[str]) -> None:
        body = json.dumps({"exports": sorted(ids)}, indent=1).encode() + b"\n"
        atomic_write(self.path, lambda f: f.write(body))

    def add(self, volume_id: str) -> None:
        ids = self.load()
        if volume_id not in ids:
            self.save(ids | {volume_id})

    def discard(self, volume_id: str) -> None:
        ids = self.load()
        if volume_id in ids:
            self.save(ids - {volume_id})
