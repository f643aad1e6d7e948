"""The image manifest: the JSON file written beside each cached image, and its loading/saving."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_SCHEMA = 1


@dataclass
class Manifest:
    """What a consumer needs to know about a built image. ``path`` is the qcow2 file (not stored)."""

    name: str
    file: str  # image file name, relative to the manifest's directory
    architecture: str  # "x86_64"
    format: str  # "qcow2"
    virtual_size: int  # bytes the guest sees
    size: int  # bytes of the qcow2 file
    sha256: str  # of the qcow2 file
    boot_mode: str  # "bios": SeaBIOS -> MBR -> syslinux on the FAT16 /boot partition
    min_ram_mib: int
    ready_marker: str  # constant prefix of the ttyS0 line printed when the guest finished booting
    recipe_version: str
    recipe_hash: str
    build_time: str  # ISO 8601 UTC, end of the build
    build_seconds: float
    kernel_version: str = ""
    root_device: str = ""  # how the kernel finds its root, for humans
    packages: dict[str, str] = field(default_factory=dict)  # Debian package -> version used
    schema: int = MANIFEST_SCHEMA
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, manifest_path: Path) -> "Manifest":
        data = json.loads(Path(manifest_path).read_text())
        known = {f for f in cls.__dataclass_fields__ if f != "path"}
        m = cls(**{k: v for k, v in data.items() if k in known})
        m.path = Path(manifest_path).parent / m.file
        return m

    def write(self, manifest_path: Path) -> None:
        """Write atomically (temp file + rename) so a reader never sees half a manifest."""
        manifest_path = Path(manifest_path)
        tmp = manifest_path.with_name(f".{manifest_path.name}.tmp")
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, manifest_path)
