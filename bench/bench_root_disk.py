"""Benchmark: root disk creation by the agent (LocalStorage.ensure_root_disk: a qcow2 overlay)
for a small (100 MiB) and a large (10 GiB) base image, against full copies in the same run.

Bases are sparse qcow2 images made with qemu-img, with a little data written by qemu-io: a
1 MiB pattern at 16 offsets spread over the whole virtual size (so the base's L1/L2 tables span
it, as a real filesystem image's would). Measured, each in a fresh directory:
  - kumo: LocalStorage.ensure_root_disk(instance, base, size): `qemu-img info` (under prlimit) of
    the base + `qemu-img create -b` of the overlay + rename (what the agent does per launch);
  - overlay only: the bare `qemu-img create -f qcow2 -b BASE -F qcow2` call;
  - baseline copy-qcow2: `qemu-img convert -O qcow2` (a sparse-aware clone: cost ~ data written);
  - baseline copy-raw: `qemu-img convert -O raw -S 0` (a fully allocated copy, as a cloud without
    copy-on-write would make: cost ~ virtual size; --no-raw skips it, it writes 10 GiB).
Each overlay also gets checked: it must read the base's pattern back (qemu-io read -P).

Usage: .venv/bin/python bench/bench_root_disk.py [--repeat 20] [--copy-repeat 3] [--raw-repeat 1]
       [--no-raw]
       [--dir /var/tmp]  (scratch directory; everything made there is removed at the end)
       [--smoke]  (bases of 16 MiB and 512 MiB, 2 overlays and 1 copy each; the O(1) gate is
                   reported, not judged)
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SMOKE_HELP, exit_status, machine_note, median, percentile  # noqa: E402

from agent.storage import LocalStorage  # noqa: E402

MIB = 1 << 20
SIZES = {"100 MiB": 100 * MIB, "10 GiB": 10 * 1024 * MIB}
#: --smoke: the same two-size comparison with a raw copy of seconds, not a minute.
SMOKE_SIZES = {"16 MiB": 16 * MIB, "512 MiB": 512 * MIB}
CHUNKS = 16
PATTERN = 0xAB
#: O(1) gate: the 10 GiB median may be at most this many times the 100 MiB one (noise margin;
#: an O(size) operation would be ~100x).
LIMIT = 2.0


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def make_base(path: Path, size: int) -> None:
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)])
    step = size // CHUNKS
    cmds = []
    for i in range(CHUNKS):
        off = (i * step) // MIB * MIB
        cmds += ["-c", f"write -P {PATTERN:#x} {off} 1M"]
    run(["qemu-io", "-f", "qcow2", *cmds, str(path)])
    path.chmod(0o444)


def check_overlay(path: Path, size: int) -> None:
    """The overlay must show the base's data at the last chunk (through the backing chain)."""
    off = ((CHUNKS - 1) * (size // CHUNKS)) // MIB * MIB
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", f"read -P {PATTERN:#x} {off} 1M",
                          str(path)], capture_output=True, text=True, check=True).stdout
    if "Pattern verification failed" in out or "read 1048576/1048576" not in out:
        raise SystemExit(f"overlay {path} does not read the base's data: {out}")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fmt(xs: list[float]) -> str:
    return (f"median {median(xs) * 1000:9.1f} ms  p95 {percentile(xs, 95) * 1000:9.1f} ms  "
            f"min {min(xs) * 1000:9.1f} ms  (n={len(xs)})")


def bench_sizes(work: Path, args, sizes: dict[str, int]) -> dict[str, dict[str, list[float]]]:
    """Both sizes measured interleaved (small, large, small, ...) so load from other jobs on the
    machine hits both alike."""
    bases: dict[str, Path] = {}
    storages: dict[str, LocalStorage] = {}
    res: dict[str, dict[str, list[float]]] = {}
    for label, size in sizes.items():
        d = work / label.replace(" ", "")
        d.mkdir()
        base = bases[label] = d / "base.qcow2"
        t_make = timed(lambda: make_base(base, size))
        alloc = base.stat().st_blocks * 512
        print(f"[{label}] base: virtual {size / MIB:.0f} MiB, file {base.stat().st_size / MIB:.1f}"
              f" MiB ({alloc / MIB:.1f} MiB allocated); made in {t_make:.2f} s", flush=True)
        storages[label] = LocalStorage(d / "agent", image_fetcher=lambda url, dest: None)
        res[label] = {"kumo ensure_root_disk": [], "overlay only (qemu-img create)": [],
                      "baseline copy-qcow2 (convert)": []}
        if not args.no_raw:
            res[label]["baseline copy-raw (convert -S 0)"] = []
    for i in range(args.repeat):
        iid = f"i-{i:017x}"
        for label, size in sizes.items():
            base, storage, r = bases[label], storages[label], res[label]
            r["kumo ensure_root_disk"].append(
                timed(lambda: storage.ensure_root_disk(iid, base, size)))
            check_overlay(storage.root_disk_path(iid), size)
            storage.remove_instance(iid)
            ov = base.with_name(f"ov{i}.qcow2")
            r["overlay only (qemu-img create)"].append(timed(lambda: run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                 str(ov)])))
            ov.unlink()
    for i in range(args.copy_repeat):
        for label in sizes:
            base, r = bases[label], res[label]
            cp = base.with_name(f"copy{i}.qcow2")
            r["baseline copy-qcow2 (convert)"].append(timed(lambda: run(
                ["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(base), str(cp)])))
            cp.unlink()
            if not args.no_raw and i < args.raw_repeat:
                cp = base.with_name(f"copy{i}.raw")
                r["baseline copy-raw (convert -S 0)"].append(timed(lambda: run(
                    ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-S", "0", str(base),
                     str(cp)])))
                cp.unlink()
    for label in sizes:
        print(f"\n[{label}]")
        for name, xs in res[label].items():
            print(f"  {name:34s} {fmt(xs)}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="overlay creations per size")
    ap.add_argument("--copy-repeat", type=int, default=3, help="full copies per size")
    ap.add_argument("--raw-repeat", type=int, default=1,
                    help="fully allocated raw copies per size (10 GiB each at the large size)")
    ap.add_argument("--no-raw", action="store_true", help="skip the fully allocated raw copy")
    ap.add_argument("--dir", default="/var/tmp", help="scratch parent directory")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    sizes = SIZES
    if args.smoke:
        sizes, args.repeat, args.copy_repeat, args.raw_repeat = SMOKE_SIZES, 2, 1, 1
    (small_label, small_size), (large_label, large_size) = sizes.items()
    print("root disk creation benchmark;", machine_note())
    need = large_size + 64 * MIB if not args.no_raw else 64 * MIB
    if shutil.disk_usage(args.dir).free < need + 1024 * MIB:
        print(f"not enough free space in {args.dir} for the raw copy: --no-raw implied")
        args.no_raw = True
    work = Path(tempfile.mkdtemp(prefix="kumo-bench-disk-", dir=args.dir))
    work.chmod(0o755)
    try:
        results = bench_sizes(work, args, sizes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = results[small_label], results[large_label]
    times = f"{large_size / small_size:.1f}x the virtual size"
    print(f"\nsummary (median, {large_label} vs {small_label} base = {times}):")
    for name in small:
        a, b = median(small[name]), median(large[name])
        print(f"  {name:34s} {small_label} {a * 1000:9.1f} ms   {large_label} {b * 1000:9.1f} ms   "
              f"ratio {b / a:6.2f}x")
    k = "kumo ensure_root_disk"
    ratio = median(large[k]) / median(small[k])
    ok = ratio <= LIMIT
    print(f"overlay O(1) in image size ({large_label}/{small_label} median ratio <= {LIMIT}, for "
          f"{times}): {'PASS' if ok else 'FAIL'} ({ratio:.2f}x)")
    for name in [n for n in large if n.startswith("baseline")]:
        print(f"kumo overlay vs {name} at {large_label}: "
              f"{median(large[name]) / median(large[k]):.0f}x faster")
    # An overlay that does not read the base's data back exited in bench_sizes.
    return exit_status(True, ok, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
