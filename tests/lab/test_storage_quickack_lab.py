"""Reads from the storage node over NBD+TLS do not wait for delayed ACKs (issue 14).

QEMU's NBD server before 8.0 (Debian 12: 7.2) leaves Nagle on and does not push its replies; over
TLS a read's reply header and payload are two TLS records, and the payload waits for the ACK of
the header, which the client host delays ~40 ms. The lab gives every host a /32 route to the
storage node with `quickack 1` (lab/network.py ensure_host; docs/deploy.md "NBD over TLS:
acknowledge at once" for real hosts). Checked here with `ip -j route` (not pyroute2, which made
the route) in every host namespace, and by timing: random 4 KiB reads with qemu-io from h1's
namespace, with h1's certificate, against a volume on the lab's storage node serving per-host
TLS, with the route, without it, and with it put back by ensure_host: printed, not asserted
(measured: ~0.3 ms with it, ~44-46 ms without; bench/RESULTS.md). Asserted: the route in every
host namespace, the reads returning the written data over TLS, ensure_host repairing the route.
"""
from __future__ import annotations

import random
import re
import statistics

import pytest

from agent.drivers.volumes import MiB
from lab import naming as nm
from lab import network
from lab.testing import ip_json, ns_run
from tests.lab.storage_support import (host_nbd_identity, lab_storage_client, lab_volume,
                                       storage_lab_fixture)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

VOL = "vol-0000000000071ac0a"
SIZE = 8 * MiB
READS = 40
SN = str(nm.STORAGE_ADDR.ip)


tlslab = storage_lab_fixture(hosts=2, tls=True)


def _quickack_route(ns: str) -> dict | None:
    for r in ip_json(ns, "route", "show", f"{SN}/32"):
        if r.get("dst") == SN:
            return r
    return None


def _qemu_io(ns: str, creds, port: int, export: str, commands: list[str]):
    opts = (f"driver=nbd,server.type=inet,server.host={SN},server.port={port},"
            f"export={export},tls-creds=tls0")
    argv = ["qemu-io", "--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={creds}",
            "--image-opts", opts]
    for c in commands:
        argv += ["-c", c]
    return ns_run(ns, *argv, check=False, timeout=120)


def _median_read_ms(ns: str, creds, port: int, export: str) -> float:
    """Median latency (ms) of READS random 4 KiB reads in one qemu-io session, from the rate
    qemu-io reports for each (its printed seconds have two decimals only)."""
    rnd = random.Random(14)
    offs = [rnd.randrange(SIZE // 4096) * 4096 for _ in range(READS)]
    r = _qemu_io(ns, creds, port, export, [f"read -P 0x5a {o} 4k" for o in offs])
    assert r.returncode == 0 and r.stdout.count("read 4096/4096") == READS, (r.stdout[-800:],
                                                                              r.stderr)
    assert "Pattern verification failed" not in r.stdout
    rates = [float(x) for x in re.findall(r"and ([0-9.]+) ops/sec", r.stdout)]
    assert len(rates) == READS, r.stdout[-800:]
    return statistics.median(1000.0 / x for x in rates)


def test_every_host_routes_to_the_storage_node_with_quickack(tlslab):
    for hid in ("h1", "h2"):
        route = _quickack_route(nm.host_netns(tlslab.prefix, hid))
        assert route is not None, hid
        assert route["dev"] == nm.UPLINK and "gateway" not in route, route
        assert {"quickack": 1} in route.get("metrics", []), route


def test_random_reads_over_tls_with_and_without_the_route(tlslab):
    lab = tlslab
    h1 = nm.host_netns(lab.prefix, "h1")
    creds = host_nbd_identity(lab, "h1")
    with lab_storage_client(lab) as c, lab_volume(lab, c, VOL, SIZE, host="h1") as obs:
        port, export = obs.source.port, obs.source.export
        # Data, not holes: a hole's read reply carries no payload, so no second TLS record.
        w = _qemu_io(h1, creds, port, export, [f"write -P 0x5a 0 {SIZE}"])
        assert w.returncode == 0 and f"wrote {SIZE}/{SIZE}" in w.stdout, (w.stdout, w.stderr)

        fast = _median_read_ms(h1, creds, port, export)
        ns_run(h1, "ip", "route", "del", f"{SN}/32")
        assert _quickack_route(h1) is None
        try:
            slow = _median_read_ms(h1, creds, port, export)
        finally:
            network.ensure_host(lab.prefix, "h1")  # puts the route back (and repairs as `up` does)
        assert _quickack_route(h1) is not None
        again = _median_read_ms(h1, creds, port, export)
        print(f"median 4 KiB random read over NBD+TLS from h1 ({READS} reads): "
              f"with quickack route {fast:.2f} ms, without {slow:.2f} ms, restored {again:.2f} ms")
        # Timings are printed, not asserted (they belong to bench/bench_volumes.py, whose
        # --no-storage-quickack run is the baseline; bench/RESULTS.md).
