"""NbdBackend: the VolumeBackend (agent/drivers/volumes.py) of the storage node. Volumes are
qcow2 files (files.py) served over NBD by one qemu-storage-daemon (daemon.py); which volumes
should be exported is persisted (wanted.py) and ensure() reconciles the daemon with it, so a
daemon restart, an agent restart or a daemon another agent left running all converge.

Every operation validates its input first and holds one lock (the daemon's QMP monitor takes
one command at a time and the rules compare-then-act). Errors from qemu-img, QMP and the
supervisor become DriverErrors with stable codes here, at the driver boundary.

Snapshots are qcow2 internal snapshots in the volume's file (files.py names them): taken through
QMP (blockdev-snapshot-internal-sync) when the daemon has the volume open, with qemu-img when
not. Crash-consistent and copy-on-write by construction: a snapshot shares its clusters with the
volume, and the volume's later writes go to new clusters. snapshot() answers what the snapshot
stores (stored_bytes, for billing), measured with qemu-img on the spot. The files are the only record of which
snapshots exist (restart-safe: there is no second index to get out of step). Deleting a volume
that still has snapshots moves its file to holders/ (files.py): the snapshots stay listed and
usable, and the space of the volume's last active layer stays allocated until its last snapshot
is deleted, when the holder file goes. A volume made from a snapshot is a full, sparse copy
(qemu-img convert), independent of the source from then on.

Per-host TLS (`tls_dir` given; docs/security.md "Storage access"): an export opens only for the
host its attachment is for. QEMU's tls-authz belongs to an NBD server, not to an export, and one
daemon runs one NBD server, so each host gets its own daemon (state under hosts/<host id>/, its
own port from hosts.json) whose server admits only that host's certificate (DN "CN=<host id>",
the cloud CA's name for it), and each export lives in the daemon of its attachment's host:
exported for another host, a volume is closed in the old daemon and opened in the new one. The
old host's connection, if any, holds the file (qcow2 lock): the move waits (retryable) until it
is gone. Without `tls_dir` one plain daemon serves every host, as before.

A forced unexport (a force detach) removes the export in QMP's "hard" mode, which closes the
clients' connections. QEMU's NBD client reconnects by itself on its guest's next I/O request
(qemu 7.2 tries once per request even with reconnect-delay=0; seen in the lab: a qemu-io cut
off this way wrote again as soon as the same export was added back), so each forced unexport
also moves the volume's fence (fences.json, written before the export goes): every later export
is served under export_name(id, fence), a name the cut-off client never asks for.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

from agent.drivers.base import DriverError, NetworkHost, NetworkSource
from agent.fsutil import atomic_write
from agent.drivers.volumes import (DEFAULT_MAX_SIZE, VOLUME_ID_RE, InvalidVolumeSize, SnapshotAlreadyExists,
                                   SnapshotInfo, SnapshotNotFound, VolumeAlreadyExists,
                                   VolumeInfo, VolumeInUse, VolumeNotFound, export_name,
                                   valid_size, valid_snapshot_id, valid_volume_id)
from agent.qemu_img import QemuImgError
from agent.storage_node.daemon import NbdTls, StorageDaemon
from agent.storage_node.files import VolumeFiles, parse_snapshot_name, snapshot_name
from agent.storage_node.qmp import QmpClient, QmpError
from agent.storage_node.wanted import HOST_ID_RE, WantedExports
from agent.supervisor import SupervisorError

log = logging.getLogger(__name__)


def _json_map(path: Path, key: str) -> dict:
    """The map under `key` in the JSON file at `path` ({} when the file is missing or holds
    no such map); the caller checks its entries."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    raw = data.get(key, {}) if isinstance(data, dict) else {}
    return raw if isinstance(raw, dict) else {}


