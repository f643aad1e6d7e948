"""Crash-safe file replacement for the agent's state and seeds, and the controller's and agent's
keys and certificates: readers (and a guest reading a seed) see either the old file or the
complete new one, never half of it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], None], mode: int = 0o600) -> None:
    """Write through `write(f)` into a temp file beside `path`, fsync it, rename it over `path`,
    and fsync the directory so the rename itself survives a power cut. The file has `mode` from
    its first byte (a private key is never readable by others, not even half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """atomic_write of `data`."""
    atomic_write(path, lambda f: f.write(data), mode)
