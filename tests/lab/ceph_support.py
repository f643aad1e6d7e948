"""A scratch single-node Ceph cluster for lab tests (docs/ceph-rbd.md): one mon, one mgr and one
bluestore OSD on a sparse file, bootstrapped by hand (no systemd, no LVM/ceph-volume), in a
/tmp/kceph-* directory, pool size 1, auth none (a lab only) or, with auth="cephx", cephx
everywhere: one keyring (the mon's, client.admin's, mgr.x's and osd.0's keys) made before the
monitor's mkfs, which imports every key of it with its caps; `Cluster.add_user` makes further
users with their own keyring files. Two places it can run:
- a network namespace this module creates (loopback only, mon on 127.0.0.1:3300/6789 there:
  nothing in the machine's own namespace), deleted again afterwards: ceph_cluster();
- a lab namespace that exists already, bound to its address there, e.g. the lab storage node's
  namespace at 100.64.0.250, so the lab hosts' QEMUs reach the mon and the OSD over the lab
  fabric: ceph_cluster(ns=..., addr=...). That namespace is left as it was found.
Every daemon runs in the foreground as our child; on the way out each is stopped by its PID and
the directory removed, and that is checked. About 13 s to HEALTH_OK on the 2-core lab machines.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

PACKAGES = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph-common", "qemu-block-extra")
TOOLS = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph", "rbd", "monmaptool", "ceph-authtool",
         "qemu-io", "qemu-img", "ip")
MON_V1_PORT = 6789
START_TIMEOUT = 120.0


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} missing (install {' '.join(PACKAGES)})"
    # QEMU's rbd driver is a module from qemu-block-extra. `qemu-img --help` names rbd among
    # its formats without it, so that is no check.
    if not Path("/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so").exists():
        return "QEMU has no rbd driver (install qemu-block-extra)"
    return None


def _mon_addrs(addr: str) -> str:
    return f"[v2:{addr}:3300,v1:{addr}:{MON_V1_PORT}]"


def _conf(d: Path, fsid: str, addr: str, auth: str = "none") -> str:
    return f"""[global]
fsid = {fsid}
mon host = {_mon_addrs(addr)}
public addr = {addr}
ms bind ipv6 = false
auth cluster required = {auth}
auth service required = {auth}
auth client required = {auth}
mon warn on insecure global id reclaim allowed = false
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
mon cluster log file = {d}/log/$cluster.$channel.log
mon data = {d}/mon-$id
mgr data = {d}/mgr-$id
osd data = {d}/osd-$id
keyring = {d}/keyring
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {10 << 30}
osd memory target = {1 << 30}
mon data avail warn = 1
mon data avail crit = 0
"""


@dataclass
class Cluster:
    ns: str
    dir: Path
    pool: str
    conf: Path
    #: Where the daemons listen, in `ns` (the mon on addr:3300 v2 and addr:6789 v1).
    addr: str = "127.0.0.1"
    #: "none" or "cephx" (then `conf`'s keyring, dir/keyring, holds client.admin's key).
    auth: str = "none"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: How each daemon was started (to start it again: restart()).
    argvs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *argv: str, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess:
        """argv inside the cluster's namespace (never the root one)."""
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def ceph(self, *args: str, timeout: float = 60) -> str:
        return self.run("ceph", "--conf", str(self.conf), "--connect-timeout", "20", *args,
                        timeout=timeout).stdout

    def rbd_url(self, image: str) -> str:
        """QEMU's rbd: filename for pool/image with this cluster's conf (client.admin)."""
        return f"rbd:{self.pool}/{image}:conf={self.conf}"

    def add_user(self, name: str, caps: dict[str, str]) -> Path:
        """cephx: a user client.<name> with `caps` ({"mon": ..., "osd": ...}); its keyring
        file (dir/<name>.keyring) is returned."""
        path = self.dir / f"{name}.keyring"
        args = [x for kind, cap in sorted(caps.items()) for x in (kind, cap)]
        self.ceph("auth", "get-or-create", f"client.{name}", *args, "-o", str(path))
        return path

    def key(self, name: str) -> str:
        """cephx: the key of client.<name>, as `ceph auth get-key` prints it."""
        return self.ceph("auth", "get-key", f"client.{name}").strip()

    def restart(self, name: str, timeout: float = 60) -> float:
        """kill -9 one daemon (by its PID), start it again as before; returns the seconds until
        the cluster is HEALTH_OK again (a crash, e.g. of the only OSD, then a recovery)."""
        p = self.procs[name]
        booted = self._osd_up_from() if name == "osd" else None
        p.kill()
        p.wait(20)
        t0 = time.monotonic()
        self._daemon(name, *self.argvs[name])
        if booted is not None:
            # With one OSD no peer reports it down: the mon's map says "up" all along. The new
            # process has booted once the map's up_from moved on (a new epoch).
            self._wait("the restarted OSD booted", lambda: self._osd_up_from() > booted,
                       t0 + timeout)
        self._wait(f"HEALTH_OK after restarting {name}",
                   lambda: self.ceph("health", timeout=30).startswith("HEALTH_OK"),
                   t0 + timeout)
        return round(time.monotonic() - t0, 2)

    def _osd_up_from(self) -> int:
        """The osdmap epoch osd.0 last booted in (0 while it is down)."""
        dump = json.loads(self.ceph("osd", "dump", "-f", "json", timeout=30))
        osd = next(o for o in dump["osds"] if o["osd"] == 0)
        return int(osd["up_from"]) if osd["up"] else 0

    def _daemon(self, name: str, *argv: str) -> None:
        self.argvs[name] = argv
        log = open(self.dir / "log" / f"{name}.out", "ab")
        with log:
            self.procs[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *argv, "-f", "--conf", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _wait(self, what: str, ok, deadline: float) -> None:
        while not ok():
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"ceph {name} exited ({p.returncode}) while waiting for "
                                       f"{what}; logs in {self.dir / 'log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ceph: {what} not reached within {START_TIMEOUT:.0f} s")
            time.sleep(0.2)


