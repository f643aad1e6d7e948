"""The storage node's pure parts: the QMP client against a small fake QMP server on a unix
socket (greeting, capabilities, events in between, errors, a dropped connection), the persisted
export set, the volume files' naming, and the daemon's argv and input checks (no process runs
here: tests/lab/test_nbd_backend_lab.py runs the real daemon)."""
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from agent.drivers.volumes import InvalidVolumeId
from agent.storage_node.daemon import CACHE, StorageDaemon, file_node
from agent.storage_node.files import VolumeFiles
from agent.storage_node.qmp import QmpClient, QmpError
from agent.storage_node.wanted import WantedExports

V1 = "vol-0000000000000a001"


class FakeQmpServer:
    """Answers one connection: the greeting, then each command through `handle(msg)`, which
    returns the list of JSON objects to send back (None: close the connection)."""

    def __init__(self, path: Path, handle):
        self.path, self.handle, self.seen = str(path), handle, []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(json.dumps({"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}})
                    .encode() + b"\n")
            f.flush()
            for line in f:
                msg = json.loads(line)
                self.seen.append(msg)
                replies = self.handle(msg)
                if replies is None:
                    return
                for r in replies:
                    f.write(json.dumps(r).encode() + b"\n")
                f.flush()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(2)


def _reply(msg, value=None):
    return [{"return": {} if value is None else value, "id": msg["id"]}]


def test_qmp_client_round_trip(tmp_path):
    def handle(msg):
        if msg["execute"] == "query-block-exports":
            return ([{"event": "BLOCK_EXPORT_DELETED", "data": {"id": V1}}]
                    + _reply(msg, [{"id": V1, "node-name": V1, "type": "nbd",
                                    "shutting-down": False}]))
        if msg["execute"] == "blockdev-del":
            return [{"error": {"class": "GenericError", "desc": "Failed to find node"},
                     "id": msg["id"]}]
        if msg["execute"] == "quit":
            return None
        return _reply(msg)

    server = FakeQmpServer(tmp_path / "qmp.sock", handle)
    try:
        with QmpClient(server.path, timeout=2) as q:
            assert StorageDaemon.served(q) == {V1}
            assert q.events == [{"event": "BLOCK_EXPORT_DELETED", "data": {"id": V1}}]
            with pytest.raises(QmpError) as e:
                q.execute("blockdev-del", {"node-name": V1})
            assert (e.value.code, e.value.qmp_class, e.value.desc) == (
                "QmpCommandFailed", "GenericError", "Failed to find node")
            assert not e.value.retryable
            StorageDaemon.add_export(q, V1)
            StorageDaemon.open_volume(q, V1, tmp_path / f"{V1}.qcow2")
            with pytest.raises(QmpError) as e:
                q.execute("quit")  # the server hangs up
            assert e.value.code == "QmpUnavailable" and e.value.retryable
    finally:
        server.close()
    names = [m["execute"] for m in server.seen]
    assert names == ["qmp_capabilities", "query-block-exports", "blockdev-del",
                     "block-export-add", "blockdev-add", "quit"]
    assert server.seen[3]["arguments"] == {"type": "nbd", "id": V1, "node-name": V1, "name": V1,
                                           "writable": True}
    add = server.seen[4]["arguments"]
    assert add["driver"] == "qcow2" and add["node-name"] == V1 and add["cache"] == CACHE
    assert add["file"] == {"driver": "file", "node-name": f"f-{V1}",
                           "filename": str(tmp_path / f"{V1}.qcow2"), "cache": CACHE}
    assert CACHE["no-flush"] is False  # never a cache mode that ignores flushes


def test_qmp_client_without_a_server(tmp_path):
    with pytest.raises(QmpError) as e:
        QmpClient(str(tmp_path / "none.sock"), timeout=1).connect()
    assert e.value.code == "QmpUnavailable"


def test_wanted_exports_persist_and_drop_garbage(tmp_path):
    w = WantedExports(tmp_path / "exports.json")
    assert w.load() == set()
    w.add(V1)
    w.add(V1)
    assert WantedExports(tmp_path / "exports.json").load() == {V1}
    (tmp_path / "exports.json").write_text(json.dumps({"exports": [V1, "../x", 3]}))
    assert w.load() == {V1}
    w.discard(V1)
    assert w.load() == set()
    assert [p.name for p in tmp_path.iterdir()] == ["exports.json"]  # no temp file left


def test_volume_files_naming(tmp_path):
    f = VolumeFiles(tmp_path / "volumes")
    assert f.path(V1) == tmp_path / "volumes" / f"{V1}.qcow2"
    assert f.ids() == []
    (tmp_path / "volumes").mkdir()
    for name in (f"{V1}.qcow2", f".new-{V1}.qcow2", "vol-x.qcow2", "notes.txt"):
        (tmp_path / "volumes" / name).write_text("")
    assert f.ids() == [V1]
    f.drop_partial()
    assert sorted(p.name for p in (tmp_path / "volumes").iterdir()) == [
        "notes.txt", f"{V1}.qcow2", "vol-x.qcow2"]
    with pytest.raises(InvalidVolumeId):
        f.path("../etc/passwd")
    assert file_node(V1) == f"f-{V1}"


def test_daemon_argv_and_checks(tmp_path):
    d = StorageDaemon(tmp_path, "198.51.100.7", 10809, netns="kt0000-sn")
    spec = d.child.spec
    assert spec.argv == ("qemu-storage-daemon", "--chardev",
                         f"socket,id=qmp0,path={tmp_path}/qmp.sock,server=on,wait=off",
                         "--monitor", "chardev=qmp0", "--pidfile", f"{tmp_path}/qsd.pid")
    assert spec.netns == "kt0000-sn" and spec.child_writes_pid_file
    for bad_dir in (Path("relative"), tmp_path / "a,b", tmp_path / "a\nb"):
        with pytest.raises(ValueError):
            StorageDaemon(bad_dir, "198.51.100.7", 10809)
    with pytest.raises(ValueError):
        StorageDaemon(tmp_path / ("x" * 120), "198.51.100.7", 10809)
    with pytest.raises(Exception):
        StorageDaemon(tmp_path, "bad host;", 10809)
    with pytest.raises(ValueError):
        StorageDaemon(tmp_path, "198.51.100.7", None)
    with pytest.raises(ValueError):
        StorageDaemon(tmp_path, "198.51.100.7", 10809, netns="../x")
