"""The storage node's volume files: one qcow2 per volume, `<dir>/<volume id>.qcow2`, made and
grown with qemu-img (agent/qemu_img.py: argv lists, explicit formats, absolute paths). A new
volume is created under a temporary name and renamed into place, so a crash never leaves a
half-made file that looks like a volume.

Snapshots are qcow2 internal snapshots inside the volume's own file, named
"<snapshot id>:<size in bytes>" (qcow2 keeps no size a tool can read back, and a volume can grow
after its snapshot). What a snapshot stores (for billing) is measured with `qemu-img measure -l`
(snapshot_stored_bytes). A deleted volume whose file still holds snapshots is moved to
`<dir>/../holders/<volume id>.<a snapshot id>.qcow2` (a rename: atomic), out of sight of the
volume listing, until its last snapshot is deleted.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Optional

from agent import qemu_img
from agent.drivers.volumes import (SNAPSHOT_ID_RE, VOLUME_ID_RE, valid_size, valid_snapshot_id,
                                   valid_volume_id)

SUFFIX = ".qcow2"
TMP_PREFIX = ".new-"
#: The qcow2 snapshot name: "<snapshot id>:<size in bytes>".
SNAPSHOT_NAME_RE = re.compile(rf"({SNAPSHOT_ID_RE.pattern}):([1-9][0-9]{{0,18}})")
HOLDER_RE = re.compile(rf"({VOLUME_ID_RE.pattern})\.({SNAPSHOT_ID_RE.pattern}){re.escape(SUFFIX)}")


def snapshot_name(snapshot_id: str, size_bytes: int) -> str:
    return f"{valid_snapshot_id(snapshot_id)}:{valid_size(size_bytes, 1 << 62)}"


def parse_snapshot_name(name: object) -> Optional[tuple[str, int]]:
    """(snapshot id, size) of a qcow2 snapshot name Kumo made; None for any other."""
    m = SNAPSHOT_NAME_RE.fullmatch(name) if isinstance(name, str) else None
    return (m.group(1), int(m.group(2))) if m else None


def _image_opts(path: Path) -> str:
    """--image-opts for a qcow2 file: the format is never probed (',' doubled as QEMU wants)."""
    return "driver=qcow2,file.driver=file,file.filename=" + str(path).replace(",", ",,")


def parse_measure(text: str) -> int:
    """The bytes of `qemu-img measure --output=json`'s "required": what a qcow2 copy of the
    measured image (here: one snapshot) needs, i.e. its allocated data plus qcow2 metadata."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise qemu_img.QemuImgError(f"qemu-img measure printed no JSON: {e}") from e
    required = data.get("required") if isinstance(data, dict) else None
    if isinstance(required, bool) or not isinstance(required, int) or required < 0:
        raise qemu_img.QemuImgError(f"qemu-img measure gave no byte count: {text[:200]!r}")
    return required


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

    # -- snapshots ------------------------------------------------------------------------------
    @property
    def holders_dir(self) -> Path:
        return self.dir.parent / "holders"

    def holders(self) -> list[tuple[str, Path]]:
        """(volume id, path) of every holder file (a deleted volume kept for its snapshots)."""
        try:
            names = sorted(os.listdir(self.holders_dir))
        except FileNotFoundError:
            return []
        return [(m.group(1), self.holders_dir / n) for n in names if (m := HOLDER_RE.fullmatch(n))]

    @staticmethod
    def snapshot_names(path: Path) -> list[str]:
        """The qcow2 snapshot names in `path` (read with --force-share: the daemon may hold the
        file open; its snapshot table is only rewritten by snapshot verbs, which the backend
        never runs concurrently with this)."""
        return [str(s.get("name")) for s in qemu_img.info(path, "qcow2").get("snapshots") or []]

    @staticmethod
    def snapshot_create(path: Path, name: str) -> None:
        """An internal snapshot of a file no process holds open."""
        qemu_img._run([qemu_img.QEMU_IMG, "snapshot", "-q", "--image-opts", "-c", name,
                       _image_opts(Path(qemu_img._abs(path)))], 60.0)

    @staticmethod
    def snapshot_stored_bytes(path: Path, name: str, *, timeout: float = 60.0) -> int:
        """The bytes snapshot `name` of `path` stores: `qemu-img measure -O qcow2 -l` (a walk
        of the snapshot's L1/L2 tables, no data read; ~5 ms for a 1 GiB volume). The file may
        be open in the daemon, even with clients writing: file.locking=off, as `-U` elsewhere
        (measure has no -U), and safe for the same reason as create_from_snapshot's read: a
        snapshot's clusters are never rewritten while it exists."""
        opts = _image_opts(Path(qemu_img._abs(path))) + ",file.locking=off"
        proc = qemu_img._run([qemu_img.QEMU_IMG, "measure", "--output=json", "-O", "qcow2",
                              "-l", "snapshot.name=" + name.replace(",", ",,"),
                              "--image-opts", opts], timeout)
        return parse_measure(proc.stdout)

    @staticmethod
    def snapshot_delete(path: Path, name: str) -> None:
        """Delete an internal snapshot of a file no process holds open (its clusters no longer
        shared are freed)."""
        qemu_img._run([qemu_img.QEMU_IMG, "snapshot", "-q", "--image-opts", "-d", name,
                       _image_opts(Path(qemu_img._abs(path)))], 60.0)

    def create_from_snapshot(self, volume_id: str, size_bytes: int, source: Path, name: str,
                             *, timeout: float = 3600.0) -> None:
        """A new volume file with the content of snapshot `name` of `source`, `size_bytes` big
        (>= the snapshot's size, checked by the caller). Copied with `qemu-img convert -U -l`
        (zeros stay sparse), made under a temporary name and renamed into place.

        -U (no lock) because the daemon may hold `source` open and writing: reading a snapshot
        from under it is safe, as the snapshot's clusters are copy-on-write (refcount > 1 or
        owned by the snapshot alone) and never rewritten nor freed while the snapshot exists,
        and the snapshot table is only changed by snapshot verbs, which the backend's lock keeps
        from running meanwhile. The converted image has the source's current virtual size
        (which may be larger than the snapshot's: all zeros beyond it), so it is then resized to
        exactly `size_bytes`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(volume_id)
        tmp = self.dir / (TMP_PREFIX + final.name)
        try:
            qemu_img._run([qemu_img.QEMU_IMG, "convert", "-q", "-U", "-f", "qcow2",
                           "-l", "snapshot.name=" + name.replace(",", ",,"), "-O", "qcow2",
                           qemu_img._abs(source), qemu_img._abs(tmp)], timeout)
            if qemu_img.virtual_size(tmp, "qcow2") != size_bytes:
                qemu_img._run([qemu_img.QEMU_IMG, "resize", "-q", "--shrink", "-f", "qcow2",
                               qemu_img._abs(tmp), str(int(size_bytes))], 60.0)
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def hold(self, volume_id: str, tag: str) -> Path:
        """Move a volume's file out of the volume set into holders/ (named with `tag`, a
        snapshot id it holds, so two generations of one volume id never collide)."""
        self.holders_dir.mkdir(parents=True, exist_ok=True)
        dest = self.holders_dir / f"{valid_volume_id(volume_id)}.{valid_snapshot_id(tag)}{SUFFIX}"
        os.replace(self.path(volume_id), dest)
        return dest

    def drop_partial(self) -> None:
        """Remove what an interrupted create left behind."""
        with contextlib.suppress(FileNotFoundError):
            for n in os.listdir(self.dir):
                if n.startswith(TMP_PREFIX) and n.endswith(SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        (self.dir / n).unlink()
