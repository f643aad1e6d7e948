"""The NBD storage node (agent/storage_node) for real: a qemu-storage-daemon under the
supervisor inside a private network namespace this test creates (loopback up, a veth pair with
a test address: nothing in the machine's own namespace), driven over QMP. It runs the
VolumeBackend contract (tests/unit/volume_contract.py; its connected clients are qemu-io, whose
NBD client reconnects by itself, so a forced unexport is checked to hold against that) and then
a data path: qemu-io writes and
reads a pattern over NBD from inside the namespace, the volume grows and NBD shows the new size,
the daemon is killed by its PID and ensure() serves the volume again with its data. Afterwards
no process, namespace or file is left.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from agent import netns
from agent.drivers.volumes import MiB
from agent.storage_node.backend import NbdBackend
from lab.testing import ns_run, unique_prefix
from tests.lab.storage_support import (ip, nbd_url, qemu_io, qemu_io_session, skip_reason,
                                      storage_node)
from tests.unit import volume_contract as contract

pytestmark = [pytest.mark.lab]

ADDR = "198.51.100.7"  # TEST-NET-2, on a veth inside the test's namespace only
PORT = 10809
V1 = "vol-000000000000bd001"
V2 = "vol-000000000000bd002"
V3 = "vol-000000000000bd003"
S1 = "snap-000000000000bd001"
S2 = "snap-000000000000bd002"


@pytest.fixture
def node():
    """(backend, namespace name, state dir, pids); everything removed afterwards, and checked."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    ns = unique_prefix() + "-sn"

    def wire(ns: str) -> None:
        # A veth pair with both ends inside the namespace (no dummy module on these machines).
        for argv in (["link", "add", "sn0", "type", "veth", "peer", "name", "sn1"],
                     ["addr", "add", f"{ADDR}/24", "dev", "sn0"], ["link", "set", "sn1", "up"],
                     ["link", "set", "sn0", "up"]):
            ip(ns, *argv)

    with storage_node(ns, ADDR, PORT, wire) as (backend, state, pids):
        yield backend, ns, state, pids


def _url(vid: str) -> str:
    return nbd_url(ADDR, PORT, vid)


def _qemu_io(ns: str, vid: str, command: str) -> subprocess.CompletedProcess:
    return qemu_io(ns, _url(vid), command)


