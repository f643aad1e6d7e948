"""Benchmark: volumes on the NBD storage node (issue 10; agent/storage_node: NbdBackend, one
qemu-storage-daemon serving qcow2 volume files over NBD), each part against a baseline measured
in the same run.

Part 1, volume create and delete (no guest). NbdBackend runs in a scratch network namespace of
the benchmark's own (`kvn-bench-<random>-cr`, loopback only, NBD on 127.0.0.1:10809 there). Per
repetition and size (1 GiB and 100 GiB, interleaved so load from other jobs hits both alike):
  - kumo create: NbdBackend.create (qemu-img create of the qcow2 under a temporary name +
    rename); kumo export: NbdBackend.export (persist the wish, QMP blockdev-add +
    block-export-add on the running daemon); create+export is their sum, what a new attachable
    volume costs; kumo unexport+delete: NbdBackend.unexport + NbdBackend.delete;
  - baseline: the bare `qemu-img create -q -f qcow2 FILE SIZE` of the same size, and `os.unlink`.
  The daemon is started once before the timings (shown apart). Each size's first export is
  checked over NBD from inside the namespace (`qemu-img info` must show the virtual size).
  Gate: create+export is O(1) in the size (100 GiB median <= 2x the 1 GiB median).

Part 1b, snapshot time vs size (no guest, the same scratch NbdBackend). Three exported volumes,
data written into each over NBD with qemu-io: 1 GiB with 8 MiB written, 100 GiB with 8 MiB, and
1 GiB with 256 MiB. Per repetition and volume (interleaved): kumo snapshot (NbdBackend.snapshot:
QMP blockdev-snapshot-internal-sync on the running daemon, as for an attached volume) and kumo
delete snapshot; baselines on a closed qcow2 file of equal content: `qemu-img snapshot -c` and a
full copy (`qemu-img convert -O qcow2`, what a snapshot sharing nothing would cost). Shows the
time does not grow with the volume's size, only slightly with its allocated data.

Part 2, the data path inside a guest. A kumo-tiny guest (TCG, 1 vCPU, 128 MiB) on lab host h1
gets three disks attached live (libvirt, as tests/lab/test_volume_moves_lab.py does):
  vdb  an NBD volume, attached as Kumo attaches one (agent.reconcile.steps.volume_disk:
       virtio, cache=none), from the lab's own storage node when the lab runs one (lab/naming.py
       STORAGE_ADDR; the volume is made and exported through its API) when the lab runs
       no controller (a controller deletes volumes it does not know), else (or with
       --own-storage-node) from a scratch storage node of the benchmark's own wired into the
       lab's fabric (namespace `kvn-bench-<random>-sn`, 100.64.0.251:10809 on the underlay, a
       veth into the fabric bridge, NbdBackend called directly);
  vdc  baseline: a local qcow2 file of the same size on h1, with a root disk's settings (QEMU's
       default cache: the host page cache, flushes honoured, as the storage node's daemon opens
       its volume files);
  vdd  baseline: the same local qcow2 with the volume's own disk settings (cache=none).
The guest (a user-data script, results on the serial console, timed with ash's $EPOCHREALTIME)
runs, per round: sequential write on each disk in turn (busybox dd bs=1M of /dev/zero,
oflag=direct conv=fsync: O_DIRECT bypasses the guest's page cache, the final fsync flushes),
sequential read (dd bs=1M iflag=direct) of the region just written, then random 4 KiB reads
(`dd bs=4096 count=1 skip=RANDOM iflag=direct` within that region) and random 4 KiB writes
(seek=, oflag=direct). fio is not in kumo-tiny, so each random request is one dd process: per
random offset the request goes to vdb, vdc, vdd and to a floor (the same dd on /dev/zero ->
/dev/null: process spawn and shell) in turn, each timed, so load from outside the guest hits all
of them alike; IOPS = requests / summed time, and the latency above the floor is printed too.
Results are medians over the rounds, with the ratio NBD / local. The volume file and the local
files must show the written bytes allocated afterwards (the writes reached them).

Part 3, attach/detach latency through the controller's API (only with --lab-state of a lab
that runs its controller and storage node, as the test suite's session lab does; else a
"skipped: ..." line). One kumo-tiny instance launched through the API with a key pair, a 1 GiB
volume; per round: POST attach -> the guest sees /dev/disk/by-id/virtio-vol<hex>, POST detach ->
the link is gone, timed inside the guest (one SSH session per round polls every 50 ms; a line
sent on it just before the call starts its $EPOCHREALTIME clock, so no SSH connection set-up is
in the numbers). Baseline, rounds interleaved: a plain kumo-tiny domain (`boot-...`, which the
agent leaves alone) on the same host, on a bridge of the benchmark's own in the host's
namespace, with an NBD volume (a scratch storage node of the benchmark's own on the lab
fabric, as in part 2; the lab's node is the controller's) disk as Kumo attaches one (volume_disk)
hot-plugged through the libvirt API, timed the same way. Then live grow, the volume attached:
per round PATCH +1 GiB -> the guest's /sys/block/<disk>/size changes; baseline: the baseline
disk grown by hand the way Kumo does it below the API (the storage node re-makes the export at
the new size, the hypervisor's resize_disk reconnects QEMU's NBD client and blockResizes). The
instance is terminated, the volume deleted, the key pair, baseline guest, volume and bridge
removed, and each checked.

--lab-state DIR: use a running lab (`python -m lab up` or the test suite's session lab) and
leave it running; otherwise the benchmark brings up a 1-host lab of its own and removes it.
Everything else it makes (namespaces, veth, daemons, volume files, guest, its files) is removed
at the end and checked.

Usage: .venv/bin/python bench/bench_volumes.py [--repeat 20] [--rounds 5] [--seq-mib 256]
       [--rand-ops 500] [--volume-gib 1] [--snap-repeat 20] [--attach-rounds 10] [--grow-rounds 5]
       [--lab-state DIR] [--own-storage-node] [--no-storage-quickack] [--no-guest]
       [--no-data-path] [--smoke]
"""
from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (SMOKE_HELP, bench_lab, exit_status, machine_note, median,  # noqa: E402
                          percentile, require_root)

MIB, GIB = 1 << 20, 1 << 30
SIZES = {"1 GiB": GIB, "100 GiB": 100 * GIB}
PORT = 10809
#: On the lab's underlay (100.64.0.0/24): .1 is the internet namespace, hosts are .11-.109 and
#: tests/lab/test_volume_moves_lab.py uses .250; this one is the benchmark's.
SN_ADDR = "100.64.0.251"
SN_FABRIC_PORT = "p-kvb"
#: O(1) gate: the 100 GiB median may be at most this many times the 1 GiB one.
LIMIT = 2.0
LOCAL_SERIAL, LOCAL_NONE_SERIAL = "kvblocal", "kvblocalnone"
ROLES = {"nbd": "vdb", "local": "vdc", "local-none": "vdd"}

