"""LocalStorage: the Storage driver (agent/drivers/base.py) on the agent's state directory.

Layout under state_dir:
  images/<image_id>-<sha256>.qcow2   verified, read-only base images (one download per host)
  instances/<instance_id>/root.qcow2 qcow2 overlay on a base (O(1) to create, grown not shrunk)
  instances/<instance_id>/seed.iso   NoCloud seed (agent/seed.py)
  instances/<instance_id>/console.log  serial console, appended by libvirt
Images are fetched to a temp file, their sha256 verified and their qcow2 header checked (no
backing or data file) before an atomic rename into the cache: a bad download is never cached.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
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
_CHUNK = 1 << 20
Fetcher = Callable[[str, BinaryIO], None]


class ImageFetcher:
    """Copies an image URL into an open file.

    - `file:///abs/path`: a copy from storage the host shares.
    - `http(s)://...`: GET with the agent token as bearer token.
    - `/v1/...` (a path): GET on the controller through `controller_url` (which may be a
      `unix:/x.sock` URL, as in the lab where agents cannot route to the controller's address).
    """

    def __init__(self, token: str | None = None, controller_url: str | None = None,
                 timeout: float = 60.0) -> None:
        self.token = token
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
            with httpx.Client(timeout=self.timeout, headers=headers) as client:
                self._stream(client, url, dest)
        elif not parts.scheme and url.startswith("/") and self.controller_url:
            with transport.client(self.controller_url, self.token, self.timeout) as client:
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
        if path.exists():
            return path
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
