"""Benchmark: launch latency of kumo-tiny through Kumo, against a plain `virsh create` of the same
image on the same lab host, in the same run.

A lab of its own (unique prefix, temporary state dir, a free port on 127.0.0.1; always torn down)
runs the real controller and agent. One cold launch (image not yet in the agent's cache) is
measured and shown but kept out of the medians. Then --runs pairs, sequential, in alternating
order (kumo, plain, plain, kumo, ...) so drifting load from other jobs hits both alike:

kumo:  POST /v1/instances (t=0) and poll GET /v1/instances/{id} every --poll seconds until
       state running and instance_status ok. Meanwhile a watcher thread (every 10 ms) timestamps
       what appears on the host: the agent's accepted spec file, the root disk overlay, the seed
       ISO, the libvirt domain (defined, then running), the ready marker on console.log. After
       ok: the controller's events (GET /v1/events?resource_id=) and the agent's own
       boot_started_at / booted_at (its runtime record). Then terminate and wait for terminated.
plain: the same image, same vCPU/RAM and NIC (bridge, MAC, static address copied from the
       agent's spec of a Kumo instance), same approach (qcow2 overlay + NoCloud seed ISO, domain
       XML from agent.libvirt.designer), started with `virsh -c <lab host uri> create dom.xml`;
       t=0 just before virsh; done when the ready marker is on the console file (10 ms polls).
       Overlay + seed preparation is timed separately. The domain is destroyed afterwards.

The gap between "marker on console" and "client sees ok" is Kumo's readiness path (agent resync
tick -> heartbeat -> controller); the gap between t=0 and "domain running" is the API, the
reconciler's push tick and the agent's steps.

Target (the issue): Kumo adds at most 5 % and under 0.3 s to the plain boot.

Usage: .venv/bin/python bench/bench_launch.py [--runs 5] [--hosts 1] [--poll 0.05] [--keep DIR]
"""
from __future__ import annotations

import argparse
import base64
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port, machine_note, median, require_root  # noqa: E402

MARKER = "KUMO-READY"
TARGET_PCT, TARGET_ABS = 5.0, 0.3
WATCH_EVERY = 0.01


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class HostWatcher(threading.Thread):
    """Timestamps (time.time()) of what appears on a lab host for one instance."""

    def __init__(self, lab, host_id: str, iid: str, domain: str | None = None):
        super().__init__(daemon=True)
        self.uri = lab.libvirt_uri(host_id)
        agent = lab.state_dir / "hosts" / host_id / "agent"
        idir = agent / "instances" / iid
        self.files = {"spec accepted by agent": agent / "agent-state" / "specs" / f"{iid}.json",
                      "root disk created": idir / "root.qcow2",
                      "seed ISO written": idir / "seed.iso"}
        self.console = idir / "console.log"
        self.domain = domain or iid
        self.seen: dict[str, float] = {}
        self.xml = ""
        self.stop = threading.Event()

    def run(self) -> None:
        import libvirt
        libvirt.registerErrorHandler(lambda *_: None, None)
        conn = libvirt.open(self.uri)
        offset, tail = 0, ""
        try:
            while not self.stop.is_set():
                now = time.time()
                for name, path in self.files.items():
                    if name not in self.seen and path.exists():
                        self.seen[name] = now
                if "domain running (libvirt)" not in self.seen:
                    try:
                        dom = conn.lookupByName(self.domain)
                        self.seen.setdefault("domain defined (libvirt)", now)
                        if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                            self.seen["domain running (libvirt)"] = now
                            self.xml = dom.XMLDesc(0)
                    except libvirt.libvirtError:
                        pass
                if MARKER not in tail and self.console.exists():
                    with open(self.console, "rb") as f:
                        f.seek(offset)
                        data = f.read()
                    offset += len(data)
                    tail = (tail + data.decode(errors="replace"))[-4096:]
                    if MARKER in tail:
                        self.seen["ready marker on console"] = now
                time.sleep(WATCH_EVERY)
        finally:
            conn.close()


