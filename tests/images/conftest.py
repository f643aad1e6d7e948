"""Fixtures for image boot tests: the built images from the image cache (the one `kumo image build`
and deploy/test.sh fill; KUMO_TEST_IMAGE_CACHE names another), built there when missing."""

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
    from images.builder import cache_dir_default

    env = os.environ.get("KUMO_TEST_IMAGE_CACHE")
    return Path(env) if env else cache_dir_default()


@pytest.fixture(scope="session")
def tiny(image_cache):
    from images.builder import build

    return build("kumo-tiny", cache_dir=image_cache, log=lambda s: None)


@pytest.fixture(scope="session")
def debian12(image_cache):
    from images.builder import build

    return build("debian-12", cache_dir=image_cache, log=lambda s: None)
