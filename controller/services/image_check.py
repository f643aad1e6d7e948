"""Controller-side inspection of image files before they are accepted.

Checks: the detected format (by magic bytes, never by asking qemu-img to probe) equals the
declared one; no backing file; no external data file; virtual size within the configured limit.
qemu-img always runs with an explicit `-f`, a timeout and CPU/address-space limits, because a
crafted image can make it burn CPU or memory. Arguments are passed as a list (no shell).
"""
from __future__ import annotations

import hashlib
import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from controller.errors import InvalidParameter

QCOW2_MAGIC = b"QFI\xfb"
QEMU_IMG_TIMEOUT_S = 30
_CPU_LIMIT_S = 30
_AS_LIMIT = 1024 * 1024 * 1024


@dataclass(frozen=True)
class ImageFacts:
    format: str
    virtual_size: int
    size: int
    sha256: str


def detect_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    return "qcow2" if head == QCOW2_MAGIC else "raw"


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (_CPU_LIMIT_S, _CPU_LIMIT_S))
    resource.setrlimit(resource.RLIMIT_AS, (_AS_LIMIT, _AS_LIMIT))


def qemu_img_info(path: Path, fmt: str) -> dict:
    cmd = ["qemu-img", "info", "-f", fmt, "--output=json", "--", str(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=QEMU_IMG_TIMEOUT_S, check=False,
                             preexec_fn=_limits, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InvalidParameter("image inspection timed out", code="InvalidImage") from None
    if out.returncode != 0:
        msg = out.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unreadable"]
        raise InvalidParameter(f"image is not valid {fmt}: {msg[0][:200]}", code="InvalidImage")
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise InvalidParameter("image inspection failed", code="InvalidImage") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def check(path: Path, declared_format: str, max_virtual_size: int) -> ImageFacts:
    """Inspect `path`; raise InvalidParameter (code InvalidImage...) if it must not be used."""
    if not path.is_file():
        raise InvalidParameter(f"image file {path} does not exist", code="InvalidImage.NotFound")
    detected = detect_format(path)
    if detected != declared_format:
        raise InvalidParameter(f"image format is {detected}, declared {declared_format}",
                               code="InvalidImage.FormatMismatch")
    info = qemu_img_info(path, declared_format)
    if info.get("format") != declared_format:
        raise InvalidParameter("image format mismatch", code="InvalidImage.FormatMismatch")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidParameter("images with a backing file are refused",
                               code="InvalidImage.BackingFile")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file") or data.get("data-file-raw"):
        raise InvalidParameter("images with an external data file are refused",
                               code="InvalidImage.DataFile")
    vsize = int(info.get("virtual-size") or 0)
    if vsize <= 0 or vsize > max_virtual_size:
        raise InvalidParameter(f"image virtual size {vsize} is outside 1..{max_virtual_size}",
                               code="InvalidImage.VirtualSize")
    return ImageFacts(declared_format, vsize, path.stat().st_size, sha256_of(path))