class Api:
    def __init__(self, lab):
        from agent.contract.transport import client
        self.c = client(lab.url, (lab.state_dir / "demo.key").read_text().strip(), timeout=30)

    def call(self, method: str, path: str, **kw) -> dict:
        r = self.c.request(method, path, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json()


def keep(keep_dir: Path | None, name: str, console: Path, xml: str) -> None:
    """Copy a run's console log and live domain XML for later diagnosis (--keep)."""
    if keep_dir is None:
        return
    keep_dir.mkdir(parents=True, exist_ok=True)
    if console.exists():
        shutil.copyfile(console, keep_dir / f"{name}.console.log")
    (keep_dir / f"{name}.xml").write_text(xml)


def kumo_launch(lab, api: Api, poll: float, timeout: float = 180,
                keep_dir: Path | None = None) -> tuple[dict, dict]:
    """One launch through Kumo; returns (phases in s after POST, the agent's spec)."""
    images = lab.state_dir / "hosts"
    cached_before = any(images.glob("*/agent/images/ami-*.qcow2"))
    body = {"image": "kumo-tiny", "instance_type": "t3.nano", "min_count": 1, "max_count": 1,
            "user_data": base64.b64encode(b"").decode()}
    t0 = time.time()
    inst = api.call("POST", "/v1/instances", json=body)["instances"][0]
    t_accept = time.time()
    iid = inst["instance_id"]
    host = inst["host_id"]
    watcher = None
    ph: dict[str, float] = {"API accepted (POST returned)": t_accept}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            cur = api.call("GET", f"/v1/instances/{iid}")
            now = time.time()
            if host is None and cur.get("host_id"):
                host = cur["host_id"]
            if watcher is None and host:
                watcher = HostWatcher(lab, host, iid)
                watcher.start()
            if cur["state"] == "running":
                ph.setdefault("client sees running", now)
            if cur["state"] == "running" and cur["instance_status"] == "ok":
                ph["client sees status ok"] = now
                break
            if cur["state"] in ("shutting-down", "terminated"):
                raise RuntimeError(f"{iid} failed: {cur}")
            time.sleep(poll)
        else:
            raise RuntimeError(f"{iid} not running/ok within {timeout} s")
        time.sleep(0.05)
        agent = lab.state_dir / "hosts" / host / "agent"
        spec = json.loads((agent / "agent-state" / "specs" / f"{iid}.json").read_text())
        rt = json.loads((agent / "agent-state" / "runtime" / f"{iid}.json").read_text())
        spec["base_image_path"] = rt.get("image_path")
        if rt.get("boot_started_at"):
            ph["agent boot_started_at"] = rt["boot_started_at"]
        if rt.get("booted_at"):
            ph["agent booted_at (marker seen)"] = rt["booted_at"]
        for ev in api.call("GET", "/v1/events", params={"resource_id": iid,
                                                        "max_results": 100})["items"]:
            if ev["resource_type"] == "instance":
                ph.setdefault(f"event {ev['from_state']} -> {ev['to_state']}", epoch(ev["time"]))
            elif ev["resource_type"] == "instance-status":
                ph.setdefault(f"event status -> {ev['to_state']}", epoch(ev["time"]))
        if not cached_before:
            cached = sorted(images.glob(f"{host}/agent/images/ami-*.qcow2"))
            if cached:
                ph["image cached (cold run)"] = cached[0].stat().st_mtime
    finally:
        if watcher is not None:
            watcher.stop.set()
            watcher.join(5)
            ph.update(watcher.seen)
            keep(keep_dir, f"kumo-{iid}", watcher.console, watcher.xml)
        terminate(api, iid)
    return {k: v - t0 for k, v in ph.items()}, {"host_id": host, **spec}


def terminate(api: Api, iid: str, timeout: float = 120) -> None:
    api.call("POST", f"/v1/instances/{iid}/terminate")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.call("GET", f"/v1/instances/{iid}")["state"] == "terminated":
            return
        time.sleep(0.2)
    raise RuntimeError(f"{iid} not terminated within {timeout} s")


def plain_boot(lab, spec: dict, work: Path, timeout: float = 180,
               keep_dir: Path | None = None) -> dict:
    """Same image, same shape, plain virsh create on the same host; phases in s."""
    from agent import qemu_img, seed
    from agent.contract.v1 import NicSpec
    from agent.drivers.base import DomainNic, DomainPlan
    from agent.hypervisor_choice import choose_hypervisor
    from agent.libvirt.driver import LibvirtHypervisor
    host = spec["host_id"]
    uri = lab.libvirt_uri(host)
    image = Path(spec["base_image_path"])  # the agent's cached copy: the very same base file
    fake_id = "i-" + secrets.token_hex(9)[:17]
    name = f"boot-{fake_id[2:]}"
    d = work / name
    d.mkdir(parents=True)
    d.chmod(0o755)
    t_prep = time.time()
    disk = d / "root.qcow2"
    qemu_img.create_overlay(image, disk, max(spec["root_disk_bytes"],
                                             spec["image"]["virtual_size"]))
    nics = [NicSpec.model_validate(n) for n in spec["nics"]]
    meta = {"instance-id": fake_id, "local-hostname": spec["hostname"]}
    seed.write_seed_iso(d / "seed.iso", meta, base64.b64decode(spec["user_data_b64"]),
                        seed.network_config_v2(nics) if nics else None)
    plan = DomainPlan(name=name, vcpus=spec["vcpus"], memory_mib=spec["memory_mib"],
                      root_disk=disk, seed_iso=d / "seed.iso", console_log=d / "console.log",
                      nics=tuple(DomainNic(mac=n.mac, bridge=n.bridge) for n in nics))
    hv = LibvirtHypervisor(uri, choose_hypervisor("auto"))
    xml = d / "domain.xml"
    xml.write_text(hv.domain_xml(plan))
    hv.close()
    prep = time.time() - t_prep
    watcher = HostWatcher(lab, host, fake_id, domain=name)
    watcher.console = plan.console_log
    watcher.files = {}
    watcher.start()
    t0 = time.time()
    try:
        subprocess.run(["virsh", "-q", "-c", uri, "create", str(xml)], check=True,
                       capture_output=True, timeout=60)
        t_created = time.time()
        deadline = time.monotonic() + timeout
        while "ready marker on console" not in watcher.seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no {MARKER} within {timeout} s")
            time.sleep(WATCH_EVERY)
    finally:
        watcher.stop.set()
        watcher.join(5)
        subprocess.run(["virsh", "-q", "-c", uri, "destroy", name], capture_output=True)
        keep(keep_dir, f"plain-{name}", plan.console_log, watcher.xml)
    shutil.rmtree(d, ignore_errors=True)
    ph = {"overlay + seed + XML prepared (before t=0)": prep, "virsh create returned": t_created}
    ph.update(watcher.seen)
    return {k: (v if k.startswith("overlay") else v - t0) for k, v in ph.items()}


KUMO_ORDER = ["API accepted (POST returned)", "event None -> pending", "image cached (cold run)",
              "spec accepted by agent", "root disk created", "seed ISO written",
              "domain defined (libvirt)", "agent boot_started_at", "domain running (libvirt)",
              "event pending -> running", "client sees running", "ready marker on console",
              "agent booted_at (marker seen)", "event status -> ok", "client sees status ok"]


def show(title: str, runs: list[dict], order: list[str] | None = None) -> None:
    keys = list(dict.fromkeys([*(order or []), *[k for r in runs for k in r]]))
    keys = [k for k in keys if any(k in r for r in runs)]
    keys.sort(key=lambda k: median([r[k] for r in runs if k in r]))
    print(f"\n{title}  (seconds after t=0; median over {len(runs)} runs, then each run)")
    for k in keys:
        vals = [r.get(k) for r in runs]
        cells = " ".join(f"{v:7.3f}" if v is not None else "      -" for v in vals)
        print(f"  {k:44s} {median([v for v in vals if v is not None]):7.3f} | {cells}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hosts", type=int, default=1)
    ap.add_argument("--poll", type=float, default=0.05, help="client poll interval (s)")
    ap.add_argument("--dump", type=Path, default=None, help="write the raw phases as JSON here")
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy each run's console log and domain XML into this directory")
    args = ap.parse_args()
    require_root()
    from images.builder import build
    from lab import Lab
    from lab.testing import unique_prefix
    print("launch benchmark;", machine_note(), flush=True)
    build("kumo-tiny", log=lambda *_: None)  # cached after the first build
    tmp = Path(tempfile.mkdtemp(prefix="kumo-bench-launch-"))
    tmp.chmod(0o755)
    lab = Lab(tmp / "lab", prefix="kb" + unique_prefix()[2:], listen=f"127.0.0.1:{free_port()}")
    work = tmp / "plain"
    kumo_runs: list[dict] = []
    plain_runs: list[dict] = []
    try:
        t = time.time()
        lab.up(hosts=args.hosts)
        print(f"lab {lab.prefix} up with {args.hosts} host(s) in {time.time() - t:.1f} s; "
              f"controller {lab.url}", flush=True)
        api = Api(lab)
        cold, spec = kumo_launch(lab, api, args.poll, keep_dir=args.keep)
        show("kumo, cold launch (image fetched into the agent's cache; not in the medians)",
             [cold], KUMO_ORDER)
        for i in range(args.runs):
            order = ("kumo", "plain") if i % 2 == 0 else ("plain", "kumo")
            for what in order:
                if what == "kumo":
                    ph, spec = kumo_launch(lab, api, args.poll, keep_dir=args.keep)
                    kumo_runs.append(ph)
                else:
                    plain_runs.append(plain_boot(lab, spec, work,
                                                  keep_dir=args.keep))
            print(f"pair {i + 1}/{args.runs}: kumo ok at {kumo_runs[-1]['client sees status ok']:.3f}"
                  f" s, plain marker at {plain_runs[-1]['ready marker on console']:.3f} s",
                  flush=True)
    finally:
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.dump:
        args.dump.write_text(json.dumps({"cold": cold, "kumo": kumo_runs, "plain": plain_runs}))
    show("kumo (warm image cache)", kumo_runs, KUMO_ORDER)
    show("plain virsh create, same host, same image/shape", plain_runs)
    return 0 if summarize(kumo_runs, plain_runs) else 1


def gap(runs: list[dict], a: str, b: str) -> list[float]:
    return [r[b] - r[a] for r in runs if a in r and b in r]


def summarize(kumo_runs: list[dict], plain_runs: list[dict]) -> bool:
    """Print the comparison; True when the target is met (on the guest-noise-free overhead)."""
    M = "ready marker on console"
    D = "domain running (libvirt)"
    k_ok = [r["client sees status ok"] for r in kumo_runs]
    p_ready = [r[M] for r in plain_runs]
    p_dom = median([r[D] for r in plain_runs])
    k_guest, p_guest = gap(kumo_runs, D, M), gap(plain_runs, D, M)
    over = median(k_ok) - median(p_ready)
    print("\nsummary (medians over the warm runs):")
    print(f"  plain: virsh create -> marker on console          {median(p_ready):7.3f} s "
          f"(min {min(p_ready):.3f}, max {max(p_ready):.3f})")
    print(f"  kumo:  POST -> state running (client)             "
          f"{median([r['client sees running'] for r in kumo_runs]):7.3f} s")
    print(f"  kumo:  POST -> instance status ok (client)        {median(k_ok):7.3f} s "
          f"(min {min(k_ok):.3f}, max {max(k_ok):.3f})")
    print(f"  end to end, difference of medians: {over:+.3f} s ({100 * over / median(p_ready):+.1f} %)")
    print(f"  the guest's own boot (domain running -> marker): kumo {median(k_guest):.3f} s "
          f"({min(k_guest):.3f}..{max(k_guest):.3f}), plain {median(p_guest):.3f} s "
          f"({min(p_guest):.3f}..{max(p_guest):.3f})")
    spread = max(max(k_guest) - min(k_guest), max(p_guest) - min(p_guest))
    if spread > abs(over):
        print(f"  -> the end-to-end difference is inside the guests' run-to-run spread "
              f"({spread:.1f} s, other jobs load the machine): not a measure of Kumo")
    # What Kumo adds, without the guest's own boot: per Kumo run, its time to ok minus its
    # guest's domain-running -> marker time, minus what plain virsh needs to get a domain
    # running (median); compared with the plain boot's median.
    attr = [t - g - p_dom for t, g in zip(k_ok, k_guest)]
    a, a_pct = median(attr), 100 * median(attr) / median(p_ready)
    print(f"\nkumo overhead without the guest's own boot: {a:+.3f} s median "
          f"({min(attr):+.3f}..{max(attr):+.3f}), {a_pct:+.1f} % of the plain boot's median")
    print("  where it goes (medians of per-run gaps):")
    for x, y, why in [
            ("API accepted (POST returned)", "spec accepted by agent",
             "controller reconcile tick (reconcile_interval_s=1.0) until the spec is pushed"),
            ("spec accepted by agent", "domain defined (libvirt)",
             "agent steps: image check, overlay, seed, define"),
            ("domain defined (libvirt)", D, "libvirt + QEMU start (plain: virsh create "
             f"-> running {p_dom:.3f} s)"),
            (D, "client sees running", "heartbeat -> controller -> client poll"),
            (M, "agent booted_at (marker seen)",
             "agent notices the marker on its resync pass (resync_interval=1.0)"),
            ("agent booted_at (marker seen)", "event status -> ok", "heartbeat -> controller"),
            ("event status -> ok", "client sees status ok", "client poll (--poll)")]:
        g = gap(kumo_runs, x, y)
        if g:
            print(f"    {median(g):6.3f} s  {x} -> {y}: {why}")
    print(f"    {median([r['API accepted (POST returned)'] for r in kumo_runs]):6.3f} s  "
          "POST -> API accepted")
    ok = a_pct <= TARGET_PCT and a < TARGET_ABS
    print(f"target: kumo adds <= {TARGET_PCT:g} % and < {TARGET_ABS} s to the plain boot: "
          f"{'PASS' if ok else 'FAIL'} ({a:+.3f} s, {a_pct:+.1f} %)")
    return ok


if __name__ == "__main__":
    sys.exit(main())
