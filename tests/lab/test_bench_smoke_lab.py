"""The benchmarks that need root still run: each one's smoke mode (bench/*.py --smoke) exits 0,
prints its result lines, its same-run baseline and its comparison, and leaves nothing behind.

bench_launch and bench_vpc_changes run on the session's lab (--lab-state): booting a lab of
their own would cost each about 20 s more and measure nothing else (the suite runs one test at
a time, so nothing else uses the lab meanwhile). bench_dataplane and bench_firewall make their
own scratch namespaces, as they always do. Numbers are not judged here (bench/RESULTS.md records
real runs).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.smoke import run_smoke
from lab.naming import host_netns
from lab.testing import ip_json, skip_reason
from tests.lab.cloud import CloudUser, lab_hosts
from tests.lab.storage_support import daemon_pids

pytestmark = [pytest.mark.lab, pytest.mark.slow]

NUM = r"[0-9.]+"


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture
def root_only():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def served_lab(lab):
    """The session lab, with its controller and agents (not KUMO_LAB_SERVICES=none)."""
    if os.environ.get("KUMO_LAB_SERVICES") == "none" or not (lab.state_dir / "demo.key").exists():
        pytest.skip("the session lab runs without controller and agents")
    return lab


def test_bench_dataplane_smoke(root_only):
    before = _netns()
    run_smoke("bench_dataplane.py", timeout=300, expect=[
        r"^4 ports in 2 VPCs .* kernel records",
        rf"^kumo ensure from empty +{NUM} +{NUM}",
        rf"^kumo one-port change +{NUM} +{NUM} +diff vs last applied",
        rf"^baseline ip/bridge one by one +{NUM} +{NUM} +\d+ commands",
        rf"^baseline one-port change +{NUM} +{NUM} +2 commands",
        r"^speed-up vs baseline, full: ",
        r"^baseline state == kumo desired state \(planner finds nothing to do\): True$",
        r"^target: a change effective within 2 s: (PASS|FAIL)$",
    ])
    assert not {n for n in _netns() - before if n.startswith("kvn-bench-")}


def test_bench_firewall_smoke(root_only):
    before = _netns()
    run_smoke("bench_firewall.py", timeout=300, expect=[
        r"^control plane: 1 group, \d+ rules, 100 ports",
        r"^  kumo \(libnftables in process\)$",
        r"^  baseline: same via nft CLI subprocess$",
        r"^    full apply \(atomic\) +wall median",
        r"^    one rule added +wall median",
        r"^  kumo sets: A 10, B 10 \(control\) +new conn/s",
        r"^  kumo sets: A 10, B 1000 +new conn/s",
        r"^  linear: +A 10, B 1000 +new conn/s",
        r"^  conn/s +kumo 1000 vs 10 rules: .*kumo/linear at 1000: " + NUM + "x",
        r"^  udp rx pkt/s +kumo 1000 vs 10 rules: .*kumo/linear at 1000: " + NUM + "x",
    ])
    assert not {n for n in _netns() - before if n.startswith("kfw-")}


def test_bench_metadata_smoke(root_only):
    """The metadata service (the agent's MetadataService) in scratch namespaces of its own
    (kumo-bmd-<pid>-r/-g): throughput rows for each request kind beside the fixed-200 baseline,
    and the rate-limit windows; nothing left behind."""
    before = _netns()
    row = rf" +{NUM} +{NUM} +{NUM} +{NUM} +{NUM} % +\d+/\d+ +\d+ +\d+ +{NUM}"
    run_smoke("bench_metadata.py", timeout=300, expect=[
        r"^namespaces kumo-bmd-\d+-r .* 4 instances, documents",
        r"^load: 1 client process\(es\) x 2 keep-alive connections",
        *[rf"^{name}{row}$" for name in (
            "baseline fixed 200, keep-alive", "baseline fixed 200, new conn per request",
            "kumo GET instance-id, IMDSv1", "kumo GET instance-id, IMDSv2 token",
            "kumo PUT /latest/api/token", "kumo GET identity document, token")],
        rf"^kumo/baseline req/s: IMDSv1 {NUM}x, IMDSv2 {NUM}x, identity {NUM}x "
        rf"\(vs keep-alive\); token PUT {NUM}x",
        r"^server CPU per request above the baseline: IMDSv1 \+-?\d+ us, IMDSv2 \+-?\d+ us, "
        r"identity \+-?\d+ us, token PUT \+-?\d+ us$",
        r"^wrong answers \(not the source instance's own\): 0$",
        rf"^    hammering instance: \d+ requests in {NUM} s \({NUM}/s\): served \d+, refused "
        rf"429 0; server CPU {NUM} us/request",
        rf"^    hammering instance: \d+ requests .* refused 429 [1-9]\d*; .* the bucket allows "
        rf"at most 100 \+ 50/s x {NUM} s .*: ok$",
        *[rf"^    {label} +p50 +{NUM} ms +p99 +{NUM} ms +max +{NUM} ms +success \d+/\d+ "
          rf"\({NUM} %\)$" for label in (
              r"alone \(default limit\)", "while one hammers, default limit",
              "while one hammers, limit out of the way")],
        r"^checks .*: all ok$",
        r"^target: the other instances keep 100 % success while one hammers past its limit: "
        r"(PASS|FAIL)$",
    ])
    assert not {n for n in _netns() - before if n.startswith("kumo-bmd-")}
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if "bench_metadata.py --client" in line]


def test_bench_launch_smoke(served_lab):
    run_smoke("bench_launch.py", "--lab-state", str(served_lab.state_dir), timeout=600, expect=[
        r"^kumo \(warm image cache\) +\(seconds after t=0; median over 1 runs",
        rf"^  client sees status ok +{NUM} \|",
        r"^plain virsh create, same host, same domain",
        rf"^  ready marker on console +{NUM} \|",
        r"^what is compared: kumo's NIC on its VPC bridge .* the plain domain's on bridge benchbr",
        r"^plain domain == kumo's domain \(live XML; names, paths, tap, bridge aside\): yes$",
        r"^  end to end, difference of medians: ",
        r"^kumo overhead without the guest's own boot: ",
        r"^target: kumo adds <= 5 % and < 0.3 s to the plain boot: (PASS|FAIL)",
    ])
    # The baseline's bridge went with the run; the session lab's hosts are as they were.
    for host in lab_hosts(served_lab):
        links = ip_json(host_netns(served_lab.prefix, host), "link")
        assert not [link["ifname"] for link in links if link["ifname"].startswith("benchbr")]


def test_bench_vpc_changes_smoke(served_lab):
    before = _netns()
    run_smoke("bench_vpc_changes.py", "--lab-state", str(served_lab.state_dir), timeout=900,
              expect=[
        r"^world up in .* a1 i-[0-9a-f]+ 172\.31\.1\.10 h1",
        r"^elastic IP associate -> HTTP answer from the internet names the new instance$",
        rf"^  effective +median +{NUM} s .*\(n=2\)$",
        r"^  failed changes: 0$",
        r"^route 0\.0\.0\.0/0 -> NAT gateway added -> a3's traffic reaches the internet listener$",
        rf"^  bare commands: eip_move .* median +{NUM} s",
        rf"^  bare commands: route add .* median +{NUM} s",
        rf"^  probe floor, elastic IP prober on an unchanged path +median +{NUM} s",
        rf"^  probe floor, a3's guest loop period on a working path +median +{NUM} s",
    ])
    assert not {n for n in _netns() - before if n.startswith("kvn-bench-")}


def test_bench_autoscaling_reaction_smoke(served_lab):
    """One load step in a group's guest on the session lab: the decision, the new member
    InService, the pipeline floor and the comparison are printed; the group, its launch
    template, the key pair and the baseline instance are gone afterwards."""
    import tempfile
    run_smoke("bench_autoscaling_reaction.py", "--lab-state", str(served_lab.state_dir),
              "--target", "20",
              timeout=900, expect=[
        rf"^baseline launch \(RunInstances kumo-tiny t3.nano, same key\): running {NUM} s, "
        rf"status ok {NUM} s$",
        rf"^  scale-out decision {NUM} s after t0 \({NUM} s after the load step",
        rf"^  new instance i-[0-9a-f]+ InService {NUM} s after t0 \({NUM} s after the load "
        r"step\)",
        rf"^  baseline pipeline floor: first CPU sample > {NUM}% visible in /v1/metrics/statistics "
        rf"{NUM} s after t0$",
        rf"^  decision: load step -> desired capacity raised +median +{NUM} s +p95 +{NUM} s",
        rf"^  InService: load step -> new instance InService +median +{NUM} s +p95 +{NUM} s",
        rf"^decision minus pipeline floor: median -?{NUM} s, p95 -?{NUM} s",
        rf"^AWS documented minimum, same shape .*: 180 s before a decision; kumo's median "
        rf"{NUM} s is {NUM}x sooner\. Sources: https://docs\.aws\.amazon\.com/",
        r"^target: scale-out decision within 15 s of the load step: (PASS|FAIL)",
        r"^clean-up \(group force-deleted, launch template, key pair, baseline instance\): ok$",
    ])
    cloud = CloudUser(served_lab, Path(tempfile.mkdtemp(prefix="kumo-bench-keys-")))
    try:
        groups = cloud.call("GET", "/v1/autoscaling-groups", params={"max_results": 1000})
        assert not [g for g in groups["items"]
                    if g["auto_scaling_group_name"].startswith("bench-asr-")]
        templates = cloud.call("GET", "/v1/launch-templates", params={"max_results": 1000})
        assert not [t for t in templates["items"]
                    if t["launch_template_name"].startswith("bench-asr-")]
        pairs = cloud.call("GET", "/v1/key-pairs", params={"max_results": 1000})["items"]
        assert not [k for k in pairs if k["name"].startswith("bench-asr-")]
    finally:
        cloud.close()
        shutil.rmtree(cloud.key_dir, ignore_errors=True)


def test_bench_volumes_smoke(lab, root_only):
    """Part 1 (create/delete and snapshots) in a scratch namespace of its own; part 2 boots one
    kumo-tiny guest on the session lab's h1 (libvirtd only: no controller or agent needed) with
    an NBD volume from a scratch storage node wired into the lab's fabric, and two local qcow2
    files; part 3, when the session lab runs its controller, launches one instance through the
    API and times attach/detach in the guest against a plain domain's libvirt hot-plug."""
    import tempfile

    import libvirt

    def daemons() -> set[str]:
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        return {line.split()[0] for line in out.splitlines()
                if line.split()[1:2] and line.split()[1].endswith("qemu-storage-daemon")}

    def guests() -> set[str]:
        names = set()
        for host in lab_hosts(lab):
            conn = libvirt.open(lab.libvirt_uri(host))
            try:
                names |= {d.name() for d in conn.listAllDomains()}
            finally:
                conn.close()
        return names

    served = (os.environ.get("KUMO_LAB_SERVICES") != "none"
              and (lab.state_dir / "demo.key").exists())
    snap_cases = ("1 GiB, 8 MiB written", "100 GiB, 8 MiB written", "1 GiB, 256 MiB written")
    attach_lines = [
        rf"^round 2/2: kumo attach {NUM} s detach {NUM} s; baseline attach {NUM} s detach {NUM} s$",
        *[rf"^  {name} +median +{NUM} ms +p95 +{NUM} ms +min +{NUM} ms +\(n=2\)$" for name in (
            "kumo API attach -> guest sees it", "baseline libvirt attach -> guest",
            "kumo API detach -> guest sees it", "baseline libvirt detach -> guest",
            "kumo API grow -> guest sees it", "baseline libvirt grow -> guest")],
        rf"^grow round 2/2: kumo {NUM} s; baseline {NUM} s$",
        rf"^kumo attach vs baseline libvirt attach: {NUM}x the time",
        rf"^kumo detach vs baseline libvirt detach: {NUM}x the time",
        rf"^kumo grow vs baseline libvirt grow: {NUM}x the time",
        r"^part 3 clean-up: instance i-[0-9a-f]+ terminated, volume vol-[0-9a-f]+ deleted, .*: ok$",
    ] if served else [r"^skipped: the lab runs without controller and agents$"]

    before, daemons_before, guests_before = _netns(), daemons(), guests()
    run_smoke("bench_volumes.py", "--lab-state", str(lab.state_dir), timeout=900, expect=[
        r"^storage daemon start \(first ensure, not in the timings\): " + NUM + " ms$",
        r"^\[1 GiB\] exported volume vol-[0-9a-f]{17}: NBD shows 1073741824 bytes: ok$",
        r"^\[100 GiB\] exported volume vol-[0-9a-f]{17}: NBD shows 107374182400 bytes: ok$",
        *[rf"^  {name} +median +{NUM} ms +p95 +{NUM} ms +min +{NUM} ms +\(n=2\)$"
          for name in ("kumo create", "kumo export", r"kumo create\+export",
                       r"kumo unexport\+delete", "baseline qemu-img create", "baseline rm")],
        rf"^  kumo create\+export +1 GiB +{NUM} ms +100 GiB +{NUM} ms +ratio +{NUM}x$",
        r"^create\+export O\(1\) in volume size .*: (PASS|FAIL) \(" + NUM + r"x\)$",
        rf"^kumo create\+export vs baseline qemu-img create at 100 GiB: {NUM}x the time",
        rf"^kumo unexport\+delete vs baseline rm at 100 GiB: {NUM}x the time",
        *[rf"^\[{case}\] snapshot snap-[0-9a-f]{{17}} of vol-[0-9a-f]{{17}} listed by the "
          r"backend: ok$" for case in snap_cases],
        *[rf"^  {name} +median +{NUM} ms +p95 +{NUM} ms +min +{NUM} ms +\(n=2\)$"
          for name in ("kumo snapshot", "kumo delete snapshot", "baseline qemu-img snapshot -c",
                       "baseline full copy")],
        rf"^kumo snapshot time vs volume size \(8 MiB written\): 1 GiB {NUM} ms, 100 GiB {NUM} "
        rf"ms, ratio {NUM}x$",
        rf"^kumo snapshot time vs data written \(1 GiB volume\): 8 MiB {NUM} ms, 256 MiB {NUM} "
        rf"ms, ratio {NUM}x$",
        rf"^kumo snapshot vs baseline qemu-img snapshot -c at 1 GiB, 256 MiB written: {NUM}x",
        rf"^kumo snapshot vs baseline full copy at 1 GiB, 256 MiB written: {NUM}x",
        (r"^  vdb  NBD volume vol-[0-9a-f]{17} on the (lab's|benchmark's scratch) storage node "
         r".* cache=none"),
        *[rf"^  {row} +{NUM} +{NUM} +{NUM}$" for row in (
            "seq write MiB/s", "seq read MiB/s", "rand read 4k IOPS", "rand write 4k IOPS")],
        rf"^  loop floor, read +\(dd /dev/zero -> /dev/null, same loop\): +{NUM} requests/s",
        rf"^  loop floor, write \(dd /dev/zero -> /dev/null, same loop\): +{NUM} requests/s",
        *[rf"^ratio NBD/local {row} +vs vdc \(default cache\) +{NUM}x +vs vdd \(cache=none\) "
          rf"+{NUM}x$" for row in ("seq write MiB/s", "seq read MiB/s", "rand read 4k IOPS",
                                   "rand write 4k IOPS")],
        rf"^rand read 4k latency above the loop floor \(ms\): NBD -?{NUM}, local -?{NUM}",
        rf"^rand write 4k latency above the loop floor \(ms\): NBD -?{NUM}, local -?{NUM}",
        r"^volume file on the storage node: .* allocated .*: ok$",
        r"^local file vdc: .*: ok$",
        r"^local file vdd: .*: ok$",
        *attach_lines,
        r"^left behind \(namespaces, storage daemons, files\): nothing$",
    ])
    assert not {n for n in _netns() - before if n.startswith("kvn-bench-")}
    # The lab's own node may have started a daemon meanwhile (part 3's volume, through the
    # controller: with per-host NBD over TLS, h1's daemon starts with h1's first export).
    lab_daemons = {str(p) for p in daemon_pids(lab)}
    assert not daemons() - daemons_before - lab_daemons, "a qemu-storage-daemon survived"
    # The scratch storage node's fabric port went with it; no guest is left on h1.
    fab = subprocess.run(["ip", "netns", "exec", f"{lab.prefix}-fab", "ip", "-o", "link"],
                         capture_output=True, text=True, check=True).stdout
    assert " p-kvb" not in fab
    assert guests() <= guests_before
    if served:  # part 3's key pair went with it (its instance and volume: checked by the run)
        cloud = CloudUser(lab, Path(tempfile.mkdtemp(prefix="kumo-bench-keys-")))
        try:
            pairs = cloud.call("GET", "/v1/key-pairs", params={"max_results": 1000})["items"]
            assert not [k for k in pairs if k["name"].startswith("bench-volumes-")]
        finally:
            cloud.close()
            shutil.rmtree(cloud.key_dir, ignore_errors=True)
    assert not [p for p in os.listdir("/var/tmp") if p.startswith("kumo-bench-vol-")]
    assert not [p for p in os.listdir(tempfile.gettempdir()) if p.startswith("kumo-bench-sn-")]
