"""Fixtures for image boot tests: a built image (cached in a temp dir unless KUMO_TEST_IMAGE_CACHE)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _can_boot() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    for tool in ("qemu-system-x86_64", "qemu-img", "genisoimage", "apt-get", "mke2fs", "syslinux"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    return None


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory) -> Path:
    reason = _can_boot()
    if reason:
        pytest.skip(reason)
    env = os.environ.get("KUMO_TEST_IMAGE_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("image-cache")


@pytest.fixture(scope="session")
def tiny(image_cache):
    from images.builder import build

    return build("kumo-tiny", cache_dir=image_cache, log=lambda s: None)


@pytest.fixture(scope="session")
def debian12(image_cache):
    from images.builder import build

    return build("debian-12", cache_dir=image_cache, log=lambda s: None)