GUEST_SCRIPT = r"""#!/bin/sh
(
  DISKS="vdb vdc vdd"
  for d in $DISKS; do while [ ! -b /dev/$d ]; do usleep 100000; done; done
  sleep 1
  for d in $DISKS; do
    echo "KVB disk $d serial=$(cat /sys/block/$d/serial 2>/dev/null) sectors=$(cat /sys/block/$d/size)"
  done
  NBLK=$((@SEQ_MIB@ * 256))
  # One random 4 KiB request on every disk and on the floor (no device) in turn, each timed, at
  # the same offset: load from outside the guest hits all of them alike.
  rand() {  # rand read|write
    for d in $DISKS floor; do eval "us_$d=0 fail_$d=0"; done
    i=0
    while [ $i -lt @OPS@ ]; do
      b=$(( (RANDOM * 32768 + RANDOM) % NBLK ))
      for d in $DISKS floor; do
        if [ $d = floor ]; then dev=/dev/zero; out=/dev/null; fl=; else dev=/dev/$d; out=/dev/$d; fl=direct; fi
        t0=$EPOCHREALTIME
        if [ $1 = read ]; then
          dd if=$dev of=/dev/null bs=4096 count=1 skip=$b ${fl:+iflag=$fl} 2>/dev/null
        else
          dd if=/dev/zero of=$out bs=4096 count=1 seek=$b ${fl:+oflag=$fl} 2>/dev/null
        fi
        rc=$?; t1=$EPOCHREALTIME
        eval "us_$d=\$((us_$d + ${t1/./} - ${t0/./})); [ $rc = 0 ] || fail_$d=\$((fail_$d + 1))"
      done
      i=$((i + 1))
    done
    for d in $DISKS floor; do eval "echo \"KVB r=\$r rand$2 $d us=\$us_$d fail=\$fail_$d\""; done
  }
  r=1
  while [ $r -le @ROUNDS@ ]; do
    for d in $DISKS; do
      t0=$EPOCHREALTIME
      dd if=/dev/zero of=/dev/$d bs=1048576 count=@SEQ_MIB@ oflag=direct conv=fsync 2>/dev/null
      rc=$?; t1=$EPOCHREALTIME
      echo "KVB r=$r seqw $d us=$((${t1/./} - ${t0/./})) fail=$rc"
    done
    for d in $DISKS; do
      t0=$EPOCHREALTIME
      dd if=/dev/$d of=/dev/null bs=1048576 count=@SEQ_MIB@ iflag=direct 2>/dev/null
      rc=$?; t1=$EPOCHREALTIME
      echo "KVB r=$r seqr $d us=$((${t1/./} - ${t0/./})) fail=$rc"
    done
    rand read r
    rand write w
    r=$((r + 1))
  done
  sync
  echo "KVB done"
) > /dev/console 2>&1 &
"""
RESULT_RX = re.compile(r"KVB r=(\d+) (seqw|seqr|randr|randw) (vd[b-d]|floor) us=(\d+) fail=(\d+)")
DISK_RX = re.compile(r"KVB disk (vd[b-d]) serial=(\S*) sectors=(\d+)")


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)


