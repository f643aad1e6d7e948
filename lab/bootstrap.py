"""What the lab puts into a fresh controller so a newcomer can launch at once: the demo account
(its API key in `<state>/demo.key`, 0600) and the machine images already built in the image cache,
registered as public images. Idempotent: run on every `up`, it only adds what is missing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from agent.contract.transport import client
from lab.errors import LabError

DEMO_ACCOUNT = "demo"
DEMO_KEY_FILE = "demo.key"
LAB_IMAGES = ("kumo-tiny", "debian-12")


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def _admin_key(controller_state: Path, timeout: float = 30.0) -> str:
    path = controller_state / "admin.key"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.1)
    raise LabError("LabBootstrapFailed", f"the controller wrote no admin key at {path}")


def _check(response, what: str):
    if response.status_code >= 400:
        raise LabError("LabBootstrapFailed", f"{what}: HTTP {response.status_code} {response.text}")
    return response.json()


def bootstrap(state_dir: Path, controller_state: Path, url: str,
              image_names: tuple[str, ...] = LAB_IMAGES, log=print) -> None:
    """Create the demo account and register the cached lab images (both only when missing)."""
    admin_key = _admin_key(controller_state)
    with client(url, admin_key) as api:
        demo_key_path = Path(state_dir) / DEMO_KEY_FILE
        if not demo_key_path.exists():
            accounts = _check(api.get("/v1/accounts"), "listing accounts")["items"]
            if any(a["name"] == DEMO_ACCOUNT for a in accounts):
                log(f"warning: account {DEMO_ACCOUNT!r} exists but {demo_key_path} is missing")
            else:
                created = _check(api.post("/v1/accounts", json={"name": DEMO_ACCOUNT}),
                                 "creating the demo account")
                _write_secret(demo_key_path, created["api_key"])
        _register_images(api, image_names, log)


def _register_images(api, names: tuple[str, ...], log) -> None:
    from images.builder import cached_manifest

    registered = {i["name"]: i for i in
                  _check(api.get("/v1/images", params={"max_results": 1000}), "listing images")["items"]}
    for name in names:
        manifest = cached_manifest(name)
        if manifest is None:
            log(f"image {name} is not built (kumo image build {name}); not registered")
            continue
        current = registered.get(name)
        if current and current["sha256"] == manifest.sha256:
            continue
        if current:  # rebuilt since: the registered file is gone, register the new one
            _check(api.delete(f"/v1/images/{current['image_id']}"), f"deregistering {name}")
        _check(api.post("/v1/images", json={
            "name": name, "path": str(manifest.path), "format": manifest.format, "public": True,
            "architecture": manifest.architecture, "ready_marker": manifest.ready_marker,
            "min_ram_mib": manifest.min_ram_mib, "description": f"Kumo lab image {name}",
        }), f"registering image {name}")
        log(f"registered image {name}")
