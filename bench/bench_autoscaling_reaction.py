"""Benchmark: Auto Scaling reaction with real guests (issue 11). A load step in the guest ->
the group's scale-out decision, and -> the new instance InService; median and p95 over
repeated runs, beside the metrics pipeline's own latency measured in the same run, a plain
launch of one instance, and AWS's documented minimum for the same policy shape.

The group (one for all runs): a launch template of kumo-tiny (t3.nano, 1 vCPU), min 1, max 3,
desired 1, in the account's default subnet; default cooldown 20 s (as
tests/lab/test_autoscaling_policies_lab.py), instance warmup 45 s (see WARMUP_S); one target
tracking policy on average CPU, 50 % (the issue's) unless --target, with a scale-in period of
an hour so that only the benchmark scales it back in (by hand). Under TCG a guest's vCPU is a
host thread: on a host busy with other jobs the burner gets it well under 100 % (35-55 % seen
on the 2-CPU machines at load average 5-7), so there a target of 50 % is never crossed and
--target 20 is what shows the reaction; the rule and the timings are the same.

One run:
  1. The group at exactly 1 member (desired capacity set back to 1 by hand whenever it is
     not), InService, running, status ok, past its warmup, SSH answering, and its CPU settled:
     every 5 s datapoint of the last 20 s (at least 3) below min(25, 0.6 x target) % (GET
     /v1/metrics/statistics).
  2. t0 (monotonic, and wall clock) just before `ssh ... 'echo kumo-burn-start; <burner>'`
     starts (tests/lab/guests.py cpu_burner: one busy loop per vCPU, ends by itself). The
     load step is when the start line comes back over SSH (it is printed right before the
     loops start): "SSH start" is that minus t0, and every time below is given from t0 and
     from the load step.
  3. Every --poll seconds until the new member is InService: GET the group (desired capacity
     raised: the decision as the client sees it; the activity "Changing the desired capacity
     from 1 to N" then gives the controller's own decision time, microseconds, no poll in it),
     and until it shows, GET /v1/metrics/statistics of the member (period 5, Maximum): the
     first datapoint above the target visible to a client is the pipeline floor, the earliest
     any decision could be made on data the controller has. For context, then, the new
     instance's status ok (InService is its instance running; status ok is its guest booted).
  4. The burner ends; desired capacity back to 1 by hand (not the scale-in period).
After the runs, when the lab's controller database is SQLite in its state dir, the raw samples
of each run (ts = end of each agent sampling interval) are read from it (read-only) to show
where the decision time goes: sampling interval, the target tracking window (15 s average of
raw samples by default, autoscaling_metric_window_s), and the group pass (every 2 s).

Baseline, same run: a plain RunInstances of the same image, type and key (POST /v1/instances
-> running -> status ok), before the group exists; it also warms the host's image cache.
(--smoke makes the group first and launches the baseline during its member's warmup.)

Target (the issue): the decision within 15 s of the load step (p95 of the runs). A real run
fails when that is missed or a run does not complete; --smoke (1 run, short timeouts) only when
a run does not complete. Everything it made (group, force-deleted; launch template; key pair;
the baseline instance) is removed at the end, also when it fails.

Usage: .venv/bin/python bench/bench_autoscaling_reaction.py [--runs 5] [--hosts 1] [--poll 0.5]
       [--burn 30] [--target 50] [--lab-state DIR] [--dump FILE] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (SMOKE_HELP, bench_lab, exit_status, machine_note, median,  # noqa: E402
                          percentile, require_root)

TARGET_CPU = 50.0  # the policy; --target changes it (see its help)
# The group's instance warmup: longer than the lab test's 20 s, because a kumo-tiny boot under
# TCG on a busy host still burns CPU after 20 s, and with a low --target that alone scaled the
# group out before a run started. The measured decision is not affected: the loaded member is
# long past its warmup when the load step comes.
WARMUP_S = 45
COOLDOWN_S = 20
GOAL_S = 15.0
# AWS's documented minimum for the same policy shape. Target tracking on ASGAverageCPUUtilization
# with EC2 detailed monitoring (1-minute metrics): the scale-out alarm Auto Scaling creates for
# the policy (TargetTracking-...-AlarmHigh) needs 3 datapoints of 60 s above the target, so no
# decision comes before 3 x 60 s of load (plus CloudWatch's publication delay, not counted).
AWS_PERIOD_S, AWS_DATAPOINTS = 60, 3
AWS_MIN_S = AWS_PERIOD_S * AWS_DATAPOINTS
AWS_SOURCES = (
    "https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-scaling-target-tracking.html "
    "(target tracking creates and manages the CloudWatch alarms); "
    "https://docs.aws.amazon.com/autoscaling/ec2/userguide/"
    "policy-creating-high-resolution-metrics.html (1-minute vs high-resolution metric periods "
    "for faster response); https://docs.aws.amazon.com/autoscaling/ec2/userguide/"
    "policy_creating.html (metric needed at 1-minute intervals, i.e. detailed monitoring)")


def epoch(iso: str) -> float:
    d = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def stat_line(name: str, xs: list[float]) -> str:
    if not xs:
        return f"  {name:<52} no data"
    return (f"  {name:<52} median {median(xs):6.1f} s  p95 {percentile(xs, 95):6.1f} s  "
            f"min {min(xs):6.1f} s  max {max(xs):6.1f} s  (n={len(xs)})")


class Bench:
    """The benchmark's objects in one account of a lab, and their clean-up."""

    def __init__(self, lab, work: Path, args):
        from tests.lab.cloud import CloudUser
        self.lab, self.args = lab, args
        self.cloud = CloudUser(lab, work / "keys")
        self.cloud.allow_admin_access()
        suffix = uuid.uuid4().hex[:8]
        self.group = f"bench-asr-{suffix}"
        self.template = f"bench-asr-lt-{suffix}"
        self.key_name = f"bench-asr-{suffix}"
        self.key: Path | None = None
        self.group_made = False
        self.baseline_iid: str | None = None

    def call(self, method: str, path: str, **kw):
        return self.cloud.call(method, path, **kw)

    def group_state(self) -> dict:
        return self.call("GET", f"/v1/autoscaling-groups/{self.group}")

    # -- set-up -----------------------------------------------------------------------------
    def setup_key(self) -> None:
        self.key = self.cloud.key_pair(self.key_name)

    def plain_launch(self, timeout: float) -> dict:
        """RunInstances of the group's image/type/key: seconds to running and to status ok."""
        t0 = time.monotonic()
        inst = self.cloud.run(1, key_name=self.key_name)[0]
        self.baseline_iid = iid = inst["instance_id"]
        out: dict[str, float] = {}
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            cur = self.cloud.instance(iid)
            now = time.monotonic() - t0
            if cur["state"] == "running":
                out.setdefault("running", now)
                if cur["instance_status"] == "ok":
                    out["ok"] = now
                    break
            if cur["state"] in ("shutting-down", "terminated"):
                raise RuntimeError(f"baseline instance {iid} failed: {cur}")
            time.sleep(self.args.poll)
        else:
            raise RuntimeError(f"baseline instance {iid} not running/ok within {timeout} s")
        self.terminate_baseline()
        return out

    def terminate_baseline(self, timeout: float = 120) -> None:
        iid = self.baseline_iid
        if iid is None:
            return
        if self.cloud.instance(iid)["state"] != "terminated":
            self.cloud.action(iid, "terminate")
        deadline = time.monotonic() + timeout
        while self.cloud.instance(iid)["state"] != "terminated":
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline instance {iid} not terminated within {timeout} s")
            time.sleep(0.5)
        self.baseline_iid = None

    def make_group(self) -> None:
        subnet = next(s for s in self.call("GET", "/v1/subnets", params={"max_results": 1000})
                      ["items"] if s.get("default_for_az"))
        self.call("POST", "/v1/launch-templates", expect=201, json={
            "launch_template_name": self.template, "launch_template_data": {
                "image": "kumo-tiny", "instance_type": "t3.nano", "key_name": self.key_name}})
        self.call("POST", "/v1/autoscaling-groups", expect=201, json={
            "auto_scaling_group_name": self.group,
            "launch_template": {"launch_template_name": self.template},
            "min_size": 1, "max_size": 3, "desired_capacity": 1,
            "subnet_ids": [subnet["subnet_id"]], "health_check_grace_period": 120,
            "default_cooldown": COOLDOWN_S, "default_instance_warmup": WARMUP_S})
        self.group_made = True
        self.call("PUT", f"/v1/autoscaling-groups/{self.group}/policies/cpu50", json={
            "target_tracking_configuration": {"predefined_metric_specification": {
                "predefined_metric_type": "ASGAverageCPUUtilization"},
                "target_value": self.args.target},
            "scale_in_period": 3600})

    # -- one run ----------------------------------------------------------------------------
    def cpu_points(self, iid: str, start: float, end: float) -> list[dict]:
        return self.call("GET", "/v1/metrics/statistics", params={
            "namespace": "AWS/EC2", "metric_name": "CPUUtilization",
            "dimension": [f"InstanceId={iid}"], "start_time": iso(start), "end_time": iso(end),
            "period": 5, "statistics": ["Maximum", "SampleCount"]})["datapoints"]

    def ready_one(self, timeout: float) -> dict:
        """Back to 1 member: InService, running/ok, past its warmup, SSH up, CPU settled."""
        from tests.lab.guests import ssh
        deadline = time.monotonic() + timeout
        why = "?"
        netns_of: dict[str, str] = {}
        while time.monotonic() < deadline:
            g = self.group_state()
            if g["desired_capacity"] != 1:  # by hand, also when the policy scaled meanwhile
                self.call("POST", f"/v1/autoscaling-groups/{self.group}/desired-capacity",
                          json={"desired_capacity": 1})
                why = f"desired {g['desired_capacity']} set back to 1"
                time.sleep(1)
                continue
            members = g["instances"]
            live = [m for m in members if m["lifecycle_state"] not in ("Terminated",)]
            if len(live) != 1 or live[0]["lifecycle_state"] != "InService":
                why = f"members {[(m['instance_id'], m['lifecycle_state']) for m in members]}"
                time.sleep(1)
                continue
            m = live[0]
            inst = self.cloud.instance(m["instance_id"])
            if inst["state"] != "running" or inst["instance_status"] != "ok":
                why = f"{inst['instance_id']} {inst['state']}/{inst['instance_status']}"
                time.sleep(1)
                continue
            age = time.time() - epoch(m["launch_time"])
            if age < WARMUP_S + 5:
                why = f"{inst['instance_id']} launched {age:.0f} s ago (warmup {WARMUP_S} s)"
                time.sleep(1)
                continue
            if inst["instance_id"] not in netns_of:
                netns_of[inst["instance_id"]] = self.cloud.router_netns(inst)
            if ssh(netns_of[inst["instance_id"]], self.key, inst["private_ip"], "true",
                   timeout=20).returncode != 0:
                why = f"{inst['instance_id']}: no SSH yet"
                time.sleep(1)
                continue
            now = time.time()
            pts = self.cpu_points(inst["instance_id"], now - 20, now + 5)
            settled = min(25.0, 0.6 * self.args.target)
            if len(pts) < 3 or any(p["Maximum"] >= settled for p in pts):
                why = (f"{inst['instance_id']} CPU not settled: "
                       f"{[round(p['Maximum']) for p in pts]}")
                time.sleep(2)
                continue
            return {**inst, "netns": netns_of[inst["instance_id"]]}
        raise RuntimeError(f"group not back to 1 settled member within {timeout} s: {why}")

    def one_run(self, inst: dict, decision_timeout: float, inservice_timeout: float) -> dict:
        from tests.lab.guests import SSH_OPTS, cpu_burner
        iid = inst["instance_id"]
        argv = ["ip", "netns", "exec", inst["netns"], "ssh", "-i", str(self.key), *SSH_OPTS,
                f"root@{inst['private_ip']}",
                "echo kumo-burn-start; " + cpu_burner(self.args.burn)]
        seen: dict[str, float] = {}
        out_lines: list[str] = []
        t0w = time.time()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def reader():
            for line in proc.stdout:
                out_lines.append(line.rstrip())
                if "kumo-burn-start" in line:
                    seen.setdefault("load", time.monotonic() - t0)
        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        r: dict = {"instance": iid, "t0_wall": t0w}
        try:
            try:
                self._poll(r, iid, t0, t0w, decision_timeout, inservice_timeout)
            except RuntimeError as e:
                if proc.poll() is None:
                    proc.kill()
                rt.join(5)
                err = proc.stderr.read() if proc.stderr else ""
                samples = self.raw_samples(iid, t0w - 20, time.time())
                acts = self.call("GET", f"/v1/autoscaling-groups/{self.group}/activities",
                                 params={"max_results": 20})["items"]
                raise RuntimeError(
                    f"{e}; SSH start {seen.get('load')}, SSH exit {proc.poll()}, stdout "
                    f"{out_lines[-3:]}, stderr {err[-300:]!r}; pipeline {r.get('pipeline')}; raw "
                    f"samples after t0 {[(round(ts - t0w, 1), round(v)) for ts, v in samples]};"
                    f" activities {[(a['start_time'], a['description']) for a in acts[:5]]}"
                ) from None
            r.setdefault("decision", r["decision_poll"])
            # For context: InService is the member's instance running; the guest's own boot
            # (instance status ok: the ready marker on its console) comes later.
            deadline = t0 + inservice_timeout
            while time.monotonic() < deadline:
                if self.cloud.instance(r["new_instance"])["instance_status"] == "ok":
                    r["new_ok"] = time.monotonic() - t0
                    break
                time.sleep(self.args.poll)
            # The burner ends by itself (--burn s on the guest's clock).
            try:
                proc.wait(timeout=max(5.0, self.args.burn + 30 - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            rt.join(5)
        r["ssh_start"] = seen.get("load")
        r["burned"] = any("burned" in line for line in out_lines)
        r["samples"] = self.raw_samples(iid, t0w - 20, t0w + r["decision"] + 5)
        return r

    def _poll(self, r: dict, iid: str, t0: float, t0w: float, decision_timeout: float,
              inservice_timeout: float) -> None:
        """Every --poll s until the new member is InService: the pipeline floor, the
        decision (client poll and activity time) and InService, into r."""
        deadline_dec = t0 + decision_timeout
        deadline_in = t0 + inservice_timeout
        while True:
            now = time.monotonic()
            if "pipeline" not in r:
                for p in self.cpu_points(iid, t0w - 10, time.time() + 5):
                    # A datapoint whose 5 s bucket ends after t0 (not the settled past).
                    if epoch(p["timestamp"]) + 5 > t0w and p["Maximum"] > self.args.target:
                        r["pipeline"] = time.monotonic() - t0
                        break
            g = self.group_state()
            if "decision_poll" not in r and g["desired_capacity"] > 1:
                r["decision_poll"] = time.monotonic() - t0
                r["desired_to"] = g["desired_capacity"]
                acts = self.call("GET", f"/v1/autoscaling-groups/{self.group}/activities",
                                 params={"max_results": 100})["items"]
                ups = sorted((epoch(a["start_time"]), a["cause"]) for a in acts
                             if a["description"].startswith("Changing the desired capacity "
                                                            "from 1 to")
                             and epoch(a["start_time"]) > t0w - 1)
                if ups:
                    r["decision"] = ups[0][0] - t0w
                    r["cause"] = ups[0][1]
            new = [m for m in g["instances"] if m["instance_id"] != iid
                   and m["lifecycle_state"] == "InService"]
            if new:
                r["inservice"] = time.monotonic() - t0
                r["new_instance"] = new[0]["instance_id"]
                break
            if "decision_poll" not in r and now > deadline_dec:
                raise RuntimeError(f"no scale-out decision within {decision_timeout} s "
                                   f"(desired {g['desired_capacity']})")
            if now > deadline_in:
                states = [(m["instance_id"], m["lifecycle_state"]) for m in g["instances"]]
                raise RuntimeError(f"no new member InService within {inservice_timeout} s:"
                                   f" {states}")
            time.sleep(max(0.0, self.args.poll - (time.monotonic() - now)))

    def raw_samples(self, iid: str, start: float, end: float) -> list[tuple[float, float]]:
        """(ts, CPU %) of the instance's raw samples from the lab controller's SQLite database
        (read-only), or [] when there is none; only for the breakdown, never for a result."""
        db = self.lab.state_dir / "controller" / "kumo.db"
        if not db.exists():
            return []
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                rows = con.execute(
                    "SELECT ts, value FROM metric_datum WHERE instance_id = ? AND metric_name = "
                    "'CPUUtilization' AND ts >= ? AND ts <= ? ORDER BY ts",
                    (iid, int(start * 1000), int(end * 1000))).fetchall()
            finally:
                con.close()
        except sqlite3.Error:
            return []
        return [(ts / 1000.0, float(v)) for ts, v in rows]

    # -- clean-up ---------------------------------------------------------------------------
    def _delete(self, path: str) -> None:
        r = self.cloud.api.delete(path)
        if r.status_code >= 400 and r.status_code != 404:
            raise RuntimeError(f"{r.status_code} {r.text}")

    def _delete_group(self) -> None:
        self.cloud.api.delete(f"/v1/autoscaling-groups/{self.group}", params={"force": "true"})
        deadline = time.monotonic() + 180
        while self.cloud.api.get(f"/v1/autoscaling-groups/{self.group}").status_code != 404:
            if time.monotonic() > deadline:
                raise RuntimeError("still there after 180 s")
            time.sleep(1)

    def cleanup(self) -> list[str]:
        """Remove everything the benchmark made; returns what could not be removed. A step that
        fails is reported and the next ones still run."""
        steps = [(f"launch template {self.template}",
                  lambda: self._delete(f"/v1/launch-templates/{self.template}")),
                 (f"baseline instance {self.baseline_iid}", self.terminate_baseline),
                 (f"key pair {self.key_name}",
                  lambda: self._delete(f"/v1/key-pairs/{self.key_name}"))]
        if self.group_made:
            steps.insert(0, (f"group {self.group}", self._delete_group))
        problems: list[str] = []
        for what, step in steps:
            try:
                step()
            except Exception as e:
                problems.append(f"{what}: {e}")
        self.cloud.close()
        return problems


def window_rule_time(samples: list[tuple[float, float]], t0w: float, target: float,
                     window_s: float = 15.0) -> float | None:
    """The first sample time (after t0) at which the target tracking rule, evaluated right then
    on the samples stored so far, would scale out: average of the raw samples with ts in
    (t - window, t] above target * 1.1 (controller/services/scaling_rules.py TOLERANCE)."""
    for ts, _ in samples:
        if ts <= t0w:
            continue
        w = [v for s, v in samples if ts - window_s < s <= ts]
        if w and sum(w) / len(w) > target * 1.1:
            return ts - t0w
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="load steps (one group for all)")
    ap.add_argument("--hosts", type=int, default=1, help="hosts of the benchmark's own lab")
    ap.add_argument("--poll", type=float, default=0.5, help="client poll interval (s)")
    ap.add_argument("--burn", type=int, default=30, help="seconds the guest's burner runs")
    ap.add_argument("--target", type=float, default=TARGET_CPU,
                    help="the policy's target CPU %% (default the issue's 50); the burner must "
                         "get the guest above it: a guest's vCPU under TCG on a host busy with "
                         "other jobs may get well under 100 %% of a host CPU")
    ap.add_argument("--dump", type=Path, default=None, help="write the raw runs as JSON here")
    ap.add_argument("--lab-state", type=Path, default=None,
                    help="use the running lab with this state dir instead of a lab of its own")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + " (1 run, short timeouts)")
    args = ap.parse_args()
    if args.smoke:
        args.runs = 1
    require_root()
    from images.builder import build
    print("autoscaling reaction benchmark;", machine_note(), flush=True)
    build("kumo-tiny", log=lambda *_: None)  # cached after the first build
    ready_timeout = 240 if args.smoke else 360
    decision_timeout = 60 if args.smoke else 120
    inservice_timeout = 180 if args.smoke else 300
    work = Path(tempfile.mkdtemp(prefix="kumo-bench-asr-"))
    runs: list[dict] = []
    launch: dict = {}
    failed = None
    problems: list[str] = []
    try:
        with bench_lab(args.lab_state, args.hosts) as lab:
            b = Bench(lab, work, args)
            try:
                b.setup_key()
                if args.smoke:
                    # The group's first member must sit out its warmup (WARMUP_S) before a run:
                    # a smoke run, whose numbers are not judged, spends that wait on the
                    # baseline launch instead of doing the two one after the other. A real run
                    # launches the baseline alone, before the group exists (see above).
                    b.make_group()
                launch = b.plain_launch(timeout=180)
                print(f"baseline launch (RunInstances kumo-tiny t3.nano, same key): running "
                      f"{launch['running']:.1f} s, status ok {launch['ok']:.1f} s", flush=True)
                if not args.smoke:
                    b.make_group()
                print(f"group {b.group}: kumo-tiny t3.nano, min 1 max 3, target tracking "
                      f"{args.target:g}% CPU, warmup {WARMUP_S} s, cooldown {COOLDOWN_S} s; "
                      f"burner {args.burn} s; poll {args.poll} s", flush=True)
                for i in range(args.runs):
                    t = time.monotonic()
                    inst = b.ready_one(ready_timeout)
                    ready_s = time.monotonic() - t
                    r = b.one_run(inst, decision_timeout, inservice_timeout)
                    runs.append(r)
                    show_run(i + 1, args.runs, r, ready_s, args.target)
            except Exception as e:  # reported; the clean-up below runs either way
                failed = f"{type(e).__name__}: {e}"
                print(f"run failed: {failed}", flush=True)
            finally:
                problems = b.cleanup()
                print(f"clean-up (group force-deleted, launch template, key pair, baseline "
                      f"instance): {'ok' if not problems else '; '.join(problems)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.dump:
        args.dump.write_text(json.dumps({"launch": launch, "runs": runs}, indent=1))
    target_ok = summarize(runs, launch, args.runs, args.target)
    checks_ok = failed is None and not problems and len(runs) == args.runs
    return exit_status(checks_ok, target_ok, args.smoke)


def show_run(i: int, n: int, r: dict, ready_s: float, target: float) -> None:
    ssh = r.get("ssh_start")
    load = ssh or 0.0
    m = re.search(r"CPU [0-9.]+% above target [0-9.]+%", r.get("cause", ""))
    why = m.group(0) if m else (r.get("cause") or "activity not found")[-80:]
    print(f"run {i}/{n}: {r['instance']} settled in {ready_s:.0f} s; SSH start "
          f"{'%.2f s' % ssh if ssh is not None else 'not seen'}; burner "
          f"{'ran to its end' if r['burned'] else 'cut short'}", flush=True)
    print(f"  scale-out decision {r['decision']:.1f} s after t0 "
          f"({r['decision'] - load:.1f} s after the load step; client poll saw desired "
          f"{r.get('desired_to')} at "
          f"{r['decision_poll']:.1f} s; cause: {why})", flush=True)
    print(f"  new instance {r['new_instance']} InService {r['inservice']:.1f} s after t0 "
          f"({r['inservice'] - load:.1f} s after the load step)"
          + (f"; its status ok {r['new_ok']:.1f} s after t0" if r.get("new_ok") else ""),
          flush=True)
    pipe = r.get("pipeline")
    print(f"  baseline pipeline floor: first CPU sample > {target:g}% visible in "
          f"/v1/metrics/statistics {'%.1f s' % pipe if pipe is not None else 'not seen'} "
          f"after t0", flush=True)
    s = r.get("samples") or []
    if s:
        t0w = r["t0_wall"]
        pts = ", ".join(f"{ts - t0w:+.1f}s:{v:.0f}%" for ts, v in s)
        rule = window_rule_time(s, t0w, target)
        print(f"  raw samples (ts after t0: CPU): {pts}; 15 s window average first above "
              f"{target * 1.1:g}% at {'%.1f s' % rule if rule is not None else '-'}",
              flush=True)
        r["window_rule"] = rule


def summarize(runs: list[dict], launch: dict, wanted: int, target: float) -> bool:
    print(f"\nsummary over {len(runs)} of {wanted} runs (seconds after t0 = just before the "
          f"SSH command; 'load step' = t0 + SSH start):")
    if not runs:
        print("  no completed run")
        print(f"target: scale-out decision within {GOAL_S:g} s of the load step: FAIL (no data)")
        return False
    ssh = [r["ssh_start"] or 0.0 for r in runs]
    dec = [r["decision"] for r in runs]
    dec_load = [d - s for d, s in zip(dec, ssh)]
    ins = [r["inservice"] for r in runs]
    ins_load = [x - s for x, s in zip(ins, ssh)]
    pipe = [r["pipeline"] for r in runs if r.get("pipeline") is not None]
    print(stat_line("SSH start (t0 -> burner's start line back)", ssh))
    print(stat_line("decision: load step -> desired capacity raised", dec_load))
    print(stat_line("decision: t0 -> desired capacity raised", dec))
    print(stat_line("InService: load step -> new instance InService", ins_load))
    print(stat_line("InService: t0 -> new instance InService", ins))
    new_ok = [r["new_ok"] - s for r, s in zip(runs, ssh) if r.get("new_ok")]
    print(stat_line("(context) load step -> new instance status ok", new_ok))
    print(stat_line("baseline: t0 -> first CPU sample > target visible", pipe))
    if launch:
        print(f"  baseline: plain launch RunInstances -> running {launch['running']:.1f} s, "
              f"-> status ok {launch['ok']:.1f} s (one instance, same image/type/key)")
    gaps = [r["decision"] - r["pipeline"] for r in runs if r.get("pipeline") is not None]
    if gaps:
        print(f"decision minus pipeline floor: median {median(gaps):.1f} s, p95 "
              f"{percentile(gaps, 95):.1f} s (min {min(gaps):.1f}, max {max(gaps):.1f}); "
              f"the floor is {median(pipe):.1f} s of the {median(dec):.1f} s median")
    launch_part = [r["inservice"] - r["decision"] for r in runs]
    print(f"decision -> InService: median {median(launch_part):.1f} s"
          + (f" vs plain launch -> status ok {launch['ok']:.1f} s" if launch else ""))
    rules = [r["window_rule"] for r in runs if r.get("window_rule") is not None]
    if rules:
        lag = [r["decision"] - r["window_rule"] for r in runs if r.get("window_rule") is not None]
        print(f"where the decision time goes (medians): 15 s window average first above "
              f"{target * 1.1:g}% at {median(rules):.1f} s (sample ts); decision "
              f"{median(lag):+.1f} s after that (ingest + group pass every 2 s)")
    print(f"AWS documented minimum, same shape (target tracking, 1-minute detailed monitoring, "
          f"alarm of {AWS_DATAPOINTS} datapoints x {AWS_PERIOD_S} s): {AWS_MIN_S} s before a "
          f"decision; kumo's median {median(dec_load):.1f} s is "
          f"{AWS_MIN_S / median(dec_load):.0f}x sooner. Sources: {AWS_SOURCES}")
    p95 = percentile(dec_load, 95)
    ok = p95 <= GOAL_S and len(runs) == wanted
    print(f"target: scale-out decision within {GOAL_S:g} s of the load step: "
          f"{'PASS' if ok else 'FAIL'} (p95 {p95:.1f} s, median {median(dec_load):.1f} s, "
          f"{sum(d <= GOAL_S for d in dec_load)}/{len(dec_load)} runs within)")
    return ok


if __name__ == "__main__":
    sys.exit(main())
