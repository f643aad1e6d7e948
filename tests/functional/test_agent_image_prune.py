"""The agent's image cache is pruned by its reconcile loop, through the HTTP API: an image stays
while an accepted spec (running or stopped) uses it and goes at a sweep after the last one is
deleted. On the fake drivers, and once with the real LocalStorage (real qcow2 overlays) under
the fake hypervisor."""
from __future__ import annotations

import hashlib
import subprocess
import time

from agent.storage import LocalStorage

from tests.functional.agent_harness import make_spec, put, running_agent, until, wait_for


def _shared_image_spec(n: int, ami: str, **over) -> dict:
    spec = make_spec(n, **over)
    spec["image"] = dict(spec["image"], image_id=ami)
    return spec


def test_deleted_instance_image_is_pruned_stopped_and_shared_ones_kept(tmp_path):
    with running_agent(tmp_path) as agent:
        one, two = make_spec(1), make_spec(2)
        three = _shared_image_spec(3, two["image"]["image_id"])
        for s in (one, two, three):
            put(agent, s)
        for s in (one, two, three):
            until(agent, s["instance_id"], power="running")
        img1 = tmp_path / "images" / f"{one['image']['image_id']}.qcow2"
        img2 = tmp_path / "images" / f"{two['image']['image_id']}.qcow2"
        assert img1.exists() and img2.exists()
        # A stopped instance's overlay still backs onto its image: it stays.
        put(agent, make_spec(1, generation=2, power="stopped"))
        until(agent, one["instance_id"], power="shutoff", generation=2)
        time.sleep(0.3)  # several sweeps (resync_interval 0.05)
        assert img1.exists()
        assert agent.get(f"/v1/instances/{one['instance_id']}").json()["error"] is None
        # Deleted: its overlay goes with it, then a sweep drops the image.
        assert agent.delete(f"/v1/instances/{one['instance_id']}").status_code == 204
        wait_for(lambda: not img1.exists())
        assert ("prune_image", one["image"]["image_id"]) in agent.storage.calls
        # An image two instances share stays until the last of them is gone.
        assert agent.delete(f"/v1/instances/{two['instance_id']}").status_code == 204
        time.sleep(0.3)
        assert img2.exists()
        until(agent, three["instance_id"], power="running")
        assert agent.delete(f"/v1/instances/{three['instance_id']}").status_code == 204
        wait_for(lambda: not img2.exists())


def test_real_local_storage_prunes_after_delete_and_relaunch_fetches_again(tmp_path):
    src = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "16M"], check=True)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    fetched: list[str] = []
    storage = LocalStorage(tmp_path / "local")
    inner = storage.fetch
    storage.fetch = lambda url, dest: (fetched.append(url), inner(url, dest))[1]
    spec = make_spec(1, nics=[])
    spec["image"] = dict(spec["image"], url=src.as_uri(), sha256=sha, virtual_size=16 << 20)
    iid = spec["instance_id"]
    with running_agent(tmp_path, storage=storage) as agent:
        put(agent, spec)
        until(agent, iid, power="running")
        cached = storage.image_path(spec["image"]["image_id"], sha)
        assert cached.exists()
        time.sleep(0.3)
        assert cached.exists()  # its overlay and its spec both need it
        assert agent.delete(f"/v1/instances/{iid}").status_code == 204
        wait_for(lambda: not cached.exists())
        assert storage.cached_images() == []
        # The same instance id launched again (newer generation): fetched again, runs.
        put(agent, dict(spec, generation=2))
        until(agent, iid, power="running", generation=2)
        assert cached.exists() and len(fetched) == 2
