"""The storage node's one qemu-storage-daemon: how it is run (a ChildSpec under
agent/supervisor.py, in the node's network namespace), its NBD server, and the QMP verbs the
backend composes (open/close a volume's block nodes, add/remove its NBD export, resize, list).

Names inside the daemon all derive from the validated volume id: the qcow2 node and the export
id are the id itself, the file node is "f-" + id, the NBD name is the id (or, once clients were
cut off by a forced unexport, the id + "." + a number: backend.py). With `tls` (NbdTls) the NBD
server takes only TLS clients whose certificate the cloud CA signed AND whose distinguished name
is exactly the one admitted (QEMU's tls-creds-x509 with verify-peer=on, and an authz-simple
object as the server's tls-authz): one daemon serves one host (backend.py, docs/security.md
"Storage access"). Nodes are opened with the host
page cache and flushes honoured (cache.no-flush=false): a write the client was told is flushed
is on the disk. Nothing here decides which volumes to serve: that is backend.py's.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

from agent.drivers.base import NetworkHost
from agent.drivers.volumes import VOLUME_ID_RE, valid_volume_id
from agent.storage_node.qmp import QmpClient, QmpError
from agent.supervisor import ChildSpec, Supervised

log = logging.getLogger(__name__)

PROGRAM = "qemu-storage-daemon"
#: Never anything that ignores flushes (no-flush=true is QEMU's "unsafe").
CACHE = {"direct": False, "no-flush": False}
_UNIX_PATH_MAX = 107


class NbdTls(NamedTuple):
    """TLS for the daemon's NBD server: `creds_dir` holds ca-cert.pem, server-cert.pem and
    server-key.pem (QEMU's names); only a client certificate with distinguished name
    `client_dn` (as GnuTLS prints it, e.g. "CN=h1") is let in."""

    creds_dir: Path
    client_dn: str


def file_node(volume_id: str) -> str:
    return "f-" + valid_volume_id(volume_id)


def _safe_dir(path: Path) -> Path:
    """The daemon's own paths go into a QEMU option string, where ',' separates options."""
    text = str(path)
    if not path.is_absolute() or "," in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"storage node state dir {text!r} must be absolute, without commas or "
                         "control characters")
    return path


