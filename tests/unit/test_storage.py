"""LocalStorage and agent.qemu_img with the real qemu-img on small temporary images."""
from __future__ import annotations

import hashlib
import http.server
import os
import socketserver
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent import qemu_img
from agent.drivers.base import DriverError
from agent.seed import read_seed
from agent.storage import ImageFetcher, LocalStorage

AMI = "ami-0123456789abcdef0"
IID = "i-0123456789abcdef0"
MiB = 1 << 20
TOKEN = "s3cret-token"


def _qcow2(path: Path, size: str = "16M", data_mib: int = 0) -> Path:
    """A qcow2 image; with data_mib > 0, that many MiB of real (non-zero) data."""
    if data_mib:
        raw = path.with_suffix(".raw")
        with open(raw, "wb") as f:
            block = os.urandom(MiB)
            for _ in range(data_mib):
                f.write(block)
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                        str(path)], check=True)
        raw.unlink()
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def base_image(tmp_path):
    (tmp_path / "src").mkdir()
    src = _qcow2(tmp_path / "src" / "base.qcow2", "32M")
    return src, _sha(src)


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "state")


def test_cache_verifies_and_makes_read_only(storage, base_image):
    src, sha = base_image
    path = storage.cached_image(AMI, src.as_uri(), sha)
    assert path.parent == storage.image_dir
    assert _sha(path) == sha
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    # A second request uses the cache, even when the source is gone.
    src.unlink()
    assert storage.cached_image(AMI, src.as_uri(), sha) == path


def test_checksum_mismatch_refused_and_nothing_cached(storage, base_image):
    src, sha = base_image
    wrong = "0" * 64
    with pytest.raises(DriverError) as e:
        storage.cached_image(AMI, src.as_uri(), wrong)
    assert e.value.code == "ImageChecksumMismatch" and e.value.retryable is False
    assert list(storage.image_dir.iterdir()) == []  # no cache entry, no partial file
    # The right checksum still works afterwards.
    assert storage.cached_image(AMI, src.as_uri(), sha).exists()


def test_image_with_backing_file_refused(storage, tmp_path, base_image):
    src, _ = base_image
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(src), "-F", "qcow2",
                    str(evil)], check=True)
    with pytest.raises(DriverError) as e:
        storage.cached_image(AMI, evil.as_uri(), _sha(evil))
    assert e.value.code == "InvalidImageBackingFile"
    assert list(storage.image_dir.iterdir()) == []


def test_raw_image_refused(storage, tmp_path):
    raw = tmp_path / "x.raw"
    raw.write_bytes(b"\0" * MiB)
    with pytest.raises(DriverError) as e:
        storage.cached_image(AMI, raw.as_uri(), _sha(raw))
    assert e.value.code == "QemuImgFailed"
    assert list(storage.image_dir.iterdir()) == []


def test_fetch_failure_is_retryable_and_leaves_nothing(storage, tmp_path):
    with pytest.raises(DriverError) as e:
        storage.cached_image(AMI, (tmp_path / "missing.qcow2").as_uri(), "1" * 64)
    assert e.value.code == "ImageFetchFailed" and e.value.retryable
    assert list(storage.image_dir.iterdir()) == []


def test_bad_ids_refused(storage, base_image):
    src, sha = base_image
    for bad in ("ami-../../etc", "../x", "ami-0123"):
        with pytest.raises(DriverError):
            storage.cached_image(bad, src.as_uri(), sha)
    with pytest.raises(DriverError) as e:
        storage.instance_dir("i-../../../etc")
    assert e.value.code == "InvalidInstanceID"


def test_concurrent_requests_download_once(tmp_path, base_image):
    src, sha = base_image
    calls = []
    inner = ImageFetcher()

    def slow_fetch(url, dest):
        calls.append(url)
        time.sleep(0.2)
        inner(url, dest)

    storage = LocalStorage(tmp_path / "state", slow_fetch)
    results, errors = [], []

    def worker():
        try:
            results.append(storage.cached_image(AMI, src.as_uri(), sha))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 8


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    seen: list = []

    def do_GET(self):  # noqa: N802
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass

    def address_string(self):  # unix sockets have no (host, port)
        return "local"


def _serve(server):
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t