def _kill_daemon(backend: NbdBackend, pids: list[int]) -> None:
    pid = backend.daemon.pid()
    assert pid is not None and netns.pid_in(pid, backend.daemon.child.spec.netns)
    pids.append(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while backend.daemon.pid() is not None:  # reaps our child
        assert time.monotonic() < deadline, "the daemon did not die"
        time.sleep(0.02)


def test_contract_on_the_nbd_storage_node(node):
    backend, ns, state, pids = node
    contract.check_bad_input(backend, V1)
    contract.check_missing(backend, V1)
    contract.check_create_and_grow(backend, V1)
    contract.check_export_lifecycle(backend, V1, V2)
    contract.check_ensure_after_crash(backend, V1, V2, lambda: _kill_daemon(backend, pids))

    contract.check_unexport_while_connected(backend, V1, _connected(ns))
    contract.check_grow_while_connected(backend, V1, _connected(ns))
    contract.check_force_unexport_while_connected(backend, V1, _connected(ns))
    assert backend.volumes() == [] and backend.exports() == {}
    assert json.loads((state / "fences.json").read_text()) == {"fences": {}}


def _connected(ns: str):
    """contract.Connected: an interactive qemu-io (QEMU's own NBD client, which reconnects by
    itself) holding one connection to the export for the `with` block; the probe writes 512
    bytes through it and reports whether qemu-io said it wrote them."""
    def connected(src):
        url = nbd_url(src.hosts[0].name, src.hosts[0].port, src.name)
        return qemu_io_session(["ip", "netns", "exec", ns, "qemu-io", "-f", "raw", url],
                               ended_is_refusal=False)
    return connected


def test_data_over_nbd_survives_grow_and_a_daemon_restart(node):
    backend, ns, state, pids = node
    backend.create(V1, 64 * MiB)
    src = backend.export(V1)
    assert (src.name, src.hosts[0].name, src.hosts[0].port) == (V1, ADDR, PORT)
    # The NBD server listens inside the namespace only.
    assert netns.pid_in(backend.daemon.pid(), ns)

    w = _qemu_io(ns, V1, "write -P 0xab 0 1M")
    assert w.returncode == 0 and "wrote 1048576/1048576" in w.stdout, w.stdout + w.stderr
    r = _qemu_io(ns, V1, "read -P 0xab 0 1M")
    assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
    bad = _qemu_io(ns, V1, "read -P 0xcd 0 1M")  # the check can fail
    assert bad.returncode != 0 and "Pattern verification failed" in bad.stdout

    backend.grow(V1, 128 * MiB)
    info = json.loads(ns_run(ns, "qemu-img", "info", "--output=json", "-f", "raw",
                             _url(V1)).stdout)
    assert info["virtual-size"] == 128 * MiB

    _kill_daemon(backend, pids)
    assert backend.exports() == {}
    assert _qemu_io(ns, V1, "read -P 0xab 0 1M").returncode != 0  # nothing serves it now
    backend.ensure()
    assert backend.exports() == {V1: src}
    r = _qemu_io(ns, V1, "read -P 0xab 0 1M")
    assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
    info = json.loads(ns_run(ns, "qemu-img", "info", "--output=json", "-f", "raw",
                             _url(V1)).stdout)
    assert info["virtual-size"] == 128 * MiB

    # An agent restart: a new backend on the same state dir adopts the running daemon.
    again = NbdBackend(state, ADDR, PORT, netns=ns, max_size=1 << 30)
    pid = backend.daemon.pid()
    assert again.daemon.pid() == pid and again.exports() == {V1: src}
    again.ensure()
    assert again.daemon.pid() == pid and again.exports() == {V1: src}

    backend.unexport(V1)
    assert _qemu_io(ns, V1, "read 0 512").returncode != 0
    backend.delete(V1)
    assert backend.volumes() == [] and backend.exports() == {}
    assert os.listdir(state / "volumes") == []
    assert json.loads((state / "exports.json").read_text()) == {"exports": []}


class LabIO:
    """tests/unit/volume_contract.VolumeIO over NBD from inside the namespace (qemu-io: one
    connection per call, flushed when it closes), and the disk blocks of the node's files."""

    def __init__(self, ns: str, state):
        self.ns, self.state = ns, state

    def write(self, volume_id, offset, length, pattern):
        w = _qemu_io(self.ns, volume_id, f"write -P {pattern} {offset} {length}")
        assert w.returncode == 0 and f"wrote {length}/{length}" in w.stdout, w.stdout + w.stderr

    def holds(self, volume_id, offset, length, pattern):
        r = _qemu_io(self.ns, volume_id, f"read -P {pattern} {offset} {length}")
        assert "read" in r.stdout or "verification failed" in r.stdout, r.stdout + r.stderr
        return r.returncode == 0 and "verification failed" not in r.stdout

    def allocated(self):
        total = 0
        for root, _, names in os.walk(self.state):
            for n in names:
                if n.endswith(".qcow2"):
                    total += os.stat(os.path.join(root, n)).st_blocks * 512
        return total


def test_snapshot_contract_on_the_nbd_storage_node(node):
    backend, ns, state, pids = node
    io = LabIO(ns, state)
    contract.check_snapshot_bad_input(backend, V1, S1)
    contract.check_snapshot_data(backend, io, [V1, V2, V3], [S1, S2])
    contract.check_snapshots_outlive_their_volume(backend, io, V1, V2, S1, S2)
    assert not (state / "holders").exists() or os.listdir(state / "holders") == []
    contract.check_snapshot_shares_data(backend, io, V1, S1)
    before, after = contract.check_snapshot_while_writing(backend, io, V1, V2, S1)
    assert 3 <= before and after < 40, (before, after)  # taken while the client was writing
    assert backend.volumes() == [] and backend.snapshots() == [] and backend.exports() == {}
    assert os.listdir(state / "volumes") == []


def test_snapshot_stored_bytes_on_the_nbd_storage_node(node):
    """What a snapshot stores (qemu-img measure), taken through QMP while the daemon serves the
    volume and with qemu-img while not: 8 MiB written to a 1 GiB volume store 8-16 MiB."""
    backend, ns, state, pids = node
    contract.check_snapshot_stored_bytes(backend, LabIO(ns, state), V1, V2, S1, S2)
    assert backend.volumes() == [] and backend.snapshots() == []


def test_snapshots_survive_a_daemon_restart_and_a_new_backend(node):
    """The files are the only record: a killed daemon, a new backend on the same state dir and
    a deleted volume's holder all still list and serve the snapshots."""
    backend, ns, state, pids = node
    io = LabIO(ns, state)
    backend.create(V1, 64 * MiB)
    backend.export(V1)
    io.write(V1, 0, MiB, 0xAA)
    info = backend.snapshot(V1, S1)
    io.write(V1, 0, MiB, 0xBB)
    _kill_daemon(backend, pids)
    again = NbdBackend(state, ADDR, PORT, netns=ns, max_size=1 << 30)
    assert again.snapshots() == [info]
    again.ensure()
    assert io.holds(V1, 0, MiB, 0xBB)
    again.unexport(V1)
    again.delete(V1)
    holders = os.listdir(state / "holders")
    assert holders == [f"{V1}.{S1}.qcow2"], holders
    assert again.volumes() == [] and again.snapshots() == [info]
    again.ensure()  # a holder is no volume: nothing to open or serve
    assert again.exports() == {} and os.listdir(state / "holders") == holders
    assert NbdBackend(state, ADDR, PORT, netns=ns, max_size=1 << 30).snapshots() == [info]
    again.create(V2, 64 * MiB, from_snapshot=S1)
    again.export(V2)
    assert io.holds(V2, 0, MiB, 0xAA)
    again.unexport(V2)
    again.delete(V2)
    again.delete_snapshot(S1)
    assert os.listdir(state / "holders") == [] and os.listdir(state / "volumes") == []
    assert again.snapshots() == []
    pids.append(again.daemon.pid())  # the fixture stops it (adopted from the pid file) and checks
