"""Pruning the host's image cache (LocalStorage.prune_images and the reconcile loop's call of it),
with the real LocalStorage and qemu-img on small temporary images: what goes, what stays (images
of accepted specs, running or stopped; images an overlay backs onto; downloads in progress; files
that are not cache entries) and the race with a spec accepted while a prune runs."""
from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.contract.v1 import InstanceSpec
from agent.drivers.fake import FakeHypervisor
from agent.reconcile.loop import Reconciler
from agent.reconcile.steps import Drivers
from agent.state import StateStore
from agent.storage import ImageFetcher, LocalStorage

AMI_A, AMI_B, AMI_C = (f"ami-{n:017x}" for n in (0xA, 0xB, 0xC))
IID_1, IID_2 = "i-00000000000000001", "i-00000000000000002"
MiB = 1 << 20


def _image(tmp_path: Path, name: str, size_mib: int) -> tuple[Path, str]:
    """A small qcow2 image (distinct sizes make distinct sha256s) and its sha256."""
    src = tmp_path / "src" / f"{name}.qcow2"
    src.parent.mkdir(exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), f"{size_mib}M"],
                   check=True)
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.fixture
def images(tmp_path):
    """{image id: (source file, sha256)} for three images."""
    return {ami: _image(tmp_path, ami, size) for ami, size in ((AMI_A, 16), (AMI_B, 24),
                                                               (AMI_C, 32))}


class CountingFetcher:
    """ImageFetcher that counts fetches and can be held mid-download."""

    def __init__(self) -> None:
        self.fetches: list[str] = []
        self.hold: threading.Event | None = None  # set: let the held download finish
        self.started = threading.Event()
        self._inner = ImageFetcher()

    def __call__(self, url, dest):
        self.fetches.append(url)
        if self.hold is not None:
            data = Path(url.removeprefix("file://")).read_bytes()
            dest.write(data[:4])  # a first chunk lands in the .partial file
            self.started.set()
            assert self.hold.wait(10)
            dest.write(data[4:])
            return
        self._inner(url, dest)


@pytest.fixture
def fetcher():
    return CountingFetcher()


@pytest.fixture
def storage(tmp_path, fetcher):
    return LocalStorage(tmp_path / "state", fetcher)


def _cache(storage: LocalStorage, images, ami: str) -> Path:
    src, sha = images[ami]
    return storage.cached_image(ami, src.as_uri(), sha)


def _key(images, ami: str) -> tuple[str, str]:
    return ami, images[ami][1]


def test_unreferenced_image_removed_referenced_kept(storage, images):
    a, b = _cache(storage, images, AMI_A), _cache(storage, images, AMI_B)
    removed = storage.prune_images({_key(images, AMI_A)})
    assert removed == [_key(images, AMI_B)]
    assert a.exists() and not b.exists()
    assert storage.cached_images() == [a]
    assert storage.prune_images({_key(images, AMI_A)}) == []  # nothing left to prune


def test_same_image_id_other_sha256_is_another_entry(storage, images, tmp_path):
    a = _cache(storage, images, AMI_A)
    # keep names AMI_A with another checksum: the cached file is not what it keeps.
    assert storage.prune_images({(AMI_A, "0" * 64)}) == [_key(images, AMI_A)]
    assert not a.exists()


def test_recheck_keeps_what_the_caller_wants_now(storage, images):
    a = _cache(storage, images, AMI_A)
    # keep was computed before the spec was accepted; the recheck under the lock sees it.
    assert storage.prune_images(set(), recheck=lambda: {_key(images, AMI_A)}) == []
    assert a.exists()


def test_image_an_overlay_backs_onto_is_kept_until_the_overlay_goes(storage, images):
    a = _cache(storage, images, AMI_A)
    storage.ensure_root_disk(IID_1, a, 64 * MiB)
    assert storage.prune_images(set()) == []  # a stale keep never breaks an overlay
    assert a.exists()
    storage.remove_instance(IID_1)
    assert storage.prune_images(set()) == [_key(images, AMI_A)]
    assert not a.exists()


def test_download_in_progress_is_never_removed(storage, images, fetcher):
    src, sha = images[AMI_A]
    fetcher.hold = threading.Event()
    got: list = []
    t = threading.Thread(target=lambda: got.append(storage.cached_image(AMI_A, src.as_uri(), sha)))
    t.start()
    try:
        assert fetcher.started.wait(10)
        partial = list(storage.image_dir.glob(".*.partial"))
        assert len(partial) == 1
        assert storage.prune_images(set()) == []
        assert partial[0].exists()  # the download's file is untouched
    finally:
        fetcher.hold.set()
        t.join(10)
    assert got == [storage.image_path(AMI_A, sha)] and got[0].exists()
    assert not list(storage.image_dir.glob(".*.partial"))


