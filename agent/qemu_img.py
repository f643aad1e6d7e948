"""qemu-img, called safely: explicit formats, argument lists (never a shell), absolute paths (so a
name can never be read as an option or a `protocol:` / `json:` pseudo-filename), and resource
limits on `qemu-img info` (a crafted image can make it burn CPU or memory; OpenStack caps it the
same way). No agent state here: the controller can reuse it for image import checks.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

QEMU_IMG = "qemu-img"
#: Limits for `qemu-img info` on untrusted images (as nova's QEMU_IMG_LIMITS: 30 s CPU, 1 GiB AS).
INFO_CPU_SECONDS = 30
INFO_ADDRESS_SPACE = 1 << 30
ALLOWED_FORMATS = frozenset({"qcow2", "raw"})


class QemuImgError(Exception):
    """A qemu-img call failed or an image is not acceptable. `code` is stable."""

    def __init__(self, message: str, *, code: str = "QemuImgFailed", retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


def _abs(path: Path | str) -> str:
    p = Path(path)
    if not p.is_absolute():
        p = Path.cwd() / p
    return str(p)


def _format(fmt: str) -> str:
    if fmt not in ALLOWED_FORMATS:
        raise QemuImgError(f"unsupported image format {fmt!r}", code="InvalidImageFormat")
    return fmt


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise QemuImgError(f"{argv[0]} timed out after {timeout}s", code="QemuImgTimeout",
                           retryable=True) from e
    except FileNotFoundError as e:
        raise QemuImgError(f"{argv[0]} not found", code="QemuImgMissing") from e
    if proc.returncode != 0:
        raise QemuImgError(f"{' '.join(argv[-4:])}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _limited(argv: list[str], cpu_seconds: int, address_space: int) -> list[str]:
    # The prlimit tool (util-linux) sets the limits in the child only, without a Python
    # preexec_fn (unsafe in a threaded agent).
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise QemuImgError("prlimit (util-linux) is needed to run qemu-img info safely",
                           code="QemuImgMissing")
    return [prlimit, f"--cpu={cpu_seconds}", f"--as={address_space}", "--", *argv]


def info(path: Path | str, fmt: str = "qcow2", *, cpu_seconds: int = INFO_CPU_SECONDS,
         address_space: int = INFO_ADDRESS_SPACE, timeout: float = 60.0) -> dict:
    """`qemu-img info --output=json` of `path` read as `fmt`, under CPU and memory limits.
    --force-share: the image may be open by a running guest (read-only look)."""
    argv = [QEMU_IMG, "info", "--output=json", "--force-share", "-f", _format(fmt), _abs(path)]
    proc = _run(_limited(argv, cpu_seconds, address_space), timeout)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise QemuImgError(f"qemu-img info printed no JSON: {e}") from e


def virtual_size(path: Path | str, fmt: str = "qcow2") -> int:
    return int(info(path, fmt)["virtual-size"])


def check_standalone(path: Path | str, fmt: str = "qcow2") -> dict:
    """Info of an image that must stand alone (an uploaded/imported or cached base image):
    refuse a backing file (it could point at any file of the host) or an external data file."""
    data = info(path, fmt)
    if data.get("format") != fmt:
        raise QemuImgError(f"image is {data.get('format')!r}, not {fmt!r}",
                           code="InvalidImageFormat")
    if data.get("backing-filename") or data.get("full-backing-filename"):
        raise QemuImgError("image has a backing file", code="InvalidImageBackingFile")
    specific = (data.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file") or specific.get("data-file-raw"):
        raise QemuImgError("image has an external data file", code="InvalidImageDataFile")
    return data


def create_overlay(base: Path | str, overlay: Path | str, size_bytes: int | None = None,
                   *, timeout: float = 60.0) -> None:
    """A qcow2 overlay on a qcow2 base, O(1) in the base's size (size None: the base's)."""
    argv = [QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", _abs(base), "-F", "qcow2",
            _abs(overlay)]
    if size_bytes is not None:
        argv.append(str(int(size_bytes)))
    _run(argv, timeout)


def create(path: Path | str, size_bytes: int, fmt: str = "qcow2", *, timeout: float = 60.0) -> None:
    """A new empty image."""
    _run([QEMU_IMG, "create", "-q", "-f", _format(fmt), _abs(path), str(int(size_bytes))], timeout)


def resize(path: Path | str, size_bytes: int, fmt: str = "qcow2", *, timeout: float = 60.0) -> None:
    """Grow an image to `size_bytes` (qemu-img itself refuses to shrink without --shrink)."""
    _run([QEMU_IMG, "resize", "-q", "-f", _format(fmt), _abs(path), str(int(size_bytes))], timeout)