def _start(c: Cluster) -> None:
    d, t0 = c.dir, time.monotonic()
    deadline = t0 + START_TIMEOUT
    last = t0

    def phase(name: str) -> None:
        nonlocal last
        now = time.monotonic()
        c.timings[name] = round(now - last, 2)
        last = now

    for sub in ("run", "log", "mon-a", "mgr-x", "osd-0"):
        (d / sub).mkdir()
    fsid = str(uuid.uuid4())
    c.conf.write_text(_conf(d, fsid, c.addr, c.auth))
    keyring = str(d / "keyring")
    subprocess.run(["ceph-authtool", "--create-keyring", keyring, "--gen-key",
                    "-n", "mon.", "--cap", "mon", "allow *"], check=True, capture_output=True)
    if c.auth == "cephx":  # imported by the mon's mkfs below, caps and all
        for name, caps in _DAEMON_CAPS.items():
            subprocess.run(["ceph-authtool", keyring, "--gen-key", "-n", name,
                            *[x for k, v in caps.items() for x in ("--cap", k, v)]],
                           check=True, capture_output=True)
    subprocess.run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                    _mon_addrs(c.addr), str(d / "monmap")],
                   check=True, capture_output=True)
    c.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(d / "monmap"), "--conf", str(c.conf))
    phase("mon_mkfs")
    c._daemon("mon", "ceph-mon", "-i", "a")

    def mon_up() -> bool:
        r = c.run("ceph", "--conf", str(c.conf), "--connect-timeout", "3", "mon", "stat",
                  check=False, timeout=10)
        return r.returncode == 0
    c._wait("a monitor quorum", mon_up, deadline)
    phase("mon_up")
    c._daemon("mgr", "ceph-mgr", "-i", "x")
    osd_uuid = str(uuid.uuid4())
    osd_id = c.ceph("osd", "new", osd_uuid).strip()
    if osd_id != "0":
        raise RuntimeError(f"ceph osd new gave id {osd_id!r}, not 0")
    # Inside the namespace: --mkfs asks the monitor (a 300 s hang outside it).
    c.run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, "--conf", str(c.conf),
          timeout=120)
    phase("osd_mkfs")
    c._daemon("osd", "ceph-osd", "-i", "0")
    c._wait("one OSD up", lambda: '"num_up_osds":1' in c.ceph("osd", "stat", "-f", "json"),
            deadline)
    phase("osd_up")
    c.ceph("osd", "pool", "create", c.pool, "8", "8")
    c.run("rbd", "--conf", str(c.conf), "pool", "init", c.pool, timeout=120)
    phase("pool_init")
    c._wait("HEALTH_OK", lambda: c.ceph("health").startswith("HEALTH_OK"), deadline)
    phase("health_ok")
    c.timings["total"] = round(time.monotonic() - t0, 2)


#: cephx: the keys made before the monitor's mkfs, with their caps.
_DAEMON_CAPS = {
    "client.admin": {"mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *"},
    "mgr.x": {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"},
    "osd.0": {"mon": "allow profile osd", "mgr": "allow profile osd", "osd": "allow *"},
}


def _stop(c: Cluster, own_ns: bool = True) -> None:
    """Stop our daemons by PID (osd, mgr, mon), then the namespace (when we made it) and the
    directory."""
    for name in ("osd", "mgr", "mon"):
        p = c.procs.get(name)
        if p is None or p.poll() is not None:
            continue
        # `ip netns exec` execs the daemon: p.pid is the daemon itself.
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    if own_ns:
        subprocess.run(["ip", "netns", "del", c.ns], capture_output=True)
    shutil.rmtree(c.dir, ignore_errors=True)


@contextlib.contextmanager
def ceph_cluster(pool: str = "kumo", ns: str | None = None, addr: str = "127.0.0.1",
                 auth: str = "none") -> Iterator[Cluster]:
    """A running single-node cluster with an RBD pool `pool`; gone again afterwards (checked).
    `ns` None: in a namespace of its own (loopback, `addr` must stay 127.0.0.1). Else in that
    existing lab namespace, listening on `addr`, which must be one of its addresses.
    `auth`: "none" or "cephx" (every daemon and client authenticates)."""
    if auth not in ("none", "cephx"):
        raise ValueError(f"auth {auth!r} is not none or cephx")
    own_ns = ns is None
    ns = ns or "kcephtest-" + secrets.token_hex(3)
    d = Path(tempfile.mkdtemp(prefix="kceph-", dir="/tmp"))
    c = Cluster(ns=ns, dir=d, pool=pool, conf=d / "ceph.conf", addr=addr, auth=auth)
    try:
        if own_ns:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True,
                           capture_output=True)
        _start(c)
        yield c
    finally:
        pids = [p.pid for p in c.procs.values()]
        _stop(c, own_ns)
        assert not d.exists(), f"{d} was not removed"
        if own_ns:
            assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                            text=True).stdout.split(), f"namespace {ns} left"
        for pid in pids:
            assert not _alive(pid), f"ceph pid {pid} left"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
