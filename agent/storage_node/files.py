"""The storage node's volume files: one qcow2 per volume, `<dir>/<volume id>.qcow2`, made and
grown with qemu-img (agent/qemu_img.py: argv lists, explicit formats, absolute paths). A new
volume is created under a temporary name and renamed into place, so a crash never leaves a
half-made file that looks like a volume.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from agent import qemu_img
from agent.drivers.volumes import VOLUME_ID_RE, valid_volume_id

SUFFIX = ".qcow2"
TMP_PREFIX = ".new-"


class VolumeFiles:
    """Volume files under one directory (created on first use)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def path(self, volume_id: str) -> Path:
        return self.dir / (valid_volume_id(volume_id) + SUFFIX)

    def exists(self, volume_id: str) -> bool:
        return self.path(volume_id).is_file()

    def size(self, volume_id: str) -> int:
        """The virtual size (read with --force-share: the daemon may hold the file open)."""
        return qemu_img.virtual_size(self.path(volume_id), "qcow2")

    def create(self, volume_id: str, size_bytes: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(volume_id)
        tmp = self.dir / (TMP_PREFIX + final.name)
        try:
            qemu_img.create(tmp, size_bytes, "qcow2")
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def resize(self, volume_id: str, size_bytes: int) -> None:
        """Grow a file no process holds open."""
        qemu_img.resize(self.path(volume_id), size_bytes, "qcow2")

    def delete(self, volume_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(volume_id).unlink()

    def ids(self) -> list[str]:
        """Volume ids with a file, sorted."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-len(SUFFIX)] for n in names
                      if n.endswith(SUFFIX) and VOLUME_ID_RE.fullmatch(n[:-len(SUFFIX)]))

    def drop_partial(self) -> None:
        """Remove what an interrupted create left behind."""
        with contextlib.suppress(FileNotFoundError):
            for n in os.listdir(self.dir):
                if n.startswith(TMP_PREFIX) and n.endswith(SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        (self.dir / n).unlink()
