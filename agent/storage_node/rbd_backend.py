"""Ceph RBD as a VolumeBackend (issue 10; docs/ceph-rbd.md): volumes are RBD images in one pool,
driven with the `rbd` and `ceph` command-line tools (argv lists, never a shell; every id is
validated before it reaches an argv).

The Ceph cluster itself is the serving process: an image is reachable by any host that can reach
the monitors, so "export" here records the volume as wanted-attached (persisted in
state_dir/exports.json, like the NBD node's export set) and returns a NetworkSource with protocol
"rbd", name "pool/volume-id" and the monitors as hosts. unexport refuses while a client has the
image open (it shows as a watcher in `rbd status`); a forced unexport blocklists every watcher's
address (`ceph osd blocklist add`), which cuts that client off for good (until the blocklist
entry expires, an hour by default), so the name stays the volume id.

RBD resizes live (librbd tells an open QEMU client the new size), hence "grow_exported" without
the NBD node's VolumeInUse. Snapshots are not implemented yet (no "snapshots" capability): an
RBD snapshot belongs to its image, and the contract's "outlives its volume" needs a clone per
snapshot (see docs/ceph-rbd.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from agent.drivers.base import DriverError, NetworkHost, NetworkSource
from agent.drivers.volumes import (DEFAULT_MAX_SIZE, MiB, VOLUME_ID_RE, InvalidVolumeSize,
                                   VolumeAlreadyExists, VolumeInfo, VolumeInUse, VolumeNotFound,
                                   valid_size, valid_volume_id)

#: Each rbd/ceph call is bounded: a cluster without quorum otherwise hangs for 300 s.
CALL_TIMEOUT = 30.0


class RbdError(DriverError):
    code = "StorageBackendError"
    retryable = True


class RbdBackend:
    capabilities = frozenset({"rbd", "grow_exported", "persistent_exports"})

    def __init__(self, state_dir: Path, pool: str, mon_hosts: Sequence[NetworkHost], *,
                 conf: Optional[Path] = None, client_id: Optional[str] = None,
                 netns: Optional[str] = None, max_size: int = DEFAULT_MAX_SIZE):
        if not mon_hosts:
            raise ValueError("RBD needs at least one monitor host")
        # The pool name goes into the NetworkSource; check it the same way now.
        NetworkSource("rbd", f"{pool}/{'vol-' + '0' * 17}", tuple(mon_hosts))
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.pool, self.mon_hosts = pool, tuple(mon_hosts)
        self.conf, self.client_id, self.netns = conf, client_id, netns
        self.max_size = max_size

    # -- the tools ------------------------------------------------------------------------------
    def _argv(self, tool: str, *args: str) -> list[str]:
        argv = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv.append(tool)
        if self.conf is not None:
            argv += ["--conf", str(self.conf)]
        if self.client_id is not None:
            argv += ["--id", self.client_id]
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

    # -- persisted wanted-attached set ------------------------------------------------------------
    @property
    def _exports_file(self) -> Path:
        return self.state_dir / "exports.json"

    def _wanted(self) -> set[str]:
        try:
            data = json.loads(self._exports_file.read_text())
        except FileNotFoundError:
            return set()
        return {v for v in data.get("exports", []) if VOLUME_ID_RE.fullmatch(v)}

    def _save(self, wanted: set[str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".exports.")
        with os.fdopen(fd, "w") as f:
            json.dump({"exports": sorted(wanted)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._exports_file)

    def _source(self, vid: str) -> NetworkSource:
        return NetworkSource("rbd", self._image(vid), self.mon_hosts)

    # -- VolumeBackend ----------------------------------------------------------------------------
    def create(self, volume_id: str, size_bytes: int, from_snapshot: Optional[str] = None) -> None:
        valid_volume_id(volume_id)
        valid_size(size_bytes, self.max_size)
        if from_snapshot is not None:
            raise DriverError("this RBD backend has no snapshots yet", code="UnsupportedOperation",
                              retryable=False)
        info = self._info(volume_id)
        if info is None:
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
            self._ok("rbd", "resize", "--size", f"{size_bytes // MiB}M", self._image(volume_id))

    def delete(self, volume_id: str) -> None:
        valid_volume_id(volume_id)
        if volume_id in self._wanted():
            raise VolumeInUse(f"volume {volume_id} is exported: unexport it first")
        r = self._run("rbd", "rm", "--no-progress", self._image(volume_id))
        if r.returncode != 0 and "No such file or directory" not in r.stderr:
            if "still has watchers" in r.stderr:
                raise VolumeInUse(f"volume {volume_id} is still open by a client")
            raise RbdError(f"rbd rm {volume_id} failed: {r.stderr.strip()[-500:]}")

    def export(self, volume_id: str) -> NetworkSource:
        valid_volume_id(volume_id)
        wanted = self._wanted()
        if volume_id not in wanted:
            if self._info(volume_id) is None:
                raise VolumeNotFound(f"volume {volume_id} does not exist")
            self._save(wanted | {volume_id})
        return self._source(volume_id)

    def unexport(self, volume_id: str, *, force: bool = False) -> None:
        valid_volume_id(volume_id)
        wanted = self._wanted()
        if volume_id not in wanted:
            return
        watchers = self._watchers(volume_id)
        if watchers and not force:
            raise VolumeInUse(f"volume {volume_id} is open by {len(watchers)} client(s)")
        for addr in watchers:
            # Cut the client off at the OSDs: it can neither read nor write any more.
            self._ok("ceph", "osd", "blocklist", "add", addr)
        self._save(wanted - {volume_id})

    def volumes(self) -> list[VolumeInfo]:
        out = self._ok("rbd", "ls", "-l", "--format", "json", self.pool)
        wanted = self._wanted()
        found = {e["image"]: e["size"] for e in json.loads(out or "[]")
                 if "snapshot" not in e and VOLUME_ID_RE.fullmatch(e["image"])}
        return [VolumeInfo(v, found[v], v in wanted) for v in sorted(found)]

    def exports(self) -> dict[str, NetworkSource]:
        existing = {v.volume_id for v in self.volumes()}
        return {v: self._source(v) for v in sorted(self._wanted() & existing)}

    def ensure(self) -> None:
        """The cluster serves every image by itself: check it answers and forget wanted exports
        whose image is gone."""
        existing = {v.volume_id for v in self.volumes()}
        wanted = self._wanted()
        if wanted - existing:
            self._save(wanted & existing)
