"""LocalStorage: the Storage driver (agent/drivers/base.py) on the agent's state directory.

Layout under state_dir:
  images/<image_id>-<sha256>.qcow2   verified, read-only base images (one download per host)
  instances/<instance_id>/root.qcow2 qcow2 overlay on a base (O(1) to create, grown not shrunk)
  instances/<instance_id>/seed.iso   NoCloud seed (agent/seed.py)
  instances/<instance_id>/console.log  serial console, appended by libvirt
Images are fetched to a temp file, their sha256 verified and their qcow2 header checked (no
backing or data file) before an atomic rename into the cache: a bad download is never cached.
Cached images no accepted spec needs are pruned (prune_images) under the same per-image lock
that guards the download, the cache lookup and the creation of an overlay on the image; an
image an overlay on this host still backs onto is never pruned.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import httpx

from agent import qemu_img, seed
from agent.contract import transport
from agent.contract.v1 import INSTANCE_ID_RE
from agent.drivers.base import DriverError

IMAGE_ID_RE = re.compile(r"^ami-[0-9a-f]{17}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: A cache entry's file name: <image_id>-<sha256>.qcow2 (image_path()).
_CACHED_RE = re.compile(r"^(ami-[0-9a-f]{17})-([0-9a-f]{64})\.qcow2$")
_QCOW2_MAGIC = b"QFI\xfb"
ImageKey = tuple[str, str]  # (image_id, sha256)
_CHUNK = 1 << 20
log = logging.getLogger(__name__)
Fetcher = Callable[[str, BinaryIO], None]


class ImageFetcher:
    """Copies an image URL into an open file.

    - `file:///abs/path`: a copy from storage the host shares.
    - `http(s)://...`: GET with the agent token as bearer token.
    - `/v1/...` (a path): GET on the controller through `controller_url` (which may be a
      `unix:/x.sock` URL, as in the lab where agents cannot route to the controller's address).
    """

    def __init__(self, token: str | None = None, controller_url: str | None = None,
                 timeout: float = 60.0, tls=None) -> None:
        self.token = token
        self.tls = tls  # the host's client SSL context (auth "mtls")
        self.controller_url = controller_url
        self.timeout = timeout

    def __call__(self, url: str, dest: BinaryIO) -> None:
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise DriverError(f"file URL with a host: {url!r}", code="InvalidImageURL",
                                  retryable=False)
            with open(unquote(parts.path), "rb") as src:
                shutil.copyfileobj(src, dest, _CHUNK)
        elif parts.scheme in ("http", "https"):
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            verify = self.tls if self.tls is not None and parts.scheme == "https" else True
            with httpx.Client(timeout=self.timeout, headers=headers, verify=verify) as client:
                self._stream(client, url, dest)
        elif not parts.scheme and url.startswith("/") and self.controller_url:
            with transport.client(self.controller_url, self.token, self.timeout,
                                  tls=self.tls) as client:
                self._stream(client, url, dest)
        else:
            raise DriverError(f"unsupported image URL {url!r}", code="InvalidImageURL",
                              retryable=False)

    @staticmethod
    def _stream(client: httpx.Client, url: str, dest: BinaryIO) -> None:
        with client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise DriverError(f"GET {url}: HTTP {resp.status_code}", code="ImageFetchFailed",
                                  retryable=resp.status_code >= 500 or resp.status_code == 429)
            for chunk in resp.iter_bytes(_CHUNK):
                dest.write(chunk)


class _HashingWriter:
    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


def _translate(e: qemu_img.QemuImgError, what: str) -> DriverError:
    return DriverError(f"{what}: {e}", code=e.code, retryable=e.retryable)


def _qcow2_backing_file(path: Path) -> str | None:
    """The backing file name a qcow2 header records (None: no backing file, not a qcow2 file,
    or gone). Header: magic, version, backing_file_offset (u64), backing_file_size (u32),
    all big-endian. Raises OSError when the file exists but cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != _QCOW2_MAGIC:
                return None
            offset = int.from_bytes(head[8:16], "big")
            size = int.from_bytes(head[16:20], "big")
            if offset == 0 or size == 0 or size > 1023:
                return None
            f.seek(offset)
            name = f.read(size)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # gone meanwhile
        return None
    if len(name) != size:
        return None
    return os.fsdecode(name)


class LocalStorage:
    """Image cache, root disks and seeds on local disk."""

    def __init__(self, state_dir: Path | str, image_fetcher: Fetcher | None = None, *,
                 image_dir: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.image_dir = Path(image_dir).absolute() if image_dir else self.state_dir / "images"
        self.instances_dir = self.state_dir / "instances"
        self.fetch = image_fetcher or ImageFetcher()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # QEMU runs as an unprivileged user: it must be able to traverse to the files.
        for d in (self.image_dir, self.instances_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)
        for stale in self.image_dir.glob(".*.partial"):  # a download cut short by a crash
            stale.unlink(missing_ok=True)

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    # -- images -----------------------------------------------------------------------------

    def image_path(self, image_id: str, sha256: str) -> Path:
        if not IMAGE_ID_RE.match(image_id):
            raise DriverError(f"bad image id {image_id!r}", code="InvalidAMIID.Malformed",
                              retryable=False)
        if not SHA256_RE.match(sha256):
            raise DriverError(f"bad sha256 {sha256!r}", code="InvalidParameterValue",
                              retryable=False)
        return self.image_dir / f"{image_id}-{sha256}.qcow2"

    def cached_image(self, image_id: str, url: str, sha256: str) -> Path:
        path = self.image_path(image_id, sha256)
        # Looked up under the image's lock (uncontended but for a download or a prune): a
        # prune that re-checks who wants the image under this lock then either sees the spec
        # that asked for it or deleted it before this lookup, which then downloads it again.
        with self._lock(path.name):  # concurrent requests for one image: one download
            if path.exists():
                return path
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial",
                                       dir=self.image_dir)
            try:
                with os.fdopen(fd, "wb") as f:
                    writer = _HashingWriter(f)
                    try:
                        self.fetch(url, writer)  # type: ignore[arg-type]
                    except DriverError:
                        raise
                    except (OSError, httpx.HTTPError) as e:
                        raise DriverError(f"fetching {image_id} from {url}: {e}",
                                          code="ImageFetchFailed", retryable=True) from e
                    f.flush()
                    os.fsync(f.fileno())
                got = writer.sha.hexdigest()
                if got != sha256:
                    raise DriverError(f"{image_id}: sha256 {got} does not match {sha256} "
                                      f"({writer.size} bytes from {url})",
                                      code="ImageChecksumMismatch", retryable=False)
                try:
                    qemu_img.check_standalone(tmp, "qcow2")
                except qemu_img.QemuImgError as e:
                    raise _translate(e, f"image {image_id}") from e
                os.chmod(tmp, 0o444)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return path

    def cached_images(self) -> list[Path]:
        return sorted(self.image_dir.glob("ami-*.qcow2"))

    def _base_lock(self, base: Path) -> threading.Lock | contextlib.nullcontext:
        """The per-image lock of `base` when it is a cache entry (else nothing to guard)."""
        base = Path(base).absolute()
        if base.parent == self.image_dir and _CACHED_RE.match(base.name):
            return self._lock(base.name)
        return contextlib.nullcontext()

    def prune_images(self, keep: Collection[ImageKey], *,
                     recheck: Callable[[], Collection[ImageKey]] | None = None) -> list[ImageKey]:
        """Delete the cached images not in `keep` ((image_id, sha256) pairs); return those deleted.

        Each one is deleted under its per-image lock, taken without waiting: an image being
        looked up, downloaded or overlaid right now is skipped (the next prune sees it again).
        Under that lock the image is kept when `recheck()` (the caller's wanted set, read
        afresh) names it, or when an overlay (or one being written) under instances/ backs
        onto it. Downloads in progress are hidden .partial files, never touched here (the
        constructor removes those a crash left behind). Files that are not cache entries
        (other names) are left alone."""
        keep = set(keep)
        candidates = []
        for p in self.cached_images():
            m = _CACHED_RE.match(p.name)
            if m and (m[1], m[2]) not in keep:
                candidates.append((p, (m[1], m[2])))
        removed: list[ImageKey] = []
        for path, key in candidates:
            lock = self._lock(path.name)
            if not lock.acquire(blocking=False):
                continue  # a download, lookup or overlay creation holds it: in use
            try:
                if recheck is not None and key in set(recheck()):
                    continue
                try:
                    if path.resolve() in self._backing_files():
                        continue
                except OSError as e:  # an overlay we cannot read may back onto it: keep it
                    log.warning("not pruning %s: reading overlays: %s", path.name, e)
                    continue
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(key)
            finally:
                lock.release()
        return removed

    def _backing_files(self) -> set[Path]:
        """Resolved paths of the backing files of the disks in instance directories (root.qcow2
        and one being created, .root.qcow2.partial), read from their qcow2 headers: no qemu-img
        process per overlay."""
        out: set[Path] = set()
        if not self.instances_dir.is_dir():
            return out
        for d in self.instances_dir.iterdir():
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if not f.name.endswith((".qcow2", ".partial")):
                    continue  # seed.iso, console.log: never overlays
                backing = _qcow2_backing_file(f)
                if backing:
                    b = Path(backing)
                    out.add((b if b.is_absolute() else f.parent / b).resolve())
        return out

    # -- instances --------------------------------------------------------------------------

    def instance_dir(self, instance_id: str) -> Path:
        if not INSTANCE_ID_RE.match(instance_id):
            raise DriverError(f"bad instance id {instance_id!r}", code="InvalidInstanceID",
                              retryable=False)
        return self.instances_dir / instance_id

    def _make_instance_dir(self, instance_id: str) -> Path:
        d = self.instance_dir(instance_id)
        d.mkdir(exist_ok=True)
        d.chmod(0o711)
        return d

    def root_disk_path(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "root.qcow2"

    def seed_path(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "seed.iso"

    def console_log_path(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "console.log"

    def ensure_root_disk(self, instance_id: str, base: Path, size_bytes: int) -> Path:
        if size_bytes <= 0:
            raise DriverError(f"root disk size {size_bytes}", code="InvalidParameterValue",
                              retryable=False)
        path = self.root_disk_path(instance_id)
        with self._lock(f"disk:{instance_id}"):
            self._make_instance_dir(instance_id)
            try:
                if not path.exists():
                    with self._base_lock(base):  # no prune while the overlay is made on it
                        base_size = qemu_img.virtual_size(base, "qcow2")
                        tmp = path.with_name(".root.qcow2.partial")
                        tmp.unlink(missing_ok=True)
                        qemu_img.create_overlay(base, tmp, max(base_size, size_bytes))
                        os.replace(tmp, path)
                else:
                    current = qemu_img.virtual_size(path, "qcow2")
                    if size_bytes > current:  # grown, never shrunk
                        try:
                            qemu_img.resize(path, size_bytes, "qcow2")
                        except qemu_img.QemuImgError as e:
                            # Typically the image is in use by a running guest (write lock):
                            # it works once the domain is stopped. (A running guest's disk is
                            # grown live by the hypervisor first: RootDisk, resize_disk.)
                            raise DriverError(f"growing root disk of {instance_id}: {e}",
                                              code="RootDiskResizeFailed", retryable=True) from e
                        # The image must say so now (info reads it with --force-share).
                        grown = qemu_img.virtual_size(path, "qcow2")
                        if grown < size_bytes:
                            raise DriverError(f"root disk of {instance_id} is {grown} bytes "
                                              f"after growing it to {size_bytes}",
                                              code="RootDiskResizeFailed", retryable=True)
            except qemu_img.QemuImgError as e:
                raise _translate(e, f"root disk of {instance_id}") from e
        return path

    def write_seed(self, instance_id: str, meta_data: dict, user_data: bytes,
                   network_config: dict | None) -> Path:
        path = self.seed_path(instance_id)
        with self._lock(f"seed:{instance_id}"):
            self._make_instance_dir(instance_id)
            if path.exists():
                try:
                    old = seed.read_seed(path)
                    if (old["meta-data"] == meta_data and old["user-data"] == bytes(user_data)
                            and old["network-config"] == network_config):
                        return path
                except Exception:  # unreadable seed: rewrite it
                    pass
            seed.write_seed_iso(path, meta_data, user_data, network_config)
        return path

    def remove_instance(self, instance_id: str) -> None:
        d = self.instance_dir(instance_id)
        with self._lock(f"disk:{instance_id}"), self._lock(f"seed:{instance_id}"):
            try:
                shutil.rmtree(d)
            except FileNotFoundError:  # already gone: deleting is idempotent
                pass

    def list_instance_dirs(self) -> list[str]:
        if not self.instances_dir.is_dir():
            return []
        return sorted(p.name for p in self.instances_dir.iterdir()
                      if p.is_dir() and INSTANCE_ID_RE.match(p.name))
