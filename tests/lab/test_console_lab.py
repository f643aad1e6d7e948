"""The web console against the lab's real controller: headless Chromium (Playwright, Debian's
/usr/bin/chromium) signs in with the demo account's API key, the launch wizard launches a real
kumo-tiny guest with a public IP in a fresh security group with no inbound rule, and the
instance page shows it running with status ok and its console output (the guest's ready marker)
without a reload. Then, in the same browser session and on the same guest (one boot: guests are
slow under TCG), the group's rule editor (#/security-groups/<id>) adds inbound SSH (tcp/22, the
guest's dropbear) from the lab client's own address, and real packets from the lab's internet
namespace prove it: no SSH banner for a whole probe window before the rule, the banner after
it. Back on the instance page the CPU chart shows a point from the agent's samples (every 5 s,
agent metrics_interval); then the page terminates the instance. The browser talks to the
controller on 127.0.0.1 only; the probes stay inside the lab's namespaces."""
from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.functional.console_browser_support import chromium_page, sign_in, wizard_step
from tests.lab.cloud import user_fixture
from tests.lab.net_support import CONVERGE, WINDOW
from tests.lab.sg_support import Stream, inet_argv

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.browser]

cloud = user_fixture()

# argv: target port duration interval stop("ok" or "none") -> a JSON line per attempt. An
# attempt is a success only when the SSH server's banner arrives (a TCP handshake alone could
# be something else answering). The probe never sends anything but the connection itself.
SSH_BANNER_PROBE = r"""
import json, socket, sys, time
target, port, duration, interval, stop = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
end = time.time() + duration
while True:
    t = time.time(); banner = err = None
    try:
        c = socket.create_connection((target, port), timeout=1.0)
        c.settimeout(5); data = b""
        while b"\n" not in data and len(data) < 512:
            chunk = c.recv(512)
            if not chunk:
                break
            data += chunk
        c.close()
        if data.startswith(b"SSH-2.0"):
            banner = data.split(b"\n", 1)[0].decode(errors="replace").strip()
        else:
            err = "no banner: %r" % data[:60]
    except OSError as e:
        err = str(e) or type(e).__name__
    print(json.dumps({"t": t, "banner": banner, "err": err}), flush=True)
    if stop == "ok" and banner:
        break
    if time.time() >= end:
        break
    time.sleep(max(0.0, interval - (time.time() - t)))
"""


def _probe_argv(lab, target: str, duration: float, interval: float, stop: str) -> list[str]:
    return inet_argv(lab, sys.executable, "-c", SSH_BANNER_PROBE, target, "22", str(duration),
                     str(interval), stop)


def _assert_ssh_blocked(lab, target: str) -> str:
    """Every attempt of a whole window fails (not one lost packet): >= 3 attempts over >= 3 s
    of the WINDOW, as sg_support.assert_inet_blocked."""
    r = subprocess.run(_probe_argv(lab, target, WINDOW, 0.3, "none"), capture_output=True,
                       text=True, timeout=WINDOW + 30)
    assert r.returncode == 0, r.stderr
    res = [json.loads(line) for line in r.stdout.splitlines()]
    span = res[-1]["t"] - res[0]["t"]
    assert len(res) >= 3 and span >= 3.0, f"window too short: {len(res)} attempts in {span:.1f} s"
    answered = [x for x in res if x["banner"]]
    assert not answered, f"{target}:22 answered before the rule: {answered}"
    return f"{len(res)} attempts in {span:.1f} s, all failed ({res[-1]['err']})"


def _client_address(lab, target: str) -> str:
    """The source address the internet namespace uses towards `target` (the rule's CIDR)."""
    out = subprocess.run(inet_argv(lab, "ip", "-4", "route", "get", target), check=True,
                         capture_output=True, text=True).stdout
    return re.search(r"\bsrc (\S+)", out).group(1)