def test_image_locked_by_a_lookup_or_download_is_skipped_not_waited_for(storage, images):
    a = _cache(storage, images, AMI_A)
    lock = storage._lock(a.name)
    with lock:  # what cached_image and ensure_root_disk hold while they use it
        t0 = time.monotonic()
        assert storage.prune_images(set()) == []
        assert time.monotonic() - t0 < 1
    assert a.exists()
    assert storage.prune_images(set()) == [_key(images, AMI_A)]


def test_lookup_during_a_prune_waits_then_downloads_again(storage, images, fetcher):
    """The interleaving that could break a just-accepted spec: its worker looks the image up
    while a prune (whose recheck did not see the spec) is deleting it. The lookup must not
    hand out the path being deleted: it waits for the prune's lock, then fetches again."""
    a = _cache(storage, images, AMI_A)
    assert len(fetcher.fetches) == 1
    in_recheck, finish = threading.Event(), threading.Event()

    def recheck():
        in_recheck.set()
        assert finish.wait(10)
        return set()  # the spec was not there yet when the prune re-read the wanted set

    pruned: list = []
    p = threading.Thread(target=lambda: pruned.extend(storage.prune_images(set(), recheck=recheck)))
    p.start()
    assert in_recheck.wait(10)
    got: list = []
    src, sha = images[AMI_A]
    w = threading.Thread(target=lambda: got.append(storage.cached_image(AMI_A, src.as_uri(), sha)))
    w.start()
    time.sleep(0.2)
    assert got == []  # blocked on the image's lock, not handed the path being deleted
    finish.set()
    p.join(10)
    w.join(10)
    assert pruned == [_key(images, AMI_A)]
    assert got == [a] and a.exists()  # fetched again after the deletion
    assert len(fetcher.fetches) == 2


def test_files_that_are_not_cache_entries_are_left_alone(storage, images):
    _cache(storage, images, AMI_A)
    others = [storage.image_dir / "README", storage.image_dir / "ami-nothex.qcow2",
              storage.image_dir / f"{AMI_B}.qcow2"]
    for p in others:
        p.write_text("not ours")
    assert storage.prune_images(set()) == [_key(images, AMI_A)]
    assert all(p.exists() for p in others)


# -- the reconcile loop's call -------------------------------------------------------------

def _spec(iid: str, images, ami: str, power: str = "running") -> InstanceSpec:
    src, sha = images[ami]
    return InstanceSpec.model_validate({
        "instance_id": iid, "generation": 1, "power": power, "vcpus": 1, "memory_mib": 128,
        "root_disk_bytes": 64 * MiB, "hostname": "h",
        "image": {"image_id": ami, "url": src.as_uri(), "sha256": sha, "virtual_size": 16 * MiB}})


def _reconciler(tmp_path, storage) -> tuple[Reconciler, StateStore]:
    store = StateStore(tmp_path / "state")
    return Reconciler(store, Drivers(hypervisor=FakeHypervisor(), storage=storage)), store


def test_loop_keeps_images_of_running_and_stopped_specs(tmp_path, storage, images):
    rec, store = _reconciler(tmp_path, storage)
    a, b, c = (_cache(storage, images, ami) for ami in (AMI_A, AMI_B, AMI_C))
    store.put_spec(_spec(IID_1, images, AMI_A))
    store.put_spec(_spec(IID_2, images, AMI_B, power="stopped"))
    assert rec.wanted_images() == {_key(images, AMI_A), _key(images, AMI_B)}
    assert rec.prune_images() == [_key(images, AMI_C)]
    assert a.exists() and b.exists() and not c.exists()
    store.remove_spec(IID_2)
    assert rec.prune_images() == [_key(images, AMI_B)]
    assert a.exists() and not b.exists()


def test_loop_never_prunes_the_image_of_a_spec_accepted_after_keep_was_computed(tmp_path, images,
                                                                               fetcher):
    holder: dict = {}

    class LateSpecStorage(LocalStorage):
        """A PUT lands between the loop computing keep and Storage pruning."""

        def prune_images(self, keep, *, recheck=None):
            assert _key(images, AMI_A) not in keep
            holder["store"].put_spec(_spec(IID_1, images, AMI_A))
            return super().prune_images(keep, recheck=recheck)

    storage = LateSpecStorage(tmp_path / "state", fetcher)
    rec, store = _reconciler(tmp_path, storage)
    holder["store"] = store
    a = _cache(storage, images, AMI_A)
    assert rec.prune_images() == []
    assert a.exists()
    # ...and its worker gets the cached copy, no second download.
    assert rec.reconcile_now(IID_1) is not None
    assert store.runtime(IID_1).image_path == str(a) and len(fetcher.fetches) == 1