class Fences:
    """Volume id -> forced unexports so far (its export name's number), in one JSON file
    written atomically: {"fences": {id: n}}. Missing means 0."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, int]:
        raw = _json_map(self.path, "fences")
        good = {v: n for v, n in raw.items() if VOLUME_ID_RE.fullmatch(v)
                and isinstance(n, int) and not isinstance(n, bool) and n > 0}
        if len(good) != len(raw):
            log.warning("%s: ignoring entries that are no volume id and count", self.path)
        return good

    def _save(self, fences: dict[str, int]) -> None:
        body = json.dumps({"fences": dict(sorted(fences.items()))}, indent=1).encode() + b"\n"
        atomic_write(self.path, lambda f: f.write(body))

    def bump(self, volume_id: str) -> int:
        fences = self.load()
        fences[volume_id] = fences.get(volume_id, 0) + 1
        self._save(fences)
        return fences[volume_id]

    def drop(self, volume_id: str) -> None:
        fences = self.load()
        if fences.pop(volume_id, None) is not None:
            self._save(fences)


class HostPorts:
    """Host id -> the TCP port of that host's NBD server, in one JSON file written atomically:
    {"ports": {host: port}}. A port, once given, stays the host's (hosts dial what the
    controller recorded)."""

    def __init__(self, path: Path, first: int):
        self.path, self.first = Path(path), first

    def load(self) -> dict[str, int]:
        raw = _json_map(self.path, "ports")
        return {h: p for h, p in raw.items() if isinstance(h, str) and HOST_ID_RE.fullmatch(h)
                and isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536}

    def port(self, host: str) -> int:
        ports = self.load()
        if host not in ports:
            used = set(ports.values())
            port = self.first
            while port in used:
                port += 1
            if port > 65535:
                raise DriverError("no TCP port left for another host's NBD server",
                                  code="StorageDaemonNoPort", retryable=False)
            ports[host] = port
            body = json.dumps({"ports": dict(sorted(ports.items()))}, indent=1).encode() + b"\n"
            atomic_write(self.path, lambda f: f.write(body))
        return ports[host]


class _Snap(NamedTuple):
    """Where one snapshot lives: its file, its qcow2 name, and whether that file is a holder."""

    info: SnapshotInfo
    path: Path
    name: str
    held: bool


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except QemuImgError as e:
        raise DriverError(f"{what}: {e}", code=e.code, retryable=e.retryable) from e
    except QmpError as e:
        raise DriverError(f"{what}: {e}", code="StorageDaemonCommandFailed"
                          if e.code == "QmpCommandFailed" else "StorageDaemonUnavailable",
                          retryable=True) from e
    except SupervisorError as e:
        raise DriverError(f"{what}: {e}", code="StorageDaemon" + e.code, retryable=True) from e


class NbdBackend:
    """Volumes under `state_dir/volumes`, served on NBD host:port from inside `netns`."""

    capabilities = frozenset({"nbd", "grow_exported", "persistent_exports", "snapshots"})

    def __init__(self, state_dir: Path, host: str, port: int, *, netns: Optional[str] = None,
                 max_size: int = DEFAULT_MAX_SIZE, daemon: Optional[StorageDaemon] = None,
                 tls_dir: Optional[Path] = None):
        self.state_dir = Path(state_dir)
        self.max_size = max_size
        self.netns = netns
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        # Per-host TLS: no shared daemon at all (every export is some host's); else the one.
        self.daemon = None if self.tls_dir is not None else (
            daemon or StorageDaemon(self.state_dir, host, port, netns=netns))
        self.host = NetworkHost(host, port)
        self.ports = HostPorts(self.state_dir / "hosts.json", port)
        self._host_daemons: dict[str, StorageDaemon] = {}
        self.files = VolumeFiles(self.state_dir / "volumes")
        self.wanted = WantedExports(self.state_dir / "exports.json")
        self.fences = Fences(self.state_dir / "fences.json")
        self._lock = threading.RLock()

    def source(self, volume_id: str, fences: Optional[dict[str, int]] = None,
               host: str = "") -> NetworkSource:
        fences = self.fences.load() if fences is None else fences
        where = self.host if self.tls_dir is None else NetworkHost(self.host.name,
                                                                   self.ports.port(host))
        return NetworkSource("nbd", export_name(volume_id, fences.get(volume_id, 0)), (where,))

    # -- daemons ------------------------------------------------------------------------------
    def daemon_for(self, host: str) -> StorageDaemon:
        """The daemon serving `host`'s exports (the one daemon without per-host TLS)."""
        if self.tls_dir is None:
            return self.daemon
        if not HOST_ID_RE.fullmatch(host):
            raise DriverError(f"host {host!r} is not a host id", code="InvalidParameterValue",
                              retryable=False)
        d = self._host_daemons.get(host)
        if d is None:
            d = StorageDaemon(self.state_dir / "hosts" / host, self.host.name,
                              self.ports.port(host), netns=self.netns,
                              tls=NbdTls(self.tls_dir, f"CN={host}"))
            self._host_daemons[host] = d
        return d

    def daemon_pids(self) -> list[int]:
        """The pids of every daemon running now (for tests and status)."""
        return [p for h in self._hosts() if (p := self.daemon_for(h).pid()) is not None]

    def _hosts(self) -> list[str]:
        """Every host with a daemon (running or to run): "" alone without per-host TLS."""
        return [""] if self.tls_dir is None else sorted(self.ports.load())

    @contextlib.contextmanager
    def _live(self) -> Iterator[list[tuple[str, StorageDaemon, QmpClient]]]:
        """(host, daemon, QMP) of every daemon that runs now."""
        with contextlib.ExitStack() as stack:
            out = []
            for h in self._hosts():
                d = self.daemon_for(h)
                if d.pid() is not None:
                    out.append((h, d, stack.enter_context(d.qmp())))
            yield out

    @contextlib.contextmanager
    def _holding(self, volume_id: str) -> Iterator[tuple[Optional[StorageDaemon],
                                                          Optional[QmpClient]]]:
        """(daemon, QMP) of the running daemon that has the volume open, or (None, None)."""
        with self._live() as live:
            for _, d, q in live:
                if volume_id in d.open_nodes(q):
                    yield d, q
                    return
            yield None, None

    def _export_name(self, volume_id: str) -> str:
        return export_name(volume_id, self.fences.load().get(volume_id, 0))

    def _existing(self, volume_id: str) -> str:
        if not self.files.exists(valid_volume_id(volume_id)):
            raise VolumeNotFound(f"volume {volume_id} does not exist")
        return volume_id

    # -- the Protocol -----------------------------------------------------------------------
    def create(self, volume_id: str, size_bytes: int, from_snapshot: Optional[str] = None) -> None:
        valid_volume_id(volume_id)
        valid_size(size_bytes, self.max_size)
        if from_snapshot is not None:
            valid_snapshot_id(from_snapshot)
        with self._lock, _translated(f"create {volume_id}"):
            if self.files.exists(volume_id):
                have = self.files.size(volume_id)
                if have != size_bytes:
                    raise VolumeAlreadyExists(f"volume {volume_id} exists with {have} bytes")
                return
            if from_snapshot is None:
                self.files.create(volume_id, size_bytes)
                return
            snap = self._all_snapshots().get(from_snapshot)
            if snap is None:
                raise SnapshotNotFound(f"snapshot {from_snapshot} does not exist")
            if size_bytes < snap.info.size_bytes:
                raise InvalidVolumeSize(f"snapshot {from_snapshot} has {snap.info.size_bytes} "
                                        "bytes: a volume from it needs at least that")
            self.files.create_from_snapshot(volume_id, size_bytes, snap.path, snap.name)

    def grow(self, volume_id: str, size_bytes: int) -> None:
        valid_size(size_bytes, self.max_size)
        with self._lock, _translated(f"grow {volume_id}"):
            have = self.files.size(self._existing(volume_id))
            if size_bytes < have:
                raise InvalidVolumeSize(f"volume {volume_id} has {have} bytes: it never "
                                        f"shrinks to {size_bytes}")
            if size_bytes == have:
                return
            with self._holding(volume_id) as (d, q):
                if d is not None:
                    self._grow_open(d, q, volume_id, size_bytes)
                    return
            self.files.resize(volume_id, size_bytes)

    def _grow_open(self, d: StorageDaemon, q: QmpClient, volume_id: str,
                   size_bytes: int) -> None:
        """An NBD export takes the resize permission from its node (qemu 7.2), so the export
        steps aside while the node grows: removed hard (a connected host is cut off), the node
        grown, the export made again under the same name (no fence: the same host may go on).
        The host's QEMU reconnects and learns the new size when its agent grows the disk
        (agent/libvirt/nbd_reconnect.py); a guest request in between pauses the guest (error
        policy "stop") and is retried on resume, so nothing reaches the guest's filesystem."""
        exported = volume_id in d.served(q)
        if exported:
            self._del_export(d, q, volume_id, force=True)
        try:
            d.resize(q, volume_id, size_bytes)
        finally:
            if exported:
                d.add_export(q, volume_id, self._export_name(volume_id))

    def _del_export(self, d: StorageDaemon, q: QmpClient, volume_id: str, *,
                    force: bool = False) -> None:
        """Remove the export: refused (VolumeInUse) while a client is connected, or, forced,
        cutting the clients off (QMP block-export-del mode "hard" closes their connections)."""
        try:
            d.del_export(q, volume_id, mode="hard" if force else "safe")
        except QmpError as e:
            if e.code == "QmpCommandFailed" and "in use" in e.desc:
                raise VolumeInUse(f"volume {volume_id} still has an NBD client connected: "
                                  "detach it first") from e
            raise

    def delete(self, volume_id: str) -> None:
        valid_volume_id(volume_id)
        with self._lock, _translated(f"delete {volume_id}"):
            if volume_id in self.wanted.load():
                raise VolumeInUse(f"volume {volume_id} is exported: unexport it first")
            with self._live() as live:
                for _, d, q in live:  # a node left open by an interrupted export
                    if volume_id in d.served(q):
                        d.del_export(q, volume_id)
                    d.close_volume(q, volume_id)
            self._delete_or_hold(volume_id)
            self.fences.drop(volume_id)

    def export(self, volume_id: str, host: Optional[str] = None) -> NetworkSource:
        """Serve the volume; with per-host TLS only to `host` (required then: HostRequired),
        without it to every host (`host` ignored)."""
        if self.tls_dir is None:
            host = ""
        elif not host:
            raise DriverError(f"export {volume_id}: this node serves each volume to one host "
                              "only (per-host TLS): say which", code="HostRequired",
                              retryable=False)
        elif not HOST_ID_RE.fullmatch(host):
            raise DriverError(f"host {host!r} is not a host id", code="InvalidParameterValue",
                              retryable=False)
        with self._lock, _translated(f"export {volume_id}"):
            self._existing(volume_id)
            self.wanted.add(volume_id, host)  # first: a crash from here on is repaired by ensure()
            self._reconcile()
            return self.source(volume_id, host=host)

    def unexport(self, volume_id: str, *, force: bool = False) -> None:
        valid_volume_id(volume_id)
        with self._lock, _translated(f"unexport {volume_id}"):
            with self._live() as live:
                serving = [(d, q) for _, d, q in live if volume_id in d.served(q)]
                if force and (serving or volume_id in self.wanted.load()):
                    # First: a crash from here on still fences the next export. Also when the
                    # daemon is down: its clients reconnect to the old name once it is back.
                    self.fences.bump(volume_id)
                for d, q in serving:
                    self._del_export(d, q, volume_id, force=force)
                for _, d, q in live:
                    d.close_volume(q, volume_id)
            self.wanted.discard(volume_id)

    def volumes(self) -> list[VolumeInfo]:
        with self._lock, _translated("list volumes"):
            wanted = self.wanted.load()
            return [VolumeInfo(v, self.files.size(v), v in wanted) for v in self.files.ids()]

    def volume(self, volume_id: str) -> Optional[VolumeInfo]:
        with self._lock, _translated(f"look up {volume_id}"):
            if not self.files.exists(valid_volume_id(volume_id)):
                return None
            return VolumeInfo(volume_id, self.files.size(volume_id),
                              volume_id in self.wanted.load())

    def exports(self) -> dict[str, NetworkSource]:
        with self._lock, _translated("list exports"):
            with self._live() as live:
                served = {v: h for h, d, q in live for v in d.served(q)}
            fences = self.fences.load()
            return {v: self.source(v, fences, served[v]) for v in sorted(served)}

    def ensure(self) -> None:
        with self._lock, _translated("reconcile exports"):
            self._reconcile()

    def snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        valid_volume_id(volume_id)
        valid_snapshot_id(snapshot_id)
        with self._lock, _translated(f"snapshot {volume_id} as {snapshot_id}"):
            have = self._all_snapshots().get(snapshot_id)
            if have is not None:
                if have.info.volume_id != volume_id:
                    raise SnapshotAlreadyExists(f"snapshot {snapshot_id} is one of volume "
                                                f"{have.info.volume_id}")
                return self._measured(have.info, have.path, have.name)
            self._existing(volume_id)
            path = self.files.path(volume_id)
            with self._holding(volume_id) as (d, q):
                if d is not None:  # exported: clients may be writing
                    size = d.open_nodes(q)[volume_id]
                    name = snapshot_name(snapshot_id, size)
                    d.snapshot_internal(q, volume_id, name)
                    return self._measured(SnapshotInfo(snapshot_id, volume_id, size), path, name)
            size = self.files.size(volume_id)
            name = snapshot_name(snapshot_id, size)
            self.files.snapshot_create(path, name)
            return self._measured(SnapshotInfo(snapshot_id, volume_id, size), path, name)

    def _measured(self, info: SnapshotInfo, path: Path, name: str) -> SnapshotInfo:
        """`info` with what the snapshot stores (files.py snapshot_stored_bytes; works while
        the daemon holds the file open). Measured on every answer, not kept: the files are the
        only record, and the measure costs one qemu-img run of a few ms."""
        return SnapshotInfo(info.snapshot_id, info.volume_id, info.size_bytes,
                            stored_bytes=self.files.snapshot_stored_bytes(path, name))

    def delete_snapshot(self, snapshot_id: str) -> None:
        valid_snapshot_id(snapshot_id)
        with self._lock, _translated(f"delete snapshot {snapshot_id}"):
            snap = self._all_snapshots().get(snapshot_id)
            if snap is None:
                return
            vid = snap.info.volume_id
            if not snap.held:
                with self._holding(vid) as (d, q):
                    if d is not None:
                        d.delete_snapshot_internal(q, vid, snap.name)
                        return
            self.files.snapshot_delete(snap.path, snap.name)
            if snap.held:
                self._drop_holder_if_empty(snap.path)

    def snapshots(self) -> list[SnapshotInfo]:
        with self._lock, _translated("list snapshots"):
            return [s.info for _, s in sorted(self._all_snapshots().items())]

    def _all_snapshots(self) -> dict[str, _Snap]:
        """Snapshot id -> where it lives, read from the files themselves (volumes and holders;
        one `qemu-img info -U` each). A holder left without snapshots (a crash between deleting
        its last one and removing it) is removed on the way."""
        out: dict[str, _Snap] = {}
        places = [(v, self.files.path(v), False) for v in self.files.ids()]
        places += [(v, p, True) for v, p in self.files.holders()]
        for vid, path, held in places:
            found = 0
            for name in self.files.snapshot_names(path):
                parsed = parse_snapshot_name(name)
                if parsed is not None:
                    found += 1
                    out[parsed[0]] = _Snap(SnapshotInfo(parsed[0], vid, parsed[1]), path, name,
                                           held)
            if held and not found:
                self._drop_holder_if_empty(path)
        return out

    def _drop_holder_if_empty(self, path: Path) -> None:
        if not any(parse_snapshot_name(n) for n in self.files.snapshot_names(path)):
            log.info("holder %s has no snapshot left: removed", path.name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _delete_or_hold(self, volume_id: str) -> None:
        """Delete a closed volume's file, or keep it as a holder while it has snapshots."""
        path = self.files.path(volume_id)
        if path.is_file():
            kept = sorted(p[0] for n in self.files.snapshot_names(path)
                          if (p := parse_snapshot_name(n)) is not None)
            if kept:
                held = self.files.hold(volume_id, kept[0])
                log.info("volume %s deleted; its file is kept as %s for snapshots %s",
                         volume_id, held.name, kept)
                return
        self.files.delete(volume_id)

    # -- beyond the Protocol ----------------------------------------------------------------
    def stop(self) -> bool:
        """Stop the daemon (exports stay wanted: the next ensure() serves them again)."""
        with self._lock:
            stopped = [self.daemon_for(h).stop() for h in self._hosts()]
            return any(stopped)

    def _reconcile(self) -> None:
        """Every daemon serves exactly its host's wanted exports: first each stops serving and
        closes what is no longer its own (so a volume moving between hosts' daemons is free to
        open), then each opens and exports what it lacks. A volume that cannot be served yet
        (its old host still holds it) does not stop the others: the first error is raised at
        the end."""
        self.files.drop_partial()
        wanted = self.wanted.load_hosts()
        gone = {v for v in wanted if not self.files.exists(v)}
        if gone:
            log.warning("volumes %s are wanted exported but have no file: dropped", sorted(gone))
            wanted = {v: h for v, h in wanted.items() if v not in gone}
            self.wanted.save(wanted)
        if self.tls_dir is None:
            wanted = {v: "" for v in wanted}
        elif hostless := sorted(v for v, h in wanted.items() if not h):
            # Wanted before per-host TLS was turned on: served to nobody until the controller
            # says whose it is (it pushes every attached volume again when it starts).
            log.warning("volumes %s are wanted exported for no host: not served", hostless)
            wanted = {v: h for v, h in wanted.items() if h}
        hosts = sorted(set(self._hosts()) | set(wanted.values()))
        mine = {h: {v for v, w in wanted.items() if w == h} for h in hosts}
        for h in hosts:  # daemons of hosts without exports run too: ensure() restarts them
            how = self.daemon_for(h).ensure_running()
            if how != "running":
                log.info("storage daemon %s %s", h or "", how)
        first: Optional[Exception] = None
        with self._live() as live:
            for h, d, q in live:
                served = d.served(q)
                for vid in sorted(served - mine.get(h, set())):
                    try:
                        d.del_export(q, vid)
                    except QmpError as e:  # a client still holds it: next pass
                        log.warning("cannot remove unwanted export %s yet: %s", vid, e)
                opened = d.open_nodes(q)
                for vid in sorted(set(opened) - mine.get(h, set()) - d.served(q)):
                    d.close_volume(q, vid)
            for h, d, q in live:
                served, opened = d.served(q), d.open_nodes(q)
                for vid in sorted(mine.get(h, set()) - served):
                    try:
                        if vid not in opened:
                            d.open_volume(q, vid, self.files.path(vid))
                        d.add_export(q, vid, self._export_name(vid))
                    except QmpError as e:
                        log.warning("cannot serve %s to host %s yet: %s", vid, h or "*", e)
                        first = first or e
        if first is not None:
            raise first