def test_wizard_launch_rule_editor_packets_chart_and_terminate(cloud):
    started = time.monotonic()
    key = (cloud.lab.state_dir / "demo.key").read_text().strip()
    vpc = next(v for v in cloud.call("GET", "/v1/vpcs")["items"] if v["is_default"])
    gname = f"console-lab-{secrets.token_hex(3)}"
    # A fresh group: the default one has SSH open to all (user_fixture's admin access).
    gid = cloud.call("POST", "/v1/security-groups", json={
        "group_name": gname, "description": "console lab", "vpc_id": vpc["vpc_id"]})["group_id"]
    iid = None
    try:
        with chromium_page() as page:
            sign_in(page, cloud.lab.url, api_key=key)
            page.get_by_role("navigation").get_by_role("link", name="Launch instance").click()
            page.get_by_label("Name", exact=True).fill("console-lab")
            steps = {2: lambda: page.get_by_label(re.compile("^kumo-tiny")).check(),
                     3: lambda: page.get_by_label(re.compile("^t3.nano")).check(),
                     5: lambda: (page.get_by_label("Auto-assign public IP").select_option("yes"),
                                 page.get_by_label(re.compile(f"^{gname}")).check())}
            for n in range(2, 8):
                wizard_step(page, n)
                if n in steps:
                    steps[n]()
            expect(page.locator("#monthly")).to_contain_text("per month")
            page.get_by_role("button", name="Launch instance").click()
            page.wait_for_url(re.compile(r"#/instances/i-[0-9a-f]{17}$"))
            iid = page.url.rsplit("/", 1)[1]
            state = page.locator('#details dd[data-field="State"]')
            status = page.locator('#details dd[data-field="Instance status"]')
            expect(state).to_have_text("running", timeout=180_000)
            expect(status).to_have_text("ok", timeout=180_000)
            expect(page.locator("#console-output")).to_contain_text(
                f"KUMO-READY instance-id={iid}", timeout=30_000)
            inst = cloud.instance(iid)
            assert inst["instance_status"] == "ok" and inst["security_group_ids"] == [gid]
            public = inst["public_ip"]
            assert public, inst
            booted = time.monotonic()

            # Before the rule: no SSH banner from the internet for a whole window.
            before = _assert_ssh_blocked(cloud.lab, public)
            client = _client_address(cloud.lab, public)

            # The rule editor adds SSH from the client's address (a hash change: no reload).
            page.evaluate(f"location.hash = '#/security-groups/{gid}'")
            expect(page.get_by_role("heading", name=f"{gname} ({gid})")).to_be_visible()
            inbound = page.locator("#ingress-rules")
            inbound.get_by_label("Type").select_option("ssh")
            inbound.get_by_label("Source CIDR").fill(f"{client}/32")
            inbound.get_by_label("Description").fill("lab client")
            probe = Stream(_probe_argv(cloud.lab, public, CONVERGE, 0.1, "ok"))
            try:
                t0 = time.time()
                inbound.get_by_role("button", name="Add inbound rule").click()
                expect(inbound.locator("tbody tr", has_text=f"{client}/32")).to_have_count(1)
                t, line = probe.wait_line(lambda ln: '"banner": "SSH-2.0' in ln, CONVERGE,
                                          since=t0)
            finally:
                probe.stop()
            rules = cloud.call("GET", f"/v1/security-groups/{gid}")["ingress_rules"]
            assert [(r["protocol"], r["from_port"], r["to_port"], r["cidr_ipv4"])
                    for r in rules] == [("tcp", 22, 22, f"{client}/32")], rules
            print(f"\n[console-lab] internet -> {public}:22 before the rule: {before}; "
                  f"banner {t - t0:.2f} s after the editor's Add ({json.loads(line)['banner']})")

            # Back on the instance page: the CPU chart has a point from the agent's samples.
            page.evaluate(f"location.hash = '#/instances/{iid}'")
            expect(state).to_have_text("running")
            cpu = page.locator("#chart-cpu-summary")
            expect(cpu).to_have_text(re.compile(r"^CPU: \d+(\.\d)? %"), timeout=60_000)
            expect(page.locator("#chart-cpu canvas").first).to_be_attached()  # uPlot drew
            end = datetime.now(timezone.utc)
            stats = cloud.call("GET", "/v1/metrics/statistics", params={
                "namespace": "Kumo/EC2", "metric_name": "CPUUtilization",
                "dimension": f"InstanceId={iid}", "period": 60, "statistics": "Average",
                "start_time": (end - timedelta(hours=1)).isoformat(),
                "end_time": end.isoformat()})
            assert stats["datapoints"], stats
            print(f"[console-lab] chart: {cpu.text_content()} "
                  f"{time.monotonic() - booted:.0f} s after status ok")

            page.get_by_role("button", name=re.compile("Terminate")).click()
            page.get_by_role("button", name="Confirm: terminate").click()
            expect(state).to_have_text(re.compile("shutting-down|terminated"), timeout=30_000)
    finally:
        if iid is not None:
            cloud.api.post(f"/v1/instances/{iid}/terminate")  # (no-op once terminating)
            cloud.wait(iid, "terminated", timeout=120)  # then its group can go
        cloud.api.delete(f"/v1/security-groups/{gid}")
    print(f"[console-lab] test body took {time.monotonic() - started:.0f} s")