def ip(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip -n NS ...`: only ever inside a namespace the benchmark or the lab made."""
    return subprocess.run(["ip", "-n", ns, *argv], check=check, capture_output=True, text=True)


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fmt(xs: list[float]) -> str:
    return (f"median {median(xs) * 1000:8.1f} ms  p95 {percentile(xs, 95) * 1000:8.1f} ms  "
            f"min {min(xs) * 1000:8.1f} ms  (n={len(xs)})")


def volume_id(tag: str) -> str:
    return "vol-" + (tag + secrets.token_hex(9))[:17]


class Cleanup:
    """What the run made outside the lab, checked gone at the end."""

    def __init__(self) -> None:
        self.netns: list[str] = []
        self.pids: list[int] = []
        self.paths: list[Path] = []

    def leftovers(self) -> list[str]:
        from agent.supervisor import pid_alive
        live = netns_list()
        return ([f"namespace {n}" for n in self.netns if n in live]
                + [f"qemu-storage-daemon pid {p}" for p in self.pids if pid_alive(p)]
                + [f"path {p}" for p in self.paths if p.exists()])


@contextlib.contextmanager
def storage_node(ns: str, addr: str, cleanup: Cleanup,
                 wire: Callable[[str], None] = lambda ns: None,
                 unwire: Callable[[], None] = lambda: None,
                 tls_dir: Path | None = None) -> Iterator:
    """An NbdBackend serving on addr:PORT inside the new namespace `ns` (loopback up; `wire(ns)`
    connects it further, `unwire()` undoes what wire made outside it), per host over TLS with
    `tls_dir` (scratch_tls). Its daemon is stopped, the namespace deleted and the state dir
    (and tls_dir) removed on the way out."""
    from tests.lab.storage_support import backend_in_netns
    state = Path(tempfile.mkdtemp(prefix="kumo-bench-sn-"))
    cleanup.paths.append(state)
    cleanup.netns.append(ns)
    try:
        with backend_in_netns(ns, state, addr, PORT, wire, unwire, cleanup.pids,
                              tls_dir=tls_dir) as backend:
            yield backend
    finally:
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)


def scratch_tls(lab, hosts: tuple[str, ...], cleanup: Cleanup) -> Path | None:
    """A scratch node on the lab's fabric serves what the lab's hosts dial: per-host NBD over
    TLS when their qemu.conf says nbd_tls = 1 (the lab's default, docs/security.md "Storage
    access"). Then: a server certificate for it from the lab's cloud CA (a temporary dir,
    returned; storage_node removes it), and a client certificate for each of `hosts` that holds none yet (a lab
    without agents). None: plain NBD."""
    from controller.services.cloud_ca import storage_node_files
    from lab import libvirtd, services
    from tests.lab.storage_support import host_nbd_identity
    conf = libvirtd.HostPaths(lab.state_dir / "hosts" / hosts[0]).conf.parent / "qemu.conf"
    if "nbd_tls = 1" not in conf.read_text():
        return None
    for h in hosts:
        if not (libvirtd.HostPaths(lab.state_dir / "hosts" / h).nbd_tls_dir
                / "client-cert.pem").exists():
            host_nbd_identity(lab, h)
    d = Path(tempfile.mkdtemp(prefix="kumo-bench-tls-"))
    cleanup.paths.append(d)
    storage_node_files(services.controller_dir(lab.state_dir), "bench", [SN_ADDR], d)
    return d


def nbd_virtual_size(ns: str, addr: str, vid: str) -> int:
    import json
    out = run(["ip", "netns", "exec", ns, "qemu-img", "info", "--output=json", "-f", "raw",
               f"nbd://{addr}:{PORT}/{vid}"], timeout=30).stdout
    return int(json.loads(out)["virtual-size"])


# -- part 1: create / delete ------------------------------------------------------------------

def bench_create(prefix: str, args, cleanup: Cleanup) -> bool:
    ns = f"{prefix}-cr"
    print(f"\n== volume create / delete: NbdBackend in namespace {ns} (NBD on 127.0.0.1:{PORT} "
          f"there), {args.repeat} per size, sizes interleaved", flush=True)
    names = ["kumo create", "kumo export", "kumo create+export", "kumo unexport+delete",
             "baseline qemu-img create", "baseline rm"]
    res = {label: {n: [] for n in names} for label in SIZES}
    checked: set[str] = set()
    ok = True
    with storage_node(ns, "127.0.0.1", cleanup) as backend:
        base_dir = backend.state_dir / "baseline"
        base_dir.mkdir()
        print(f"storage daemon start (first ensure, not in the timings): "
              f"{timed(backend.ensure) * 1000:.1f} ms", flush=True)
        for i in range(args.repeat):
            for label, size in SIZES.items():
                r = res[label]
                vid = volume_id(f"{i:04x}")
                r["kumo create"].append(timed(lambda: backend.create(vid, size)))
                r["kumo export"].append(timed(lambda: backend.export(vid)))
                r["kumo create+export"].append(r["kumo create"][-1] + r["kumo export"][-1])
                if label not in checked:
                    seen = nbd_virtual_size(ns, "127.0.0.1", vid)
                    good = seen == size
                    ok &= good
                    checked.add(label)
                    print(f"[{label}] exported volume {vid}: NBD shows {seen} bytes: "
                          f"{'ok' if good else 'WRONG'}", flush=True)
                r["kumo unexport+delete"].append(
                    timed(lambda: (backend.unexport(vid), backend.delete(vid))))
                f = base_dir / f"{vid}.qcow2"
                r["baseline qemu-img create"].append(timed(lambda: run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", str(f), str(size)])))
                r["baseline rm"].append(timed(lambda: f.unlink()))
        snap_ok, snap_report = bench_snapshot(backend, ns, args)
        ok &= snap_ok
        left = backend.volumes()
        if left or backend.exports():
            ok = False
            print(f"volumes left on the storage node: {left}")
    for label in SIZES:
        print(f"[{label}]")
        for name, xs in res[label].items():
            print(f"  {name:26s} {fmt(xs)}")
    (small, a), (large, b) = res.items()
    print(f"summary (median, {large} vs {small}):")
    for name in names:
        x, y = median(a[name]), median(b[name])
        print(f"  {name:26s} {small} {x * 1000:8.1f} ms   {large} {y * 1000:8.1f} ms   "
              f"ratio {y / x:5.2f}x")
    k = "kumo create+export"
    ratio = median(b[k]) / median(a[k])
    target = ratio <= LIMIT
    print(f"create+export O(1) in volume size ({large}/{small} median ratio <= {LIMIT}): "
          f"{'PASS' if target else 'FAIL'} ({ratio:.2f}x)")
    for kumo, base in (("kumo create", "baseline qemu-img create"),
                       ("kumo create+export", "baseline qemu-img create"),
                       ("kumo unexport+delete", "baseline rm")):
        x, y = median(b[kumo]), median(b[base])
        print(f"{kumo} vs {base} at {large}: {x / y:.2f}x the time "
              f"({(x - y) * 1000:+.1f} ms per volume)")
    args.create_target_ok = target
    snap_report()
    return ok


# -- part 1b: snapshot time vs size -----------------------------------------------------------

def snapshot_id(tag: str) -> str:
    return "snap-" + (tag + secrets.token_hex(9))[:17]


def bench_snapshot(backend, ns: str, args) -> tuple[bool, Callable[[], None]]:
    """Snapshots on the scratch NbdBackend of part 1, of exported volumes (as an attached volume
    is snapshotted: QMP blockdev-snapshot-internal-sync on the running daemon). Returns (checks
    ok, a function printing the results: called after part 1's own)."""
    small = args.snap_small_mib
    big = args.snap_big_mib
    cases = {f"1 GiB, {small} MiB written": (GIB, small),
             f"100 GiB, {small} MiB written": (100 * GIB, small),
             f"1 GiB, {big} MiB written": (GIB, big)}
    names = ["kumo snapshot", "kumo delete snapshot", "baseline qemu-img snapshot -c",
             "baseline full copy"]
    res = {label: {n: [] for n in names} for label in cases}
    base_dir = backend.state_dir / "snap-baseline"
    base_dir.mkdir()
    ok = True
    vids: dict[str, str] = {}
    files: dict[str, Path] = {}
    try:
        for label, (size, mib) in cases.items():
            vid = vids[label] = volume_id("5")
            backend.create(vid, size)
            backend.export(vid)
            pattern = f"write -P 0x5a 0 {mib}M"
            run(["ip", "netns", "exec", ns, "qemu-io", "-f", "raw", "-c", pattern,
                 f"nbd://127.0.0.1:{PORT}/{vid}"], timeout=120)
            f = files[label] = base_dir / f"{vid}.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", str(f), str(size)])
            run(["qemu-io", "-f", "qcow2", "-c", pattern, str(f)], timeout=120)
        for i in range(args.snap_repeat):
            for label in cases:
                r, vid, f = res[label], vids[label], files[label]
                sid = snapshot_id(f"{i:04x}")
                r["kumo snapshot"].append(timed(lambda: backend.snapshot(vid, sid)))
                if i == 0:
                    have = {s.snapshot_id: s for s in backend.snapshots()}
                    good = sid in have and have[sid].volume_id == vid
                    ok &= good
                    print(f"[{label}] snapshot {sid} of {vid} listed by the backend: "
                          f"{'ok' if good else 'NO'}", flush=True)
                r["kumo delete snapshot"].append(timed(lambda: backend.delete_snapshot(sid)))
                r["baseline qemu-img snapshot -c"].append(timed(lambda: run(
                    ["qemu-img", "snapshot", "-c", f"b{i}", str(f)])))
                run(["qemu-img", "snapshot", "-d", f"b{i}", str(f)])
                copy = base_dir / "copy.qcow2"
                r["baseline full copy"].append(timed(lambda: run(
                    ["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(f), str(copy)],
                    timeout=600)))
                copy.unlink()
        left = backend.snapshots()
        if left:
            ok = False
            print(f"snapshots left on the storage node: {left}")
    finally:
        for vid in vids.values():
            for s in backend.snapshots():
                if s.volume_id == vid:
                    backend.delete_snapshot(s.snapshot_id)
            if backend.files.exists(vid):
                backend.unexport(vid)
                backend.delete(vid)
        shutil.rmtree(base_dir, ignore_errors=True)

    def report() -> None:
        print(f"\n== snapshot time vs size: NbdBackend in namespace {ns}, volumes exported "
              "(kumo snapshot = QMP blockdev-snapshot-internal-sync on the running daemon, "
              "as for an attached volume), data written over NBD with qemu-io; baselines on a "
              "closed qcow2 file of equal content: `qemu-img snapshot -c` and a full copy "
              f"(`qemu-img convert -O qcow2`: a snapshot that shares nothing); "
              f"{args.snap_repeat} per case, cases interleaved")
        for label in cases:
            print(f"[{label}]")
            for name, xs in res[label].items():
                print(f"  {name:30s} {fmt(xs)}")
        a, b, c = (res[label] for label in cases)
        k = "kumo snapshot"
        for what, x, y, lx, ly in (
                (f"volume size ({small} MiB written)", a, b, "1 GiB", "100 GiB"),
                ("data written (1 GiB volume)", a, c, f"{small} MiB", f"{big} MiB")):
            mx, my = median(x[k]), median(y[k])
            print(f"kumo snapshot time vs {what}: {lx} {mx * 1000:.1f} ms, {ly} "
                  f"{my * 1000:.1f} ms, ratio {my / mx:.2f}x")
        label = list(cases)[2]
        for base in ("baseline qemu-img snapshot -c", "baseline full copy"):
            x, y = median(c[k]), median(c[base])
            print(f"kumo snapshot vs {base} at {label}: {x / y:.2f}x the time "
                  f"({(x - y) * 1000:+.1f} ms per snapshot)")

    return ok, report


# -- part 2: the data path inside a guest -----------------------------------------------------

def fabric_wiring(prefix: str, quickack: bool = True):
    """wire(ns), unwire(): a veth from the lab's fabric bridge into the storage namespace, made
    from inside the fabric namespace (as the lab makes the hosts' uplinks). With `quickack`,
    each lab host gets the route to SN_ADDR the lab gives it to its own node (lab/network.py
    _ensure_storage_quickack: /32, on-link, `quickack 1`; QEMU 7.2's NBD server over TLS
    otherwise waits ~40 ms per read for a delayed ACK); unwire() removes it again."""
    from lab import naming as nm
    from lab import network
    fab = nm.fabric_netns(prefix)
    hosts = sorted({nm.host_netns(prefix, h) for h in nm.host_ids(nm.MAX_HOSTS)} & netns_list())

    def wire(ns: str) -> None:
        ip(fab, "link", "add", SN_FABRIC_PORT, "type", "veth", "peer", "name", nm.UPLINK,
           "netns", ns)
        ip(fab, "link", "set", SN_FABRIC_PORT, "master", nm.FABRIC_BRIDGE, "mtu",
           str(nm.FABRIC_MTU), "up")
        ip(ns, "link", "set", nm.UPLINK, "mtu", str(nm.FABRIC_MTU), "up")
        ip(ns, "addr", "add", f"{SN_ADDR}/{nm.FABRIC_NET.prefixlen}", "dev", nm.UPLINK)
        # SN_ADDR now has a new MAC: part 2's node had it a minute ago, and a host's neighbor
        # entry for it can still be REACHABLE with the old MAC. A first NBD connect from there
        # then lost its SYNs until that entry expired and sat in TCP's backoff (one baseline
        # attach was seen to take 70 s); the entries are dropped so the next use resolves anew.
        for host in hosts:
            ip(host, "neigh", "flush", "to", SN_ADDR, check=False)
            if quickack:
                network.route_storage_quickack(host, SN_ADDR)

    def unwire() -> None:
        ip(fab, "link", "del", SN_FABRIC_PORT, check=False)
        for host in hosts:
            if quickack:
                ip(host, "route", "del", f"{SN_ADDR}/32", check=False)

    return wire, unwire


def allocated(path: Path) -> int:
    import json
    out = run(["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(path)]).stdout
    return int(json.loads(out).get("actual-size", 0))


class ScratchNode:
    """A storage node of the benchmark's own, wired into the lab's fabric (NbdBackend called
    directly, as the storage node's API would call it)."""

    def __init__(self, backend, ns: str):
        self.backend, self.ns = backend, ns
        self.where = (f"the benchmark's scratch storage node {SN_ADDR}:{PORT} (namespace {ns} on "
                      "the lab fabric; NbdBackend called directly)")

    def export(self, vid: str, size: int, host: str = "h1") -> tuple[str, int]:
        """Made and exported for `host` (the only one it opens for with per-host TLS)."""
        self.backend.create(vid, size)
        where = self.backend.export(vid, host=host).hosts[0]
        return where.name, where.port

    def file(self, vid: str) -> Path:
        return self.backend.files.path(vid)

    def remove(self, vid: str) -> None:
        if self.backend.files.exists(vid):
            self.backend.unexport(vid)
            self.backend.delete(vid)


class LabNode:
    """The lab's own storage node (lab/naming.py STORAGE_ADDR, started by `kumo lab up`), driven
    through its API (agent/contract/storage_v1.py) over its unix socket."""

    def __init__(self, lab, api):
        from lab import naming as nm
        from lab import services
        self.api, self.lab = api, lab
        self.ns = nm.storage_netns(lab.prefix)
        self.dir = services.storage_dir(lab.state_dir) / "volumes"
        self.where = (f"the lab's storage node {nm.STORAGE_ADDR.ip}:{nm.STORAGE_NBD_PORT} "
                      f"(namespace {self.ns}; volume made through its API)")

    @staticmethod
    def find(lab):
        """An API client when this lab runs a storage node that answers, else None."""
        try:
            from lab import naming as nm
            from lab import services
            nm.storage_netns, services.storage_answers, services.storage_url  # noqa: B018
        except (ImportError, AttributeError):
            return None
        if not services.storage_answers(lab.state_dir):
            return None
        from tests.lab.storage_support import lab_storage_client  # the token or mutual TLS
        return LabNode(lab, lab_storage_client(lab))

    def export(self, vid: str, size: int, host: str = "h1") -> tuple[str, int]:
        r = self.api.put(f"/v1/volumes/{vid}", json={"volume_id": vid, "size_bytes": size,
                                                      "exported": True, "host": host})
        if r.status_code != 200 or not r.json().get("exported"):
            raise RuntimeError(f"PUT /v1/volumes/{vid}: {r.status_code} {r.text}")
        src = r.json()["source"]
        return src["host"], int(src["port"])

    def file(self, vid: str) -> Path:
        return self.dir / f"{vid}.qcow2"

    def remove(self, vid: str) -> None:
        deadline = time.monotonic() + 30
        while True:  # the guest's NBD connection may take a moment to go: 409, retryable
            r = self.api.delete(f"/v1/volumes/{vid}")
            if r.status_code in (204, 404) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if r.status_code not in (204, 404) or self.api.get(f"/v1/volumes/{vid}").status_code != 404:
            raise RuntimeError(f"volume {vid} not deleted from the lab's storage node: "
                               f"{r.status_code} {r.text}")


@contextlib.contextmanager
def guest_storage(lab, prefix: str, args, cleanup: Cleanup) -> Iterator:
    # A lab running its controller owns its storage node: the controller's volume sync deletes
    # volumes its database does not know (every ORPHAN_SCAN_S), so a volume made behind its back
    # could vanish mid-run. Then the benchmark brings its own node (the same NbdBackend).
    node = None
    if not args.own_storage_node and controller_lab(lab) is not None:
        node = LabNode.find(lab)
    if node is not None:
        try:
            yield node
        finally:
            node.api.close()
        return
    wire, unwire = fabric_wiring(lab.prefix, quickack=not args.no_storage_quickack)
    ns = f"{prefix}-sn"
    with storage_node(ns, SN_ADDR, cleanup, wire, unwire,
                      scratch_tls(lab, ("h1",), cleanup)) as backend:
        yield ScratchNode(backend, ns)


def bench_guest(prefix: str, args, cleanup: Cleanup) -> bool:
    from agent import qemu_img
    from agent.contract.v1 import VolumeAttachment
    from agent.drivers.base import DomainDisk, FileSource
    from agent.reconcile.steps import volume_disk
    from images.builder import build
    from lab import naming as nm
    from lab.testing import ping
    from tests.lab.guests import boot, new_instance_id

    size = args.volume_gib * GIB
    script = (GUEST_SCRIPT.replace("@SEQ_MIB@", str(args.seq_mib))
              .replace("@ROUNDS@", str(args.rounds)).replace("@OPS@", str(args.rand_ops)))
    ok = True
    with bench_lab(args.lab_state, hosts=1) as lab:
        lab_addrs = {str(nm.host_address(h).ip) for h in nm.host_ids(nm.MAX_HOSTS)}
        if SN_ADDR in lab_addrs | {str(nm.INET_FABRIC_ADDR)}:
            raise SystemExit(f"{SN_ADDR} is a lab address")
        image = build("kumo-tiny", log=lambda *a: None).path
        work = Path(tempfile.mkdtemp(prefix="kumo-bench-vol-", dir="/var/tmp"))
        work.chmod(0o755)
        cleanup.paths.append(work)
        guest = None
        t0 = time.monotonic()
        try:
            guest = boot(lab, "h1", image, work / "guest", instance_id=new_instance_id(),
                         hostname="bench-vol", user_data=script.encode())
            local = work / "local.qcow2"
            local_none = work / "local-none.qcow2"
            for f in (local, local_none):
                qemu_img.create(f, size, "qcow2")
            with guest_storage(lab, prefix, args, cleanup) as node:
                vid = volume_id("b")
                try:
                    addr, port = node.export(vid, size)
                    if not ping(nm.host_netns(lab.prefix, "h1"), addr):
                        raise SystemExit(f"h1 cannot reach the storage node at {addr}")
                    att = VolumeAttachment.model_validate({
                        "volume_id": vid, "device": "vdb",
                        "source": {"host": addr, "port": port, "export": vid}})
                    nbd = volume_disk(att)
                    disks = {"nbd": nbd,
                             "local": DomainDisk("vdc", FileSource(local, "qcow2"),
                                                 serial=LOCAL_SERIAL),
                             "local-none": DomainDisk("vdd", FileSource(local_none, "qcow2"),
                                                      serial=LOCAL_NONE_SERIAL, cache="none")}
                    guest.wait_console(r"KUMO-READY instance-id=", timeout=120)
                    t_ready = time.monotonic() - t0
                    for d in disks.values():
                        guest.hypervisor.attach_disk(guest.name, d)
                    print(f"\n== data path in a guest: kumo-tiny on h1 of lab {lab.prefix} "
                          f"(TCG, 1 vCPU, 128 MiB; ready {t_ready:.0f} s after define), "
                          f"disks attached live, {args.volume_gib} GiB each:")
                    print(f"  vdb  NBD volume {vid} on {node.where}, cache={nbd.cache} "
                          "(Kumo's volume disk)")
                    print("  vdc  local qcow2 on h1, default cache (host page cache, flushes "
                          "honoured: a root disk's settings, and how the storage daemon opens "
                          "volume files)")
                    print("  vdd  local qcow2 on h1, cache=none (the volume disk's settings)")
                    print(f"method: busybox dd in the guest, O_DIRECT (iflag/oflag=direct): "
                          f"seq {args.seq_mib} MiB bs=1M (write from /dev/zero + fsync, then "
                          f"read back); random 4 KiB: {args.rand_ops} x `dd bs=4096 count=1` at "
                          f"random offsets in that {args.seq_mib} MiB (one dd process per "
                          "request: fio is not in kumo-tiny), each offset on vdb, vdc, vdd and "
                          f"the floor in turn; {args.rounds} round(s); medians", flush=True)
                    serials = {}
                    for d in ("vdb", "vdc", "vdd"):
                        m = guest.wait_console(rf"KVB disk {d} serial=(\S*) sectors=(\d+)",
                                               timeout=60)
                        serials[d] = m.group(1)
                        if int(m.group(2)) != size // 512:
                            ok = False
                            print(f"{d}: {m.group(2)} sectors, expected {size // 512}")
                    want = {"vdb": nbd.serial, "vdc": LOCAL_SERIAL, "vdd": LOCAL_NONE_SERIAL}
                    if serials != want:
                        ok = False
                        print(f"disks in the guest by serial {serials}, expected {want}")
                    guest.wait_console(r"KVB done", timeout=args.guest_timeout)
                    t_done = time.monotonic() - t0
                    ok &= report_guest(guest.console_text(), args)
                    print(f"guest run took {t_done - t_ready:.0f} s")
                    guest.destroy()  # the NBD client goes before the export
                    need = args.seq_mib * MIB
                    for name, path in (("volume file on the storage node", node.file(vid)),
                                       ("local file vdc", local), ("local file vdd", local_none)):
                        have = allocated(path)
                        good = have >= need
                        ok &= good
                        print(f"{name}: {have / MIB:.1f} MiB allocated (>= {args.seq_mib} MiB "
                              f"written): {'ok' if good else 'NO'}")
                finally:
                    if guest is not None:
                        guest.destroy()
                    node.remove(vid)
                    cleanup.paths.append(node.file(vid))
        finally:
            try:
                if guest is not None:
                    guest.destroy()
                    guest.hypervisor.close()
            finally:
                shutil.rmtree(work, ignore_errors=True)
        fab_links = subprocess.run(["ip", "netns", "exec", nm.fabric_netns(lab.prefix), "ip",
                                    "-o", "link"], capture_output=True, text=True).stdout
        if f" {SN_FABRIC_PORT}@" in fab_links or f" {SN_FABRIC_PORT}:" in fab_links:
            ok = False
            print(f"fabric port {SN_FABRIC_PORT} left in {nm.fabric_netns(lab.prefix)}")
    return ok


# -- part 3: attach / detach latency through the controller's API ----------------------------

#: Run in a guest over one SSH connection per round: on each line read from stdin it starts a
#: clock (ash's $EPOCHREALTIME) and polls every 50 ms until the volume's by-id link appears,
#: then (next line) until it is gone, printing the microseconds each took.
POLLER = r"""L=/dev/disk/by-id/virtio-@SERIAL@
[ -e $L ] && { echo "busy: $L exists"; exit 1; }
wait_for() {
  read go || exit 1
  t0=$EPOCHREALTIME; i=0
  while [ $1 -e $L ]; do
    usleep 50000; i=$((i + 1)); [ $i -gt 1200 ] && { echo "timeout $2"; exit 1; }
  done
  t1=$EPOCHREALTIME; echo "$2 us=$((${t1/./} - ${t0/./}))"
}
echo ready
wait_for ! seen
wait_for "" gone
"""
#: Per "go" line: the time until the disk's size in sysfs changes (a live grow reaching the guest).
GROW_POLLER = r"""L=/dev/disk/by-id/virtio-@SERIAL@
i=0
while [ ! -e $L ]; do
  usleep 50000; i=$((i + 1)); [ $i -gt 1200 ] && { echo "no $L"; exit 1; }
done
S=/sys/block/$(basename $(readlink -f $L))/size
echo ready
while s0=$(cat $S) && read go; do
  t0=$EPOCHREALTIME; i=0
  while [ $(cat $S) -eq $s0 ]; do
    usleep 50000; i=$((i + 1)); [ $i -gt 1200 ] && { echo "timeout grown"; exit 1; }
  done
  t1=$EPOCHREALTIME; echo "grown us=$((${t1/./} - ${t0/./}))"
done
"""
BASE_NET = "10.213.7"  # the baseline guest's link, on a bridge inside the lab host's namespace


class Poller:
    """One SSH session into a guest running POLLER; go() starts its clock, then line() waits for
    its answer."""

    def __init__(self, netns: str, key: Path, address: str, serial: str, script: str = POLLER):
        from tests.lab.guests import SSH_OPTS
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ssh", "-i", str(key), *SSH_OPTS,
             f"root@{address}", script.replace("@SERIAL@", serial)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""
        if self.line(30) != "ready":
            raise RuntimeError(f"poller in {address} did not start: {self.buf!r}")

    def line(self, timeout: float) -> str:
        import os
        import select
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
                raise RuntimeError(f"no answer from the guest's poller in {timeout} s")
            chunk = os.read(self.p.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"guest poller ended: {self.buf!r} "
                                   f"{self.p.stderr.read().decode(errors='replace')[-500:]}")
            self.buf += chunk
        out, self.buf = self.buf.split(b"\n", 1)
        return out.decode().strip()

    def go(self) -> None:
        self.p.stdin.write(b"go\n")
        self.p.stdin.flush()

    def seconds(self, what: str, timeout: float = 90) -> float:
        got = self.line(timeout)
        m = re.fullmatch(rf"{what} us=(\d+)", got)
        if not m:
            raise RuntimeError(f"guest poller: {got!r}, expected {what}")
        return int(m.group(1)) / 1e6

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.p.stdin.close()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def wait_api(cloud, path: str, done: Callable[[dict], bool], timeout: float = 90) -> dict:
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        seen = cloud.call("GET", path)
        if done(seen):
            return seen
        time.sleep(0.2)
    raise RuntimeError(f"{path} not as wanted within {timeout} s: {seen}")


def controller_lab(lab) -> str | None:
    """Why part 3 cannot run on this lab, or None when it runs a controller and storage node."""
    import os
    if os.environ.get("KUMO_LAB_SERVICES") == "none" or not (lab.state_dir / "demo.key").exists():
        return "the lab runs without controller and agents"
    if LabNode.find(lab) is None:
        return "the lab runs no storage node"
    return None


def bench_attach(prefix: str, args, cleanup: Cleanup) -> bool:
    if args.lab_state is None or args.no_guest:
        print("\n== attach / detach through the controller's API\nskipped: part 3 needs "
              "--lab-state DIR of a running lab with its controller (and not --no-guest)")
        return True
    with bench_lab(args.lab_state, hosts=1) as lab:
        why = controller_lab(lab)
        if why:
            print(f"\n== attach / detach through the controller's API\nskipped: {why}")
            return True
        # The baseline's volume comes from a scratch storage node of the benchmark's own: the
        # lab's node is the controller's, which unexports volumes it does not know.
        wire, unwire = fabric_wiring(lab.prefix, quickack=not args.no_storage_quickack)
        ns = f"{prefix}-sa"
        with storage_node(ns, SN_ADDR, cleanup, wire, unwire,
                          scratch_tls(lab, ("h1",), cleanup)) as backend:
            return attach_rounds(lab, ScratchNode(backend, ns), args, cleanup)


def attach_rounds(lab, node: ScratchNode, args, cleanup: Cleanup) -> bool:
    from agent.contract.v1 import VolumeAttachment
    from agent.reconcile.steps import volume_disk
    from images.builder import build
    from lab.testing import make_bridge
    from tests.lab.cloud import CloudUser, find_router_netns
    from tests.lab.guests import boot, new_instance_id, ssh_keypair, static_network, wait_ssh

    image = build("kumo-tiny", log=lambda *a: None).path
    work = Path(tempfile.mkdtemp(prefix="kumo-bench-vol-", dir="/var/tmp"))
    work.chmod(0o755)
    cleanup.paths.append(work)
    user = CloudUser(lab, work / "keys")
    key_name = f"bench-volumes-{secrets.token_hex(3)}"
    iid = vid = base_vid = guest = bridge_ns = None
    bridge = "kvbatt" + secrets.token_hex(2)
    kumo = {"attach": [], "detach": [], "grow": []}
    base = {"attach": [], "detach": [], "grow": []}
    ok = True
    t0 = time.monotonic()
    try:
        user.allow_admin_access()
        key = user.key_pair(key_name)
        iid = user.run(1, key_name=key_name, tags={"bench": "volumes"})[0]["instance_id"]
        inst = wait_api(user, f"/v1/instances/{iid}", lambda i: bool(i.get("host_id")), 60)
        host = inst["host_id"]
        # The baseline guest: the same image and size on the same host, a plain libvirt domain
        # (`boot-...`: the agent leaves it alone), reached over a bridge of the benchmark's own.
        bridge_ns = nm_host_netns(lab, host)
        make_bridge(bridge_ns, bridge, f"{BASE_NET}.1/24")
        bkey, pub = ssh_keypair(work / "bkey")
        mac = "52:54:00:7b:00:02"
        guest = boot(lab, host, image, work / "guest", instance_id=new_instance_id(),
                     hostname="bench-att", keys=(pub,), mac=mac, bridge=bridge,
                     network_config=static_network(mac, f"{BASE_NET}.2/24", f"{BASE_NET}.1"))
        inst = user.wait(iid, "running", "ok", timeout=300)
        vid = user.call("POST", "/v1/volumes", json={"size_gib": 1})["volume_id"]
        wait_api(user, f"/v1/volumes/{vid}", lambda v: v["state"] == "available")
        base_vid = volume_id("a")
        addr, port = node.export(base_vid, GIB, host)
        disk = volume_disk(VolumeAttachment.model_validate({
            "volume_id": base_vid, "device": "vdb",
            "source": {"host": addr, "port": port, "export": base_vid}}))
        rns = find_router_netns(lab, inst)
        for ns, k, a in ((rns, key, inst["private_ip"]), (guest.netns, bkey, f"{BASE_NET}.2")):
            r = wait_ssh(ns, k, a, "true", timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"no SSH into {a}: {r.stderr}")
        t_ready = time.monotonic() - t0
        print(f"\n== attach / detach through the controller's API: instance {iid} (kumo-tiny, "
              f"t3.nano) on {host} of lab {lab.prefix}, 1 GiB volume {vid}; baseline: a plain "
              f"kumo-tiny domain {guest.name} on the same host with the same kind of disk (NBD "
              f"volume {base_vid} on {node.where}, Kumo's volume_disk) hot-plugged with the "
              "libvirt API (virDomainAttachDeviceFlags / DetachDeviceFlags, live+config); "
              f"ready {t_ready:.0f} s after launch")
        print(f"method: per round one SSH session into the guest polls every 50 ms for "
              f"/dev/disk/by-id/virtio-<serial> on a clock ($EPOCHREALTIME) started by a line "
              f"sent on that session just before the call; {args.attach_rounds} round(s), "
              "kumo and baseline rounds interleaved", flush=True)
        for i in range(args.attach_rounds):
            p = Poller(rns, key, inst["private_ip"], "vol" + vid[4:])
            try:
                p.go()
                user.call("POST", f"/v1/volumes/{vid}/attach",
                          json={"instance_id": iid, "device": "/dev/sdf"})
                kumo["attach"].append(p.seconds("seen"))
                wait_api(user, f"/v1/volumes/{vid}", lambda v: v["state"] == "in-use" and
                         v["attachments"] and v["attachments"][0]["state"] == "attached")
                p.go()
                user.call("POST", f"/v1/volumes/{vid}/detach", json={})
                kumo["detach"].append(p.seconds("gone"))
                wait_api(user, f"/v1/volumes/{vid}", lambda v: v["state"] == "available")
            finally:
                p.close()
            p = Poller(guest.netns, bkey, f"{BASE_NET}.2", disk.serial)
            try:
                p.go()
                guest.hypervisor.attach_disk(guest.name, disk)
                base["attach"].append(p.seconds("seen"))
                p.go()
                guest.hypervisor.detach_disk(guest.name, disk.target, timeout=60)
                base["detach"].append(p.seconds("gone"))
            finally:
                p.close()
            print(f"round {i + 1}/{args.attach_rounds}: kumo attach {kumo['attach'][-1]:.3f} s "
                  f"detach {kumo['detach'][-1]:.3f} s; baseline attach {base['attach'][-1]:.3f} "
                  f"s detach {base['detach'][-1]:.3f} s", flush=True)
        grow_rounds(user, node, args, iid, vid, rns, key, inst["private_ip"], guest, bkey,
                    base_vid, disk, kumo["grow"], base["grow"])
    finally:
        ok &= attach_cleanup(user, lab, node, key_name, iid, vid, base_vid, guest, bridge_ns,
                             bridge)
        user.close()
        shutil.rmtree(work, ignore_errors=True)
    for what in ("attach", "detach", "grow"):
        print(f"  kumo API {what} -> guest sees it   {fmt(kumo[what])}")
        print(f"  baseline libvirt {what} -> guest   {fmt(base[what])}")
    for what in ("attach", "detach", "grow"):
        x, y = median(kumo[what]), median(base[what])
        print(f"kumo {what} vs baseline libvirt {what}: {x / y:.2f}x the time "
              f"({(x - y) * 1000:+.0f} ms median)")
    return ok


def grow_rounds(user, node: ScratchNode, args, iid: str, vid: str, rns: str, key: Path,
                address: str, guest, bkey: Path, base_vid: str, disk, kumo: list[float],
                base: list[float]) -> None:
    """Live grow of an attached volume, API call -> the guest's sysfs size changes, 1 GiB per
    round; baseline: the same kind of NBD disk in the baseline guest grown by hand, the storage
    node's grow (NbdBackend: the export re-made at the new size) then the hypervisor's
    resize_disk (the NBD client's reconnect and virDomainBlockResize), no controller or agent."""
    user.call("POST", f"/v1/volumes/{vid}/attach", json={"instance_id": iid, "device": "/dev/sdf"})
    wait_api(user, f"/v1/volumes/{vid}", lambda v: v["state"] == "in-use" and
             v["attachments"] and v["attachments"][0]["state"] == "attached")
    guest.hypervisor.attach_disk(guest.name, disk)
    print(f"grow: per round one SSH session polls /sys/block/<disk>/size every 50 ms on a clock "
          f"started just before the call; {args.grow_rounds} round(s) of +1 GiB each, kumo "
          "(PATCH /v1/volumes/<id>) and baseline (storage node grow + libvirt resize_disk) "
          "interleaved", flush=True)
    kp = Poller(rns, key, address, "vol" + vid[4:], GROW_POLLER)
    bp = Poller(guest.netns, bkey, f"{BASE_NET}.2", disk.serial, GROW_POLLER)
    try:
        for i in range(args.grow_rounds):
            kp.go()
            user.call("PATCH", f"/v1/volumes/{vid}", json={"size_gib": 2 + i})
            kumo.append(kp.seconds("grown"))
            bp.go()
            node.backend.grow(base_vid, (2 + i) * GIB)
            guest.hypervisor.resize_disk(guest.name, disk.target, (2 + i) * GIB)
            base.append(bp.seconds("grown"))
            print(f"grow round {i + 1}/{args.grow_rounds}: kumo {kumo[-1]:.3f} s; baseline "
                  f"{base[-1]:.3f} s", flush=True)
    finally:
        kp.close()
        bp.close()


def nm_host_netns(lab, host: str) -> str:
    from lab.naming import host_netns
    return host_netns(lab.prefix, host)


def attach_cleanup(user, lab, node, key_name, iid, vid, base_vid, guest, bridge_ns, bridge) -> bool:
    """Terminate the instance, delete the volume, the key pair, the baseline guest, its volume
    and bridge; check each is gone. Never raises."""
    from lab.testing import remove_bridge
    problems = []

    def step(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report and go on with the rest
            problems.append(f"{what}: {e}")

    if guest is not None:
        step("baseline guest", lambda: (guest.destroy(), guest.hypervisor.close()))
    if base_vid is not None:
        step("baseline volume", lambda: node.remove(base_vid))
    if vid is not None:
        def del_volume() -> None:
            v = user.call("GET", f"/v1/volumes/{vid}")
            if v["state"] != "available":
                user.api.post(f"/v1/volumes/{vid}/detach", json={"force": True})
                wait_api(user, f"/v1/volumes/{vid}", lambda v: v["state"] == "available")
            user.call("DELETE", f"/v1/volumes/{vid}")
            deadline = time.monotonic() + 90
            while user.api.get(f"/v1/volumes/{vid}").status_code != 404:
                if time.monotonic() > deadline:
                    raise RuntimeError("still described 90 s after DELETE")
                time.sleep(0.5)
        step(f"volume {vid}", del_volume)
    if iid is not None:
        def term() -> None:
            user.action(iid, "terminate")
            user.wait(iid, "terminated", timeout=120)
        step(f"instance {iid}", term)
    step("key pair", lambda: user.call("DELETE", f"/v1/key-pairs/{key_name}"))
    if bridge_ns is not None:
        step("bridge", lambda: remove_bridge(bridge_ns, bridge))
        links = subprocess.run(["ip", "-n", bridge_ns, "-o", "link"], capture_output=True,
                               text=True).stdout
        if f" {bridge}:" in links:
            problems.append(f"bridge {bridge} left in {bridge_ns}")
    if guest is not None:
        from tests.lab.cloud import domains_named
        if domains_named(lab, guest.name):
            problems.append(f"domain {guest.name} left")
    print(f"part 3 clean-up: instance {iid} terminated, volume {vid} deleted, baseline guest, "
          f"volume and bridge removed: {'ok' if not problems else 'NO: ' + '; '.join(problems)}")
    return not problems


def report_guest(console: str, args) -> bool:
    ok = True
    got: dict[tuple[str, str], list[float]] = {}
    for m in RESULT_RX.finditer(console):
        _, test, disk, us, fail = m.groups()
        if int(fail):
            ok = False
            print(f"guest: {test} on {disk} had {fail} failed dd run(s)")
        got.setdefault((test, disk), []).append(int(us) / 1e6)
    disks = ["vdb", "vdc", "vdd"]
    want = [(t, d) for t in ("seqw", "seqr", "randr", "randw") for d in disks] + [
        ("randr", "floor"), ("randw", "floor")]
    missing = [k for k in want if len(got.get(k, [])) != args.rounds]
    if missing:
        print(f"guest: results missing for {missing}")
        return False
    seq_bytes = args.seq_mib * MIB

    def val(test: str, disk: str) -> float:
        t = median(got[(test, disk)])
        return seq_bytes / MIB / t if test.startswith("seq") else args.rand_ops / t

    rows = [("seq write MiB/s", "seqw"), ("seq read MiB/s", "seqr"),
            ("rand read 4k IOPS", "randr"), ("rand write 4k IOPS", "randw")]
    print(f"{'':28s}{'vdb NBD volume':>16s}{'vdc local':>12s}{'vdd local,none':>16s}")
    for label, test in rows:
        print(f"  {label:26s}" + "".join(f"{val(test, d):{w}.1f}"
                                        for d, w in zip(disks, (16, 12, 16))))
    for test, label in (("randr", "read"), ("randw", "write")):
        floor = val(test, "floor")
        print(f"  loop floor, {label:5s} (dd /dev/zero -> /dev/null, same loop): {floor:6.1f} "
              f"requests/s = {1000 / floor:.2f} ms per request of process spawn and shell")
    for label, test in rows:
        a, b, c = (val(test, d) for d in disks)
        print(f"ratio NBD/local {label:20s} vs vdc (default cache) {a / b:5.2f}x   "
              f"vs vdd (cache=none) {a / c:5.2f}x")
    for test, label in (("randr", "rand read"), ("randw", "rand write")):
        floor = val(test, "floor")
        per = {d: 1000 / val(test, d) - 1000 / floor for d in disks}
        print(f"{label} 4k latency above the loop floor (ms): NBD {per['vdb']:.2f}, "
              f"local {per['vdc']:.2f}, local cache=none {per['vdd']:.2f}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="volume creations per size")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the guest tests")
    ap.add_argument("--seq-mib", type=int, default=256, help="sequential MiB per test and disk")
    ap.add_argument("--rand-ops", type=int, default=500, help="random 4 KiB requests per test")
    ap.add_argument("--volume-gib", type=int, default=1, help="size of the guest's disks")
    ap.add_argument("--guest-timeout", type=float, default=1800, help="seconds for the guest")
    ap.add_argument("--lab-state", type=Path, default=None,
                    help="a running lab's state dir (left running); default: a lab of its own")
    ap.add_argument("--no-guest", action="store_true", help="part 1 only (no lab, no guest)")
    ap.add_argument("--no-data-path", action="store_true",
                    help="skip part 2 (the data path in a guest)")
    ap.add_argument("--own-storage-node", action="store_true",
                    help="part 2 on a scratch storage node even when the lab runs its own")
    ap.add_argument("--attach-rounds", type=int, default=10,
                    help="attach/detach rounds through the API (and baseline) in part 3")
    ap.add_argument("--grow-rounds", type=int, default=5,
                    help="live grow rounds (+1 GiB each) of the attached volume in part 3")
    ap.add_argument("--snap-repeat", type=int, default=20, help="snapshots per case")
    ap.add_argument("--snap-small-mib", type=int, default=8, help="MiB written, small case")
    ap.add_argument("--snap-big-mib", type=int, default=256, help="MiB written, large case")
    ap.add_argument("--no-storage-quickack", action="store_true",
                    help="the scratch storage node without the hosts' quickack route (implies "
                         "--own-storage-node): the 'before' of docs/deploy.md's NBD-over-TLS fix")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    if args.no_storage_quickack:
        args.own_storage_node = True
    if args.smoke:
        args.repeat, args.rounds, args.seq_mib, args.rand_ops = 2, 1, 8, 10
        args.snap_repeat, args.attach_rounds, args.grow_rounds = 2, 2, 2
        args.guest_timeout = min(args.guest_timeout, 300)
    if args.seq_mib * MIB > args.volume_gib * GIB:
        ap.error("--seq-mib exceeds the volume size")
    require_root()
    print("volumes benchmark;", machine_note(), flush=True)
    prefix = f"kvn-bench-{secrets.token_hex(3)}"
    cleanup = Cleanup()
    args.create_target_ok = False
    try:
        ok = bench_create(prefix, args, cleanup)
        if not args.no_guest and not args.no_data_path:
            ok &= bench_guest(prefix, args, cleanup)
        ok &= bench_attach(prefix, args, cleanup)
    finally:
        left = cleanup.leftovers()
    print(f"left behind (namespaces, storage daemons, files): {', '.join(left) or 'nothing'}")
    ok &= not left
    return exit_status(ok, args.create_target_ok, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
