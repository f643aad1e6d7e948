"""Image capture (contract extension "image-capture"): an instance's root disk flattened into one
standalone qcow2 file the controller downloads to make a new image.

Layout under state_dir:
  captures/<instance_id>/<image_id>.qcow2       the finished copy (read-only)
  captures/<instance_id>/<image_id>.json        its facts: state, size, virtual size, sha256, error
  captures/<instance_id>/.<image_id>.partial    a copy being written (removed on failure/restart)

The copy is `qemu-img convert -O qcow2` of the root overlay: the chain (overlay -> cached base)
is read through and written as one image with no backing file, so the result stands alone and
later deletion of the base from the host cache does not matter. Not compressed (-c would make
the file smaller but the copy several times slower under the lab's CPU budget).

Consistency: the controller stops the instance first (the default, "reboot" semantics); the
agent then refuses to copy a running domain unless the request says `allow_running` (the
controller's `no_reboot`). With allow_running the disk is read with --force-share while the
guest may write to it: the copy is crash-consistent at best (as after a power cut) and may even
catch a half-written cluster; a guest that synced and went quiet is the best case. A truly
consistent live copy would need a QMP blockdev-backup job; not done here.

Each capture runs in its own thread; its state lives in memory and in the .json file, so a
restarted agent still serves finished copies (a copy cut short by a restart is reported failed).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from agent import qemu_img
from agent.contract.v1 import INSTANCE_ID_RE, CaptureObserved, ErrorInfo

log = logging.getLogger(__name__)

IMAGE_ID_RE = re.compile(r"^ami-[0-9a-f]{17}$")
#: convert(src, dst, force_share): write a standalone qcow2 at dst from the root disk src.
Converter = Callable[[Path, Path, bool], None]
CONVERT_TIMEOUT_S = 3600.0


class CaptureError(Exception):
    """A capture request the agent refuses: status, stable code, message."""

    def __init__(self, status: int, code: str, message: str, retryable: bool = False):
        super().__init__(message)
        self.status, self.code, self.message, self.retryable = status, code, message, retryable


def qemu_convert(src: Path, dst: Path, force_share: bool) -> None:
    """The real copy: qemu-img convert to a qcow2 with no backing file (argument list, absolute
    paths, explicit formats)."""
    argv = [qemu_img.QEMU_IMG, "convert", "-q", "-f", "qcow2", "-O", "qcow2"]
    if force_share:
        argv.append("-U")
    argv += [str(Path(src).absolute()), str(Path(dst).absolute())]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as e:
        raise qemu_img.QemuImgError(f"qemu-img convert timed out after {CONVERT_TIMEOUT_S}s",
                                    code="QemuImgTimeout", retryable=True) from e
    except FileNotFoundError as e:
        raise qemu_img.QemuImgError("qemu-img not found", code="QemuImgMissing") from e
    if proc.returncode != 0:
        raise qemu_img.QemuImgError(f"qemu-img convert: {proc.stderr.strip() or proc.returncode}",
                                    code="CaptureCopyFailed", retryable=True)


def fake_convert(src: Path, dst: Path, force_share: bool) -> None:
    """The fake drivers' copy: their root disks are placeholder text files, so the "copy" is a
    small real qcow2 (64 MiB virtual, empty) whose first bytes are free: the controller checks
    it as it checks any image. Used by agents with driver=fake."""
    if not Path(src).exists():
        raise qemu_img.QemuImgError(f"{src} does not exist", code="RootDiskMissing")
    qemu_img.create(dst, 64 << 20, "qcow2")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Captures:
    """The host's captures. `root_disk(instance_id)` names an instance's root disk file."""

    def __init__(self, state_dir: Path | str, root_disk: Callable[[str], Path],
                 convert: Converter | None = None) -> None:
        self.dir = Path(state_dir).absolute() / "captures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root_disk = root_disk
        self.convert = convert or qemu_convert
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], threading.Thread] = {}
        for stale in self.dir.glob("*/.*.partial"):  # cut short by a restart
            stale.unlink(missing_ok=True)

    # -- paths ------------------------------------------------------------------------------
    def _paths(self, instance_id: str, image_id: str) -> tuple[Path, Path, Path]:
        if not INSTANCE_ID_RE.match(instance_id):
            raise CaptureError(400, "InvalidInstanceID.Malformed", f"bad id {instance_id!r}")
        if not IMAGE_ID_RE.match(image_id):
            raise CaptureError(400, "InvalidAMIID.Malformed", f"bad image id {image_id!r}")
        d = self.dir / instance_id
        return d / f"{image_id}.qcow2", d / f"{image_id}.json", d / f".{image_id}.partial"

    def _write_state(self, meta: Path, obs: CaptureObserved) -> None:
        tmp = meta.with_name(meta.name + ".tmp")
        tmp.write_text(obs.model_dump_json())
        os.replace(tmp, meta)

    # -- operations -------------------------------------------------------------------------
    def start(self, instance_id: str, image_id: str, *, running: bool,
              allow_running: bool) -> CaptureObserved:
        """Start a capture (or answer the one already known for image_id). `running`: the
        domain runs now."""
        final, meta, partial = self._paths(instance_id, image_id)
        with self._lock:
            cur = self._get_locked(instance_id, image_id)
            if cur is not None and cur.state != "failed":
                return cur
            if running and not allow_running:
                raise CaptureError(409, "InstanceRunning",
                                   f"instance {instance_id} is running: stop it first or "
                                   "allow a crash-consistent copy (allow_running)")
            src = self.root_disk(instance_id)
            if not src.exists():
                raise CaptureError(404, "InstanceNotFound",
                                   f"instance {instance_id} has no root disk on this host")
            final.parent.mkdir(parents=True, exist_ok=True)
            meta.unlink(missing_ok=True)
            obs = CaptureObserved(instance_id=instance_id, image_id=image_id, state="pending")
            t = threading.Thread(target=self._copy, name=f"capture-{image_id}", daemon=True,
                                 args=(instance_id, image_id, src, running and allow_running))
            self._running[(instance_id, image_id)] = t
            t.start()
            return obs

    def _copy(self, instance_id: str, image_id: str, src: Path, force_share: bool) -> None:
        final, meta, partial = self._paths(instance_id, image_id)
        try:
            partial.unlink(missing_ok=True)
            self.convert(src, partial, force_share)
            facts = qemu_img.check_standalone(partial, "qcow2")
            obs = CaptureObserved(instance_id=instance_id, image_id=image_id, state="available",
                                  size=partial.stat().st_size,
                                  virtual_size=int(facts["virtual-size"]),
                                  sha256=_sha256(partial))
            os.chmod(partial, 0o444)
            os.replace(partial, final)
        except Exception as e:  # reported in the capture's state, never raised in a thread
            partial.unlink(missing_ok=True)
            code = getattr(e, "code", "CaptureFailed")
            log.warning("capture %s of %s failed: %s", image_id, instance_id, e)
            obs = CaptureObserved(instance_id=instance_id, image_id=image_id, state="failed",
                                  error=ErrorInfo(code=code, message=str(e)[:500],
                                                  retryable=bool(getattr(e, "retryable", True))))
        with self._lock:
            if (instance_id, image_id) in self._running:  # not deleted meanwhile
                self._write_state(meta, obs)
                self._running.pop((instance_id, image_id), None)
            else:
                final.unlink(missing_ok=True)

    def _get_locked(self, instance_id: str, image_id: str) -> CaptureObserved | None:
        final, meta, partial = self._paths(instance_id, image_id)
        if (instance_id, image_id) in self._running:
            return CaptureObserved(instance_id=instance_id, image_id=image_id, state="pending")
        try:
            return CaptureObserved.model_validate_json(meta.read_text())
        except FileNotFoundError:
            if partial.exists() or final.exists():  # no facts: a copy cut short
                return CaptureObserved(instance_id=instance_id, image_id=image_id,
                                       state="failed",
                                       error=ErrorInfo(code="CaptureInterrupted",
                                                       message="the agent restarted mid-copy"))
            return None
        except ValueError:
            return CaptureObserved(instance_id=instance_id, image_id=image_id, state="failed",
                                   error=ErrorInfo(code="CaptureInterrupted",
                                                   message="unreadable capture state"))

    def get(self, instance_id: str, image_id: str) -> CaptureObserved:
        with self._lock:
            obs = self._get_locked(instance_id, image_id)
        if obs is None:
            raise CaptureError(404, "CaptureNotFound",
                               f"no capture {image_id} of {instance_id} on this host")
        return obs

    def file(self, instance_id: str, image_id: str) -> tuple[Path, str]:
        """The finished file and its sha256."""
        obs = self.get(instance_id, image_id)
        if obs.state != "available" or obs.sha256 is None:
            raise CaptureError(409, "CaptureNotReady",
                               f"capture {image_id} of {instance_id} is {obs.state}",
                               retryable=obs.state == "pending")
        final, _, _ = self._paths(instance_id, image_id)
        return final, obs.sha256

    def delete(self, instance_id: str, image_id: str) -> None:
        """Forget a capture and remove its files (absent: a no-op; a copy still running is
        discarded when it ends)."""
        final, meta, partial = self._paths(instance_id, image_id)
        with self._lock:
            self._running.pop((instance_id, image_id), None)
            for p in (final, meta):
                p.unlink(missing_ok=True)
            d = final.parent
            if d.is_dir() and not any(d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
