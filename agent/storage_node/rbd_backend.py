"""Ceph RBD as a VolumeBackend (issue 10; docs/ceph-rbd.md): volumes are RBD images in one pool,
driven with the `rbd` and `ceph` command-line tools (argv lists, never a shell; every id is
validated before it reaches an argv).

The Ceph cluster itself is the serving process, so "export" here records the volume as
wanted-attached (persisted in state_dir/exports.json, like the NBD node's export set) and
returns a NetworkSource with protocol "rbd", name "pool/volume-id" and the monitors as hosts.
With auth none any host that reaches the monitors reaches every image. With cephx
(host_user_prefix; rbd_cephx.py) each export is for one host, whose own Ceph user's caps name
exactly its images: the source carries that user and key, exports.json also keeps whom each
export is for, and the caps are rewritten on every change (and checked once by ensure()).
unexport refuses while a client has the image open (it shows as a watcher in `rbd status`); a
forced unexport blocklists every watcher's address (`ceph osd blocklist add`), which cuts that
client off for good (until the blocklist entry expires, an hour by default), so the name stays
the volume id.

RBD resizes live (librbd tells an open QEMU client the new size), hence "grow_exported" without
the NBD node's VolumeInUse.

Snapshots ("snapshots") are RBD snapshots, named by their ids: `rbd snap create pool/vol@snap-…`.
Crash-consistent also while a QEMU has the image open: the request goes to the client holding
the image's exclusive lock (QEMU's librbd), which notifies quiesce (QEMU registers no handler,
so that is acknowledged at once), blocks new writes, waits for those in flight and flushes its
cache, then takes the snapshot and lets writes go on (librbd operation/SnapshotCreateRequest).
So every write the guest saw complete is in it, every write issued after it is not, and a write
in flight is wholly one or the other. Metadata only: RADOS clones an object when it is first
written after the snapshot (copy-on-write per 4 MiB object).
- A volume from a snapshot is an `rbd clone` in clone format 2 (forced per call: pacific's
  "auto" picks format 1, which needs `snap protect`, while require_min_compat_client is below
  mimic, as on a fresh cluster), made under a temporary name, grown to the size asked, and
  renamed to the volume id as the last step (a create that dies halfway leaves only the
  temporary image, which the next try removes). It shares the snapshot's data until written.
- Deleting a snapshot that clones still read from is allowed with format 2: librbd moves it to
  its trash namespace (renamed, so no longer listed) and removes it with its last clone.
- Deleting a volume that still has snapshots renames its image to `held.<volume id>.<image
  id>`, which is no volume id: the volume is gone (its id is free again), its snapshots stay
  listed and usable, and clones keep their parent (clones refer to the image id, not its name).
  Deleting the last snapshot of a held image removes the image, with
  rbd_move_parent_to_trash_on_remove: if clones still read from its (trashed) snapshots, librbd
  parks it in the RBD trash and removes it with its last clone. ensure() removes held images left
  without snapshots (a crash between the two steps). The images and snapshots in the pool are
  the only record: no second index to get out of step.
- What a snapshot stores (SnapshotInfo.stored_bytes, billed by the controller) is `rbd du`'s
  used size of that snapshot, measured by snapshot() on every answer: with fast-diff (the
  default features since luminous) read from the object map, else by listing the objects. rbd du
  counts a snapshot's objects that differ from the image's previous snapshot (4 MiB objects
  written in between), so a snapshot after another one stores only what changed, as EC2 bills.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from agent.contract.storage_v1 import HOST_ID_RE
from agent.drivers.base import CephAuth, DriverError, NetworkHost, NetworkSource
from agent.drivers.volumes import (DEFAULT_MAX_SIZE, MiB, SNAPSHOT_ID_RE, VOLUME_ID_RE,
                                   InvalidVolumeSize, SnapshotAlreadyExists, SnapshotInfo,
                                   SnapshotNotFound, VolumeAlreadyExists, VolumeInfo, VolumeInUse,
                                   VolumeNotFound, valid_size, valid_snapshot_id,
                                   valid_volume_id)
from agent.storage_node.rbd_cephx import CephxUsers, images_of, osd_caps

#: Each rbd/ceph call is bounded: a cluster without quorum otherwise hangs for 300 s.
CALL_TIMEOUT = 30.0
#: The image of a deleted volume kept for its snapshots: held.<volume id>.<RBD image id>.
HELD_RE = re.compile(r"held\.(vol-[0-9a-f]{17})\.[0-9a-f]+")
#: Config for the calls that need it, given per call so no cluster or ceph.conf setting is
#: assumed: clones in format 2 (no protect; a snapshot with clones can be deleted) ...
CLONE_FORMAT_2 = ("--rbd_default_clone_format", "2")
#: ... and an image whose deleted snapshots still feed clones goes to the RBD trash on `rbd rm`
#: (librbd removes it with its last clone) instead of failing with "has snapshots".
PARENT_TO_TRASH = ("--rbd_move_parent_to_trash_on_remove", "true")
_GONE = "No such file or directory"


class RbdError(DriverError):
    code = "StorageBackendError"
    retryable = True


def parse_du(text: str, image: str, snapshot: str) -> int:
    """The used bytes of `image@snapshot` in `rbd du --format json` output:
    {"images": [{"name", "snapshot", "used_size", ...}], ...}."""
    try:
        data = json.loads(text)
        for e in data["images"]:
            if e.get("name") == image and e.get("snapshot") == snapshot:
                used = e["used_size"]
                if isinstance(used, int) and not isinstance(used, bool) and used >= 0:
                    return used
                break
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    raise RbdError(f"rbd du gave no used size for {image}@{snapshot}: {text[:300]!r}")


class _Snap(NamedTuple):
    """One snapshot and the image it lives in (the volume's, or a held one)."""

    info: SnapshotInfo
    image: str


class _Pool(NamedTuple):
    """What `rbd ls -l` shows: image name -> (size, RBD image id), and the user snapshots of
    volumes and held images by id."""

    images: dict[str, tuple[int, str]]
    snaps: dict[str, _Snap]


class _State(NamedTuple):
    """The persisted export set: wanted volumes, whom each is for, hosts with a user."""

    wanted: set[str]
    hosts: dict[str, str]
    users: set[str]


class RbdBackend:
    capabilities = frozenset({"rbd", "grow_exported", "persistent_exports", "snapshots"})

    def __init__(self, state_dir: Path, pool: str, mon_hosts: Sequence[NetworkHost], *,
                 conf: Optional[Path] = None, client_id: Optional[str] = None,
                 keyring: Optional[Path] = None, host_user_prefix: Optional[str] = None,
                 netns: Optional[str] = None, max_size: int = DEFAULT_MAX_SIZE):
        """`host_user_prefix` set: cephx per host (rbd_cephx.py), each export for one host
        and opened only with that host's user, client.<prefix><host id>. None: auth none,
        every client of the cluster reaches every image. `keyring`: the node's own key."""
        if not mon_hosts:
            raise ValueError("RBD needs at least one monitor host")
        # The pool name goes into the NetworkSource; check it the same way now.
        NetworkSource("rbd", f"{pool}/{'vol-' + '0' * 17}", tuple(mon_hosts))
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.pool, self.mon_hosts = pool, tuple(mon_hosts)
        self.conf, self.client_id, self.netns = conf, client_id, netns
        self.keyring = keyring
        self.max_size = max_size
        self.cephx = (CephxUsers(self._run, host_user_prefix)
                      if host_user_prefix is not None else None)
        #: host -> the volume ids its caps were last set for (by this process).
        self._synced: dict[str, frozenset[str]] = {}

    # -- the tools ------------------------------------------------------------------------------
    def _argv(self, tool: str, *args: str) -> list[str]:
        argv = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv.append(tool)
        if self.conf is not None:
            argv += ["--conf", str(self.conf)]
        if self.client_id is not None:
            argv += ["--id", self.client_id]
        if self.keyring is not None:
            argv += ["--keyring", str(self.keyring)]
        return argv + ["--client_mount_timeout", "20", *args]

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        argv = self._argv(tool, *args)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise RbdError(f"{tool} {' '.join(args)} timed out after {CALL_TIMEOUT:.0f} s") from e

    def _ok(self, tool: str, *args: str) -> str:
        r = self._run(tool, *args)
        if r.returncode != 0:
            raise RbdError(f"{tool} {' '.join(args)} failed ({r.returncode}): "
                           f"{r.stderr.strip()[-500:]}")
        return r.stdout

    def _image(self, vid: str) -> str:
        return f"{self.pool}/{vid}"

    def _info(self, vid: str) -> Optional[dict]:
        """`rbd info` of the volume's image, or None when there is none."""
        r = self._run("rbd", "info", "--format", "json", self._image(vid))
        if r.returncode != 0:
            if "No such file or directory" in r.stderr:
                return None
            raise RbdError(f"rbd info {vid} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout)

    def _watchers(self, vid: str) -> list[str]:
        """Addresses of the clients that have the image open now."""
        r = self._run("rbd", "status", "--format", "json", self._image(vid))
        if r.returncode != 0:
            if "No such file or directory" in r.stderr:
                return []
            raise RbdError(f"rbd status {vid} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return [w["address"] for w in json.loads(r.stdout).get("watchers", [])]

    def _pool(self) -> _Pool:
        """One `rbd ls -l` of the pool: every image and its user snapshots (snapshots in
        librbd's trash namespace are listed by no name of ours)."""
        out = self._ok("rbd", "ls", "-l", "--format", "json", self.pool)
        images: dict[str, tuple[int, str]] = {}
        snaps: dict[str, _Snap] = {}
        for e in json.loads(out or "[]"):
            name = e["image"]
            vid = name if VOLUME_ID_RE.fullmatch(name) else (
                m[1] if (m := HELD_RE.fullmatch(name)) else None)
            if "snapshot" not in e:
                images[name] = (e["size"], e["id"])
            elif vid is not None and SNAPSHOT_ID_RE.fullmatch(e["snapshot"]):
                snaps[e["snapshot"]] = _Snap(SnapshotInfo(e["snapshot"], vid, e["size"]), name)
        return _Pool(images, snaps)

    def _remove(self, image: str) -> None:
        """`rbd rm` of an image; gone is success. Its deleted snapshots may still feed clones:
        then librbd parks it in the trash until the last clone goes (PARENT_TO_TRASH)."""
        r = self._run("rbd", "rm", "--no-progress", *PARENT_TO_TRASH, f"{self.pool}/{image}")
        if r.returncode != 0 and _GONE not in r.stderr:
            if "watchers" in r.stderr:
                raise VolumeInUse(f"image {image} is still open by a client")
            raise RbdError(f"rbd rm {image} failed: {r.stderr.strip()[-500:]}")

    def _sweep_held(self, pool: _Pool) -> None:
        """Remove held images that no snapshot needs any more."""
        needed = {s.image for s in pool.snaps.values()}
        for image in sorted(pool.images):
            if HELD_RE.fullmatch(image) and image not in needed:
                self._remove(image)

    # -- persisted wanted-attached set ------------------------------------------------------------
    @property
    def _exports_file(self) -> Path:
        return self.state_dir / "exports.json"

    def _state(self) -> _State:
        """exports.json: {"exports": [volume ids], "hosts": {volume id: host id} (cephx: whom
        each is exported to), "users": [hosts that have a Ceph user]}."""
        try:
            data = json.loads(self._exports_file.read_text())
        except FileNotFoundError:
            return _State(set(), {}, set())
        wanted = {v for v in data.get("exports", []) if VOLUME_ID_RE.fullmatch(v)}
        hosts = {v: h for v, h in data.get("hosts", {}).items()
                 if v in wanted and isinstance(h, str) and HOST_ID_RE.fullmatch(h)}
        users = {h for h in data.get("users", []) if HOST_ID_RE.fullmatch(h)}
        return _State(wanted, hosts, users | set(hosts.values()))

    def _wanted(self) -> set[str]:
        return self._state().wanted

    def _save(self, wanted: set[str], hosts: Optional[dict[str, str]] = None,
              users: Optional[set[str]] = None) -> None:
        old = self._state()
        hosts = {v: h for v, h in (old.hosts if hosts is None else hosts).items() if v in wanted}
        users = (old.users if users is None else users) | set(hosts.values())
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".exports.")
        with os.fdopen(fd, "w") as f:
            json.dump({"exports": sorted(wanted), "hosts": dict(sorted(hosts.items())),
                       "users": sorted(users)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._exports_file)

    def _source(self, vid: str, host: Optional[str] = None) -> NetworkSource:
        """The image as hosts open it; with cephx and a host, as that host's user."""
        auth = None
        if self.cephx is not None and host is not None:
            auth = CephAuth(*self.cephx.key(host))
        return NetworkSource("rbd", self._image(vid), self.mon_hosts, auth)

    # -- cephx: each host's caps name its images --------------------------------------------------
    def _info_by_id(self, image_id: str) -> dict:
        """`rbd info` of an image by its id (a clone's parent)."""
        return json.loads(self._ok("rbd", "info", "--format", "json", "--pool", self.pool,
                                   "--image-id", image_id))

    def _sync_caps(self, hosts_to_sync: set[str], state: Optional[_State] = None) -> None:
        """Rewrite the caps of these hosts' users to the images exported to them now."""
        if self.cephx is None or not hosts_to_sync:
            return
        st = state or self._state()
        todo = {h: frozenset(v for v, x in st.hosts.items() if x == h) for h in hosts_to_sync}
        todo = {h: v for h, v in todo.items() if self._synced.get(h) != v}
        if not todo:  # the images of an export never change (nor a clone's parents)
            return
        all_ids = [i for _, i in self._pool().images.values()]
        for host, vids in sorted(todo.items()):
            self._synced.pop(host, None)
            grants = images_of(vids, self._info, self._info_by_id)
            self.cephx.set_caps(host, osd_caps(self.pool, grants, all_ids))
            self._synced[host] = vids

    # -- VolumeBackend ----------------------------------------------------------------------------
    def create(self, volume_id: str, size_bytes: int, from_snapshot: Optional[str] = None) -> None:
        valid_volume_id(volume_id)
        valid_size(size_bytes, self.max_size)
        if from_snapshot is not None:
            valid_snapshot_id(from_snapshot)
        info = self._info(volume_id)
        if info is None:
            if from_snapshot is not None:
                self._clone(volume_id, size_bytes, from_snapshot)
                return
            r = self._run("rbd", "create", "--size", f"{size_bytes // MiB}M",
                          self._image(volume_id))
            if r.returncode == 0:
                return
            if "already exists" not in r.stderr:
                raise RbdError(f"rbd create {volume_id} failed: {r.stderr.strip()[-500:]}")
            info = self._info(volume_id)  # a concurrent create won
            if info is None:
                raise RbdError(f"rbd create {volume_id}: exists and then did not")
        if info["size"] != size_bytes:
            raise VolumeAlreadyExists(f"volume {volume_id} exists with {info['size']} bytes")

    def _clone(self, volume_id: str, size_bytes: int, snapshot_id: str) -> None:
        """The volume as a format-2 clone of the snapshot, grown to size_bytes; it appears under
        its id only when complete (the rename is the last step)."""
        snap = self._pool().snaps.get(snapshot_id)
        if snap is None:
            raise SnapshotNotFound(f"snapshot {snapshot_id} does not exist")
        if size_bytes < snap.info.size_bytes:
            raise InvalidVolumeSize(f"snapshot {snapshot_id} has {snap.info.size_bytes} bytes: "
                                    "a volume from it needs at least that")
        tmp = f"new.{volume_id}"
        self._remove(tmp)  # left by a create that died halfway
        self._ok("rbd", "clone", *CLONE_FORMAT_2, f"{self.pool}/{snap.image}@{snapshot_id}",
                 self._image(tmp))
        if size_bytes > snap.info.size_bytes:  # beyond the parent overlap reads as zeros
            self._ok("rbd", "resize", "--no-progress", "--size", f"{size_bytes // MiB}M",
                     self._image(tmp))
        r = self._run("rbd", "rename", self._image(tmp), self._image(volume_id))
        if r.returncode != 0:
            self._remove(tmp)
            if "exists" not in r.stderr:
                raise RbdError(f"rbd rename to {volume_id} failed: {r.stderr.strip()[-500:]}")
            self.create(volume_id, size_bytes)  # a concurrent create won: compare sizes

    def grow(self, volume_id: str, size_bytes: int) -> None:
        valid_volume_id(volume_id)
        valid_size(size_bytes, self.max_size)
        info = self._info(volume_id)
        if info is None:
            raise VolumeNotFound(f"volume {volume_id} does not exist")
        if size_bytes < info["size"]:
            raise InvalidVolumeSize(f"volume {volume_id} is {info['size']} bytes; "
                                    f"{size_bytes} would shrink it")
        if size_bytes > info["size"]:  # no --allow-shrink: rbd refuses to shrink by itself
            self._ok("rbd", "resize", "--no-progress", "--size", f"{size_bytes // MiB}M",
                     self._image(volume_id))

    def delete(self, volume_id: str) -> None:
        """Remove the image, or hide it as held.<id>.<image id> while it has snapshots."""
        valid_volume_id(volume_id)
        if volume_id in self._wanted():
            raise VolumeInUse(f"volume {volume_id} is exported: unexport it first")
        pool = self._pool()
        if volume_id not in pool.images:
            return
        if not any(s.image == volume_id for s in pool.snaps.values()):
            self._remove(volume_id)
            return
        if self._watchers(volume_id):
            raise VolumeInUse(f"volume {volume_id} is still open by a client")
        held = f"held.{volume_id}.{pool.images[volume_id][1]}"
        self._ok("rbd", "rename", self._image(volume_id), f"{self.pool}/{held}")

    def export(self, volume_id: str, host: Optional[str] = None) -> NetworkSource:
        """Without cephx `host` is not used: every client of the cluster reaches every image.
        With cephx the image is granted to `host`'s user only (required: HostRequired); for
        another host than before it moves: refused while a client still has it open
        (VolumeInUse, retryable: the old host lets go, or a force detach cuts it off), then
        the old host's caps lose it and the new host's gain it."""
        valid_volume_id(volume_id)
        if self.cephx is not None:
            if host is None:
                raise DriverError(f"volume {volume_id}: this node grants each image to one "
                                  "host's Ceph user (cephx): say which", code="HostRequired",
                                  retryable=False)
            if not HOST_ID_RE.fullmatch(host):
                raise DriverError(f"host id {host!r} is not valid",
                                  code="InvalidParameterValue", retryable=False)
        else:
            host = None
        st = self._state()
        old = st.hosts.get(volume_id)
        if volume_id not in st.wanted or old != host:
            if volume_id not in st.wanted and self._info(volume_id) is None:
                raise VolumeNotFound(f"volume {volume_id} does not exist")
            if volume_id in st.wanted and old is not None and self._watchers(volume_id):
                raise VolumeInUse(f"volume {volume_id} is still open (by host {old}): it "
                                  f"moves to {host} once that lets go")
            hosts = {**st.hosts, volume_id: host} if host is not None else st.hosts
            self._save(st.wanted | {volume_id}, hosts)
        # Also when nothing changed here: caps a failed call left behind are set again.
        self._sync_caps({h for h in (old, host) if h is not None})
        return self._source(volume_id, host)

    def unexport(self, volume_id: str, *, force: bool = False) -> None:
        valid_volume_id(volume_id)
        wanted = self._wanted()
        if volume_id not in wanted:
            return
        watchers = self._watchers(volume_id)
        if watchers and not force:
            raise VolumeInUse(f"volume {volume_id} is open by {len(watchers)} client(s)")
        for addr in watchers:
            # Cut the client off at the OSDs: it can neither read nor write any more. (Caps
            # alone would not: an open session keeps its ticket's caps until it renews it.)
            self._ok("ceph", "osd", "blocklist", "add", addr)
        host = self._state().hosts.get(volume_id)
        self._save(wanted - {volume_id})
        if host is not None:  # new sessions of its user no longer reach the image
            self._sync_caps({host})

    def volumes(self) -> list[VolumeInfo]:
        images, wanted = self._pool().images, self._wanted()
        return [VolumeInfo(v, images[v][0], v in wanted) for v in sorted(images)
                if VOLUME_ID_RE.fullmatch(v)]

    def volume(self, volume_id: str) -> VolumeInfo | None:
        # The pool's listing is one call with every size; no per-image call is cheaper.
        size = self._pool().images.get(valid_volume_id(volume_id), (None,))[0]
        return None if size is None else VolumeInfo(volume_id, size, volume_id in self._wanted())

    def exports(self) -> dict[str, NetworkSource]:
        existing = {v.volume_id for v in self.volumes()}
        st = self._state()
        return {v: self._source(v, st.hosts.get(v)) for v in sorted(st.wanted & existing)}

    def ensure(self) -> None:
        """The cluster serves every image by itself: check it answers, forget wanted exports
        whose image is gone and remove held images left without snapshots. With cephx, every
        known host's caps are what its exports say (once after a start, then only changes:
        this repairs a call that failed or a crash between saving and rewriting caps)."""
        pool = self._pool()
        st = self._state()
        if gone := {v for v in st.wanted if v not in pool.images}:
            self._save(st.wanted - gone)
            st = self._state()
        self._sweep_held(pool)
        self._sync_caps(st.users, st)

    def snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        valid_volume_id(volume_id)
        valid_snapshot_id(snapshot_id)
        pool = self._pool()
        have = pool.snaps.get(snapshot_id)
        if have is None:
            if volume_id not in pool.images:
                raise VolumeNotFound(f"volume {volume_id} does not exist")
            # Sent to the client holding the exclusive lock, if one does (see the docstring).
            r = self._run("rbd", "snap", "create", "--no-progress",
                          f"{self._image(volume_id)}@{snapshot_id}")
            if r.returncode != 0 and "exists" not in r.stderr:  # exists: a concurrent call
                if _GONE in r.stderr:
                    raise VolumeNotFound(f"volume {volume_id} does not exist")
                raise RbdError(f"rbd snap create {volume_id}@{snapshot_id} failed: "
                               f"{r.stderr.strip()[-500:]}")
            have = self._pool().snaps.get(snapshot_id)
            if have is None:
                raise RbdError(f"snapshot {snapshot_id} was created and is not listed")
        if have.info.volume_id != volume_id:
            raise SnapshotAlreadyExists(f"snapshot {snapshot_id} is one of volume "
                                        f"{have.info.volume_id}")
        used = parse_du(self._ok("rbd", "du", "--format", "json",
                                 f"{self.pool}/{have.image}@{snapshot_id}"), have.image, snapshot_id)
        i = have.info
        return SnapshotInfo(i.snapshot_id, i.volume_id, i.size_bytes, stored_bytes=used)

    def delete_snapshot(self, snapshot_id: str) -> None:
        valid_snapshot_id(snapshot_id)
        snap = self._pool().snaps.get(snapshot_id)
        if snap is None:
            return
        # Clones of it keep reading it: librbd moves it to its trash namespace (format 2).
        r = self._run("rbd", "snap", "rm", "--no-progress",
                      f"{self.pool}/{snap.image}@{snapshot_id}")
        if r.returncode != 0 and _GONE not in r.stderr:
            raise RbdError(f"rbd snap rm {snap.image}@{snapshot_id} failed: "
                           f"{r.stderr.strip()[-500:]}")
        if HELD_RE.fullmatch(snap.image):
            self._sweep_held(self._pool())

    def snapshots(self) -> list[SnapshotInfo]:
        return [s.info for _, s in sorted(self._pool().snaps.items())]