def test_http_fetch_with_bearer_token(tmp_path, base_image):
    src, sha = base_image
    _Handler.body, _Handler.seen = src.read_bytes(), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _serve(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/images/{AMI}/data"
        with pytest.raises(DriverError) as e:
            LocalStorage(tmp_path / "a", ImageFetcher(token="wrong")).cached_image(AMI, url, sha)
        assert e.value.code == "ImageFetchFailed" and not e.value.retryable
        path = LocalStorage(tmp_path / "b", ImageFetcher(token=TOKEN)).cached_image(AMI, url, sha)
        assert _sha(path) == sha
        assert _Handler.seen[-1] == (f"/v1/images/{AMI}/data", f"Bearer {TOKEN}")
    finally:
        server.shutdown()
        server.server_close()


def test_controller_path_over_unix_socket(tmp_path, base_image):
    src, sha = base_image
    _Handler.body, _Handler.seen = src.read_bytes(), []
    sock = tmp_path / "ctl.sock"

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = UnixServer(str(sock), _Handler)
    _serve(server)
    try:
        fetcher = ImageFetcher(token=TOKEN, controller_url=f"unix:{sock}")
        path = LocalStorage(tmp_path / "s", fetcher).cached_image(AMI, f"/v1/images/{AMI}", sha)
        assert _sha(path) == sha
        assert _Handler.seen == [(f"/v1/images/{AMI}", f"Bearer {TOKEN}")]
    finally:
        server.shutdown()
        server.server_close()


def test_root_disk_overlay_and_grow(storage, base_image):
    src, sha = base_image
    base = storage.cached_image(AMI, src.as_uri(), sha)
    disk = storage.ensure_root_disk(IID, base, 64 * MiB)
    assert disk == storage.instance_dir(IID) / "root.qcow2"
    info = qemu_img.info(disk)
    assert info["virtual-size"] == 64 * MiB
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"
    # Asking for less never shrinks; asking for more grows.
    storage.ensure_root_disk(IID, base, 8 * MiB)
    assert qemu_img.virtual_size(disk) == 64 * MiB
    storage.ensure_root_disk(IID, base, 96 * MiB)
    assert qemu_img.virtual_size(disk) == 96 * MiB
    # A size below the image's own is raised to it.
    other = storage.ensure_root_disk("i-00000000000000001", base, MiB)
    assert qemu_img.virtual_size(other) == 32 * MiB
    assert sorted(storage.list_instance_dirs()) == ["i-00000000000000001", IID]


def test_overlay_is_a_thin_layer_over_the_base_whatever_its_size(tmp_path):
    """O(1) in the image's size by construction: the root disk is a qcow2 header pointing at the
    base, never a copy (bench/bench_root_disk.py measures the time)."""
    storage = LocalStorage(tmp_path / "state")
    big = _qcow2(tmp_path / "big.qcow2", data_mib=192)
    assert big.stat().st_size > 190 * MiB
    disk = storage.ensure_root_disk("i-00000000000000002", big, 256 * MiB)
    assert disk.stat().st_size < MiB
    info = qemu_img.info(disk, "qcow2")
    assert info["backing-filename"] == str(big)
    assert info["virtual-size"] == 256 * MiB


def test_seed_written_and_rewritten_only_on_change(storage):
    md = {"instance-id": IID, "local-hostname": "h"}
    net = {"version": 2, "ethernets": {}}
    p = storage.write_seed(IID, md, b"#cloud-config\n", net)
    assert p == storage.instance_dir(IID) / "seed.iso"
    got = read_seed(p)
    assert (got["meta-data"], got["user-data"], got["network-config"]) == (md, b"#cloud-config\n",
                                                                           net)
    inode = p.stat().st_ino
    storage.write_seed(IID, md, b"#cloud-config\n", net)
    assert p.stat().st_ino == inode  # unchanged content: not rewritten
    storage.write_seed(IID, md, b"#cloud-config\n", None)
    assert p.stat().st_ino != inode
    assert read_seed(p)["network-config"] is None


def test_remove_instance_idempotent(storage, base_image):
    src, sha = base_image
    base = storage.cached_image(AMI, src.as_uri(), sha)
    storage.ensure_root_disk(IID, base, 32 * MiB)
    storage.write_seed(IID, {"instance-id": IID}, b"", None)
    storage.console_log_path(IID).write_text("boot\n")
    storage.remove_instance(IID)
    assert not storage.instance_dir(IID).exists()
    assert storage.list_instance_dirs() == []
    storage.remove_instance(IID)  # already gone: fine
    assert base.exists()  # the shared base stays


def test_qemu_img_paths_cannot_be_options_or_protocols(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _qcow2(tmp_path / "-f", "1M")
    assert qemu_img.virtual_size("-f") == MiB  # made absolute: not an option
    (tmp_path / "json:{}").write_bytes(b"")
    with pytest.raises(qemu_img.QemuImgError):
        qemu_img.info("json:{}")  # read as a (not qcow2) file, not as the json: protocol


def test_qemu_img_info_runs_under_limits(tmp_path):
    img = _qcow2(tmp_path / "a.qcow2", "1M")
    # An address-space limit far too small for qemu-img makes it fail: the limit is applied.
    with pytest.raises(qemu_img.QemuImgError):
        qemu_img.info(img, address_space=16 * MiB)
    assert qemu_img.info(img)["format"] == "qcow2"
    with pytest.raises(qemu_img.QemuImgError) as e:
        qemu_img.info(img, "vmdk")
    assert e.value.code == "InvalidImageFormat"