class StorageDaemon:
    """One supervised qemu-storage-daemon with an NBD server on host:port in `netns`."""

    def __init__(self, state_dir: Path, host: str, port: int, *, netns: Optional[str] = None,
                 start_timeout: float = 10.0, qmp_timeout: float = 10.0,
                 tls: Optional[NbdTls] = None):
        self.state_dir = _safe_dir(Path(state_dir))
        self.tls = tls
        self.listen = NetworkHost(host, port)  # validates both
        if port is None:
            raise ValueError("the NBD server needs a port")
        self.qmp_path = str(self.state_dir / "qmp.sock")
        if len(self.qmp_path) > _UNIX_PATH_MAX:
            raise ValueError(f"QMP socket path {self.qmp_path!r} is too long for a unix socket")
        self.qmp_timeout = qmp_timeout
        argv = (PROGRAM, "--chardev", f"socket,id=qmp0,path={self.qmp_path},server=on,wait=off",
                "--monitor", "chardev=qmp0", "--pidfile", str(self.state_dir / "qsd.pid"))
        if tls is not None:
            if not re.fullmatch(r"CN=[a-z0-9][a-z0-9-]{0,62}", tls.client_dn):
                raise ValueError(f"client DN {tls.client_dn!r} is not CN=<host id>")
            # verify-peer=on: a client without a certificate of this CA never gets past the
            # handshake; the authz then admits only the one host's certificate.
            argv += ("--object", "tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir="
                     + str(_safe_dir(Path(tls.creds_dir))),
                     "--object", f"authz-simple,id=authz0,identity={tls.client_dn}")
        # The daemon writes its pid file after its monitor is listening: the readiness signal.
        self.child = Supervised(ChildSpec(
            name=f"qemu-storage-daemon in {netns or 'this namespace'}", argv=argv,
            pid_file=str(self.state_dir / "qsd.pid"), netns=netns,
            log_file=str(self.state_dir / "qsd.log"), child_writes_pid_file=True),
            start_timeout=start_timeout)

    # -- the process --------------------------------------------------------------------------
    def pid(self) -> Optional[int]:
        return self.child.pid()

    def ensure_running(self) -> str:
        """The daemon runs in place with its NBD server listening: "running", "started" or
        "restarted" (SupervisorError when it cannot start, QmpError when QMP fails)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.child.pid() is None:
            with contextlib.suppress(FileNotFoundError):
                Path(self.qmp_path).unlink()  # a dead daemon's socket
        how = self.child.ensure()
        with self.qmp() as q:
            self.start_nbd_server(q)
        return how

    def stop(self) -> bool:
        stopped = self.child.stop()
        with contextlib.suppress(FileNotFoundError):
            Path(self.qmp_path).unlink()
        return stopped

    @contextlib.contextmanager
    def qmp(self, wait: float = 3.0) -> Iterator[QmpClient]:
        """A QMP connection; retried for up to `wait` seconds while the socket comes up."""
        deadline = time.monotonic() + wait
        while True:
            client = QmpClient(self.qmp_path, self.qmp_timeout)
            try:
                client.connect()
                break
            except QmpError as e:
                if e.code != "QmpUnavailable" or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            yield client
        finally:
            client.close()

    # -- QMP verbs ----------------------------------------------------------------------------
    def start_nbd_server(self, q: QmpClient) -> None:
        """Start the NBD server; one already running is fine (QMP has no query for it)."""
        addr = {"type": "inet", "data": {"host": self.listen.name, "port": str(self.listen.port)}}
        args: dict = {"addr": addr}
        if self.tls is not None:
            args.update({"tls-creds": "tls0", "tls-authz": "authz0"})
        try:
            q.execute("nbd-server-start", args)
        except QmpError as e:
            if "already running" not in e.desc:
                raise

    @staticmethod
    def open_nodes(q: QmpClient) -> dict[str, int]:
        """Volume id -> virtual size of every volume whose qcow2 node is open."""
        out = {}
        for node in q.execute("query-named-block-nodes", {"flat": True}) or []:
            name = node.get("node-name", "")
            if VOLUME_ID_RE.fullmatch(name):
                out[name] = int(node.get("image", {}).get("virtual-size", 0))
        return out

    @staticmethod
    def served(q: QmpClient) -> set[str]:
        """Volume ids exported now (exports shutting down are not served)."""
        return {e["id"] for e in q.execute("query-block-exports") or []
                if VOLUME_ID_RE.fullmatch(e.get("id", "")) and not e.get("shutting-down")}

    @staticmethod
    def open_volume(q: QmpClient, volume_id: str, path: Path) -> None:
        q.execute("blockdev-add", {
            "driver": "qcow2", "node-name": valid_volume_id(volume_id), "cache": CACHE,
            "discard": "unmap",
            "file": {"driver": "file", "node-name": file_node(volume_id),
                     "filename": str(path), "cache": CACHE}})

    @staticmethod
    def close_volume(q: QmpClient, volume_id: str) -> None:
        """Close both nodes; ones already closed are skipped. Deleting the qcow2 node takes
        the file node it was opened with along, so the list is read again in between."""
        for node in (valid_volume_id(volume_id), file_node(volume_id)):
            names = {n.get("node-name") for n in q.execute("query-named-block-nodes",
                                                            {"flat": True}) or []}
            if node in names:
                q.execute("blockdev-del", {"node-name": node})

    @staticmethod
    def add_export(q: QmpClient, volume_id: str, name: Optional[str] = None) -> None:
        """Export the open volume (id = node = the volume id) under the NBD name `name`: the
        volume id, or after forced unexports the id + "." + a number (backend.py's fence)."""
        vid = valid_volume_id(volume_id)
        name = vid if name is None else name
        if name != vid and not re.fullmatch(re.escape(vid) + r"\.[1-9][0-9]{0,8}", name):
            raise ValueError(f"export name {name!r} is not {vid} or {vid}.<number>")
        q.execute("block-export-add", {"type": "nbd", "id": vid, "node-name": vid, "name": name,
                                       "writable": True})

    def del_export(self, q: QmpClient, volume_id: str, timeout: float = 5.0, *,
                   mode: str = "safe") -> None:
        """Remove the export and wait until it is gone, so its node can be closed. Mode "safe"
        is refused while a client is connected (QmpError "... is in use"); "hard" (qemu >= 5.2)
        closes the clients' connections first: they get no more replies from this export."""
        vid = valid_volume_id(volume_id)
        if mode not in ("safe", "hard"):
            raise ValueError(f"block-export-del mode {mode!r} is not safe or hard")
        q.execute("block-export-del", {"id": vid, "mode": mode})
        deadline = time.monotonic() + timeout
        while any(e.get("id") == vid for e in q.execute("query-block-exports") or []):
            if time.monotonic() > deadline:
                raise QmpError(f"export {vid} still shutting down after {timeout} s",
                               code="QmpUnavailable")
            time.sleep(0.02)

    @staticmethod
    def snapshot_internal(q: QmpClient, volume_id: str, name: str) -> None:
        """A qcow2 internal snapshot `name` of an open volume, taken while its clients may be
        writing: QEMU drains the node's in-flight requests first and writes the snapshot's
        metadata through, so it holds every completed write (crash-consistent)."""
        q.execute("blockdev-snapshot-internal-sync", {"device": valid_volume_id(volume_id),
                                                      "name": str(name)})

    @staticmethod
    def delete_snapshot_internal(q: QmpClient, volume_id: str, name: str) -> None:
        q.execute("blockdev-snapshot-delete-internal-sync",
                  {"device": valid_volume_id(volume_id), "name": str(name)})

    @staticmethod
    def resize(q: QmpClient, volume_id: str, size_bytes: int) -> None:
        q.execute("block_resize", {"node-name": valid_volume_id(volume_id),
                                   "size": int(size_bytes)})
