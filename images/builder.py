"""Public API of the image builder: list recipes, build (or reuse from cache), read manifests.

Cache layout (``$KUMO_IMAGE_CACHE`` or /var/cache/kumo/images):
  <name>.qcow2           the image (read-only base: consumers make overlays on it)
  <name>.json            its manifest, written last; its presence means the image is good
  .build-<name>-XXXX/    temp work dir of a running build, removed at the end (even on failure)
  .<name>.lock           flock held while building <name>
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from images.errors import BuildError, UnknownRecipe
from images.manifest import Manifest
from images.recipes import BuildContext, recipe_hash
from images.recipes.registry import registry
from images.steps import step

__all__ = ["BuildError", "Manifest", "build", "cache_dir_default", "cached_manifest", "list_recipes",
           "image_path", "manifest_path"]

DEFAULT_CACHE = Path("/var/cache/kumo/images")


def cache_dir_default() -> Path:
    return Path(os.environ.get("KUMO_IMAGE_CACHE") or DEFAULT_CACHE)


def list_recipes() -> list[str]:
    return sorted(registry())


def _recipe(name: str):
    recipes = registry()
    if name not in recipes:
        raise UnknownRecipe(name, sorted(recipes))
    return recipes[name]


def image_path(name: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or cache_dir_default()) / f"{name}.qcow2"


def manifest_path(name: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or cache_dir_default()) / f"{name}.json"


def cached_manifest(name: str, cache_dir: Path | None = None) -> Manifest | None:
    """The manifest of the cached image, or None when there is none or it does not match its file
    (missing image, size differs, unreadable manifest). Does not check the recipe hash."""
    mpath = manifest_path(name, cache_dir)
    try:
        m = Manifest.from_file(mpath)
    except (OSError, ValueError, TypeError):
        return None
    if m.name != name or m.path is None or not m.path.is_file() or m.path.stat().st_size != m.size:
        return None
    return m


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def _locked(cache: Path, name: str) -> Iterator[None]:
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(name: str, cache_dir: Path | None = None, force: bool = False,
          log: Callable[[str], None] = print) -> Manifest:
    """Build image `name` into the cache, or return the cached manifest when its recipe hash matches.

    Raises BuildError (with .step) on any failure; then no image or manifest for `name` is left
    that could be taken for a good one (the old one is kept only if the failure came before publishing).
    """
    recipe = _recipe(name)
    cache = Path(cache_dir) if cache_dir else cache_dir_default()
    with step("prepare-cache"):
        cache.mkdir(parents=True, exist_ok=True)
    rhash = recipe_hash(recipe)
    with _locked(cache, name):
        cached = cached_manifest(name, cache)
        if cached and not force and cached.recipe_hash == rhash:
            log(f"{name}: cached image matches recipe {rhash[:12]}: {cached.path}")
            return cached
        # Leftovers of builds that died hard (SIGKILL, power loss) are ours to remove under the lock.
        for stale in cache.glob(f".build-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        t0 = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache))
        try:
            log(f"{name}: building (recipe {recipe.version}, hash {rhash[:12]}) in {work}")
            out = recipe.build(BuildContext(work=work, log=log))
            with step("checksum", log):
                digest = _sha256(out.qcow2)
                size = out.qcow2.stat().st_size
            with step("publish", log):
                final_img, final_man = image_path(name, cache), manifest_path(name, cache)
                # Manifest first out, last in: a reader never sees a manifest naming a wrong image.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(final_man)
                os.chmod(out.qcow2, 0o444)
                os.replace(out.qcow2, final_img)
                m = Manifest(
                    name=name, file=final_img.name, architecture="x86_64", format="qcow2",
                    virtual_size=out.virtual_size, size=size, sha256=digest, boot_mode="bios",
                    min_ram_mib=recipe.min_ram_mib, ready_marker=recipe.ready_marker,
                    recipe_version=recipe.version, recipe_hash=rhash,
                    build_time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    build_seconds=round(time.monotonic() - t0, 1), kernel_version=out.kernel_version,
                    root_device=out.root_device, packages=out.packages, path=final_img)
                m.write(final_man)
            log(f"{name}: built in {m.build_seconds}s: {final_img} ({size / 1e6:.1f} MB)")
            return m
        finally:
            shutil.rmtree(work, ignore_errors=True)
