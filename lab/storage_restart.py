"""Restarting the lab's storage node with other settings, e.g. on the RBD backend
(services.storage_rbd_env) and back: the recorded node process is stopped by its PID, a new one
started in the same namespace on the same API socket, recorded in the lab's state and waited
for until it answers. The controller keeps its KUMO_STORAGE_URL and never notices more than a
short outage of the node's API.

Only the control process is replaced: an NBD node's qemu-storage-daemon stays (the next NBD
node adopts it by its pid file, agent/storage_node/__main__.py), and a Ceph cluster is kept and
ended by whoever started it (tests/lab/ceph_support.py). The caller makes sure no volume is in use when it switches
backends: volumes do not move between them.
"""
from __future__ import annotations

from lab import naming as nm
from lab import procs, services
from lab import state as st
from lab.core import Lab
from lab.errors import LabError


def restart_storage(lab: Lab, env: dict[str, str] | None = None,
                    timeout: float = 30.0) -> st.ProcRecord:
    """Replace the lab's storage node process with one whose environment is storage_env()
    updated with `env` (None or {}: the lab's own, NBD). Returns the new process's record."""
    with lab._locked():
        s = st.load(lab.state_dir)
        if s is None or "storage" not in s.processes:
            raise LabError("LabNoStorageNode", f"the lab in {lab.state_dir} runs no storage node")
        procs.stop(s.processes["storage"])  # by PID (and start time): only our node
        token = services.ensure_token(lab.state_dir)
        full = {**services.storage_env(lab.state_dir, token), **(env or {})}
        log = services.storage_dir(lab.state_dir) / "storage.log"
        rec = procs.start("storage", services.storage_argv(lab.python), log, env=full,
                          netns=nm.storage_netns(lab.prefix), cwd=services.REPO_ROOT)
        s.processes["storage"] = rec
        st.save(lab.state_dir, s)
    services.wait_until(lambda: services.storage_answers(lab.state_dir),
                        lambda: procs.alive(rec), "storage node", log, timeout=timeout)
    return rec
