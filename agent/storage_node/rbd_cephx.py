"""Per-host cephx users of the RBD backend (docs/security.md "Storage access"): each host gets
its own Ceph user, client.<prefix><host id>, whose OSD caps name exactly the images exported to
that host, so another host's key opens none of them (the OSDs answer EPERM).

What librbd touches to open and write an image (format 2) of pool P named N with image id I:
- rbd_id.N: the name -> id lookup (a class method: read + class-read, "rx");
- rbd_header.I: the header (class methods, the watch, the exclusive lock: "rwx");
- rbd_data.I.<object number>: the data ("rwx": clones copy up with a class method);
- rbd_object_map.I and rbd_object_map.I.<snap id>: the object maps ("rwx");
- rbd_info and rbd_mirroring, the pool's RBD settings and mirroring state ("rx", pool-wide:
  they name no image's data);
- for a clone, rbd_directory and rbd_trash too (its parent's name, looked up by id: "rx").
A clone reads its parent's header, data and object maps ("rx"), and their parents' in turn,
by image id. Every grant is an object_prefix cap of pool P only. The data prefix ends in a dot
(data objects are rbd_data.I.<16 hex>); a header or object map prefix could in principle
match a longer image id starting with I, so caps are refused (RbdError) while any image of the
pool has an id that extends a granted one (librbd's ids are a client's global id in hex and 8
random hex digits: practically never).

Users are made on first need (`ceph auth get-or-create` with mon 'profile rbd' and no OSD cap),
their caps rewritten with `ceph auth caps` whenever the set of their images changes, and keys
read with `ceph auth get-key`. Every argument is a validated id in an argv list: no shell.
A host without images keeps its user with no OSD cap (no access; the key stays valid, so a
later export needs no new key on the host).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, NamedTuple

from agent.contract.storage_v1 import HOST_ID_RE
from agent.contract.v1 import CEPH_USER_RE, valid_ceph_key
from agent.drivers.base import DriverError

#: What hosts' users may do with the monitors: what librbd needs (maps, and blocklisting a dead
#: lock holder's client), nothing else.
MON_CAPS = "profile rbd"


#: Pool-wide objects librbd reads when it opens an image: rbd_info (the pool's RBD settings)
#: and rbd_mirroring (whether the image is mirrored); read-only for hosts.
POOL_METADATA = ("rbd_info", "rbd_mirroring")
#: What opening a clone's parent (by id) reads besides the parent: its name, from the pool's
#: directory or, for a deleted parent kept for its clones, the RBD trash (read-only; names
#: and ids of images, no data).
PARENT_METADATA = ("rbd_directory", "rbd_trash")


class Image(NamedTuple):
    """One image a host is granted: its name (None for a parent, opened by id only), its RBD
    image id, and whether it may be written (a parent is read-only)."""

    name: str | None
    image_id: str
    writable: bool


def user_of(prefix: str, host: str) -> str:
    """The Ceph user id of `host` (without "client.")."""
    if not HOST_ID_RE.fullmatch(host):
        raise DriverError(f"host id {host!r} is not a valid host id", code="InvalidParameterValue",
                          retryable=False)
    user = prefix + host
    if not CEPH_USER_RE.fullmatch(user):
        raise DriverError(f"Ceph user {user!r} is not valid", code="InvalidParameterValue",
                          retryable=False)
    return user


def images_of(vids: Iterable[str], info: Callable[[str], dict | None],
              info_by_id: Callable[[str], dict]) -> list[Image]:
    """The images of volumes `vids` (writable; a volume without an image is left out) and
    every parent they read, by id (read-only). `info`/`info_by_id`: `rbd info` as a dict."""
    out: list[Image] = []
    for vid in sorted(vids):
        i = info(vid)
        if i is None:
            continue
        out.append(Image(vid, _image_id(i.get("id"), vid), True))
        parent = i.get("parent")
        for _ in range(16):  # clones of clones: a short chain (a loop would be a bug)
            if not parent:
                break
            pid = _image_id(parent.get("id"), f"the parent of {vid}")
            out.append(Image(None, pid, False))
            parent = info_by_id(pid).get("parent")
    return out


def _image_id(v: object, what: str) -> str:
    """An RBD image id as `rbd info` gives it (hex), checked before it goes into a cap."""
    if not isinstance(v, str) or not re.fullmatch(r"[0-9a-f]{1,64}", v):
        raise DriverError(f"rbd info of {what}: no image id ({v!r})",
                          code="StorageBackendError", retryable=True)
    return v


def osd_caps(pool: str, images: Iterable[Image], all_ids: Iterable[str] = ()) -> str:
    """The OSD cap string granting exactly `images` of `pool` ("" for none). `all_ids`: every
    image id in the pool, to refuse a prefix that would reach another image too."""
    images = sorted(set(images), key=lambda i: (i.image_id, i.name or "", i.writable))
    others = set(all_ids)
    grants: list[str] = []
    for img in images:
        clash = [o for o in others if o != img.image_id and o.startswith(img.image_id)]
        if clash:
            raise DriverError(f"image id {img.image_id} is a prefix of {clash[0]}: caps for "
                              "it would reach that image too", code="StorageBackendError",
                              retryable=False)
        mode = "rwx" if img.writable else "rx"
        if img.name is not None:
            grants.append(f"allow rx pool={pool} object_prefix rbd_id.{img.name}")
        grants += [f"allow {mode} pool={pool} object_prefix rbd_header.{img.image_id}",
                   f"allow {mode} pool={pool} object_prefix rbd_data.{img.image_id}.",
                   f"allow {mode} pool={pool} object_prefix rbd_object_map.{img.image_id}"]
    if grants:  # pool-wide metadata librbd reads at every open (read-only)
        grants += [f"allow rx pool={pool} object_prefix {o}" for o in POOL_METADATA]
    if any(not i.writable for i in images):  # a clone: its parent's name, by id
        grants += [f"allow rx pool={pool} object_prefix {o}" for o in PARENT_METADATA]
    # A parent that is also granted writable elsewhere keeps both lines: OSD caps add up.
    return ", ".join(dict.fromkeys(grants))


class CephxUsers:
    """The hosts' users through `ceph` calls. `run(*args)` runs the node's `ceph` (its own
    user and keyring) and returns a CompletedProcess; `applied` remembers the caps last set per
    user, so a pass that changes nothing makes no call."""

    def __init__(self, run: Callable[..., object], prefix: str):
        self.run, self.prefix = run, prefix
        self.applied: dict[str, tuple[str, str]] = {}
        self._keys: dict[str, str] = {}

    def _fail(self, what: str, r) -> DriverError:
        return DriverError(f"ceph {what} failed ({r.returncode}): {r.stderr.strip()[-500:]}",
                           code="StorageBackendError", retryable=True)

    def key(self, host: str) -> tuple[str, str]:
        """(user, key) of `host`, the user made (with no OSD cap) when missing."""
        user = user_of(self.prefix, host)
        if user in self._keys:
            return user, self._keys[user]
        r = self.run("ceph", "auth", "get-key", f"client.{user}")
        if r.returncode != 0:
            if "ENOENT" not in r.stderr and "not find" not in r.stderr:
                raise self._fail(f"auth get-key client.{user}", r)
            c = self.run("ceph", "auth", "get-or-create", f"client.{user}", "mon", MON_CAPS)
            if c.returncode != 0:
                raise self._fail(f"auth get-or-create client.{user}", c)
            self.applied[user] = (MON_CAPS, "")
            r = self.run("ceph", "auth", "get-key", f"client.{user}")
            if r.returncode != 0:
                raise self._fail(f"auth get-key client.{user}", r)
        key = r.stdout.strip()
        if not valid_ceph_key(key):
            raise DriverError(f"ceph auth get-key client.{user} gave no cephx key",
                              code="StorageBackendError", retryable=True)
        self._keys[user] = key
        return user, key

    def set_caps(self, host: str, osd: str) -> bool:
        """Give `host`'s user exactly mon MON_CAPS and `osd` (none when empty); True when a
        call was made. The user is made first when missing."""
        user, _ = self.key(host)
        if self.applied.get(user) == (MON_CAPS, osd):
            return False
        args = ["ceph", "auth", "caps", f"client.{user}", "mon", MON_CAPS]
        if osd:
            args += ["osd", osd]
        r = self.run(*args)
        if r.returncode != 0:
            self.applied.pop(user, None)
            raise self._fail(f"auth caps client.{user}", r)
        self.applied[user] = (MON_CAPS, osd)
        return True


def node_caps(pool: str, prefix: str) -> dict[str, str]:
    """The caps the storage node's own user needs (what an admin gives it, e.g. `ceph auth
    get-or-create client.kumo-storage mon '<mon>' osd '<osd>'`): every image of its pool
    (profile rbd, which also lets it blocklist a client), and the auth commands for the hosts'
    users only (entity prefix client.<prefix>). It can give those users any caps, so it is
    trusted with the pool like an admin; it cannot read or change other users' keys."""
    entity = f"client.{prefix}"
    auth = ", ".join(f'allow command "auth {c}" with entity prefix {entity}'
                     for c in ("get-key", "get-or-create", "caps"))
    return {"mon": f"profile rbd, {auth}", "osd": f"profile rbd pool={pool}"}
