"""Regenerate the web console's screenshots in this directory (issue 15): the main pages at a
phone width (390 px) and a desktop width (1280 px), from a real controller (fake agents, so no
guests are needed) served on 127.0.0.1 and Debian's headless Chromium driven by Playwright.

    .venv/bin/python docs/screenshots/make.py            # every page, both widths, here
    .venv/bin/python docs/screenshots/make.py --out DIR --only signin --widths 390   # a subset

The cloud it shows is made the same way each time (an account "demo" with a console user, a
public kumo-tiny image, three instances: two running, one stopped, an hour of CPU and network
samples for web-1, a security group "web" with three inbound rules), so the images change only when the pages do (and the chart axes' times).
File names: <page>-<width>.png.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.functional.console_browser_support import ServedCloud, launch_chromium  # noqa: E402

HERE = Path(__file__).resolve().parent
WIDTHS = (390, 1280)
PASSWORD = "screenshots-password-1"
# Pages drawn from the demo cloud below; each waits for its own data before the picture.
# The list pages: route, and a text the page shows once its data is in.
LIST_PAGES = {"vpcs": ("/vpcs", "172.31.0.0/16"), "subnets": ("/subnets", "172.31.0.0/20"),
              "images": ("/images", "kumo-tiny"), "billing": ("/billing", "Monthly limit (USD)")}
PAGES = ("signin", "dashboard", "instances", "instance", "launch", "group", *LIST_PAGES)


def make_cloud(tmp: Path) -> tuple[ServedCloud, str, str]:
    """The demo cloud; returns it and the ids of the instance and the group whose pages are
    shown."""
    served = ServedCloud(tmp)
    with served.lock:
        c = served.cloud
        c.image(name="kumo-tiny")
        c.add_host("host-1")
        c.add_host("host-2")
        key = c.admin.post("/v1/accounts", json={"name": "demo"}).json()["api_key"]
        demo = c.client(key)
        r = demo.post("/v1/account/users", json={"username": "demo", "password": PASSWORD})
        assert r.status_code == 201, r.text
        ids = [c.launch(demo, tags={"Name": name}) for name in ("web-1", "web-2", "batch-1")]
        c.converge(3)
        r = demo.post(f"/v1/instances/{ids[2]}/stop")
        assert r.status_code == 200, r.text
        c.converge(3)
        for agent in c.agents.values():  # what a booted kumo-tiny prints on its console
            for iid in ids:
                agent.consoles[iid] = (
                    "SYSLINUX 6.04\n[    0.000000] Linux version 6.1.0-28-cloud-amd64\n"
                    f"kumo-tiny: hostname=ip-172-31-0-4 instance-id={iid}\n"
                    f"KUMO-READY instance-id={iid}\n")
        # An hour of the samples an agent would have pushed for web-1: a daily-looking load.
        now = time.time()
        samples = [{"instance_id": ids[0], "timestamp": now - 60 * k, "interval": 60.0,
                    "values": {"CPUUtilization": round(30 + 20 * math.sin(k / 7), 1),
                               "NetworkIn": 40_000 + 25_000 * (k % 12 < 4),
                               "NetworkOut": 90_000 + 60_000 * (k % 12 < 4)}}
                   for k in range(1, 61)]
        r = c.agent_client.post("/v1/agent/metrics", json={
            "host_id": "host-1", "sent_at": now, "samples": samples})
        assert r.status_code == 200, r.text
        vpc = demo.get("/v1/vpcs").json()["items"][0]["vpc_id"]
        gid = demo.post("/v1/security-groups", json={
            "group_name": "web", "description": "web servers", "vpc_id": vpc}).json()["group_id"]
        r = demo.post(f"/v1/security-groups/{gid}/ingress", json={"rules": [
            {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "203.0.113.0/24",
             "description": "admins"},
            {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_ipv4": "0.0.0.0/0",
             "description": "HTTPS"},
            {"protocol": "all", "peer_group_id": gid, "description": "the group itself"}]})
        assert r.status_code == 200, r.text
    served.converging.set()
    return served, ids[0], gid


def shoot(out: Path, pages: tuple[str, ...], widths: tuple[int, ...]) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="kumo-screenshots-") as tmp:
        served, iid, gid = make_cloud(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = launch_chromium(p)
                try:
                    for width in widths:
                        ctx = browser.new_context(viewport={"width": width, "height": 900})
                        page = ctx.new_page()
                        page.set_default_timeout(15_000)
                        page.goto(f"{served.url}/console/")
                        expect(page.get_by_role("heading", name="Sign in to Kumo")).to_be_visible()
                        if "signin" in pages:
                            written.append(_save(page, out, "signin", width))
                        page.get_by_label("Username").fill("demo")
                        page.get_by_label("Password").fill(PASSWORD)
                        page.get_by_role("button", name="Sign in").click()
                        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
                        if "dashboard" in pages:
                            expect(page.locator("#month-total")).to_be_visible()
                            expect(page.get_by_label("Instances by state")
                                   .get_by_text("running").first).to_be_visible()
                            written.append(_save(page, out, "dashboard", width))
                        if "instances" in pages:
                            page.goto(f"{served.url}/console/#/instances")
                            expect(page.locator(f'[data-instance-id="{iid}"]').first) \
                                .to_be_visible()
                            written.append(_save(page, out, "instances", width))
                        if "instance" in pages:
                            page.goto(f"{served.url}/console/#/instances/{iid}")
                            expect(page.get_by_text("172.31.0.4").first).to_be_visible()
                            expect(page.get_by_text("KUMO-READY").first).to_be_visible()
                            expect(page.locator("#chart-cpu canvas")).to_have_count(1)
                            expect(page.locator("#chart-network canvas")).to_have_count(1)
                            written.append(_save(page, out, "instance", width))
                        if "group" in pages:
                            page.goto(f"{served.url}/console/#/security-groups/{gid}")
                            expect(page.locator("#ingress-rules tbody tr")).to_have_count(3)
                            written.append(_save(page, out, "group", width))
                        for name, (route, ready) in LIST_PAGES.items():
                            if name in pages:
                                page.goto(f"{served.url}/console/#{route}")
                                expect(page.get_by_text(ready).first).to_be_visible()
                                written.append(_save(page, out, name, width))
                        if "launch" in pages:
                            page.goto(f"{served.url}/console/#/launch")
                            expect(page.get_by_label("Name", exact=True)).to_be_visible()
                            written.append(_save(page, out, "launch", width))
                        ctx.close()
                finally:
                    browser.close()
        finally:
            served.close()
    return written


def _save(page, out: Path, name: str, width: int) -> Path:
    page.wait_for_load_state("networkidle")
    path = out / f"{name}-{width}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--only", nargs="+", choices=PAGES, default=list(PAGES))
    ap.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    args = ap.parse_args(argv)
    for path in shoot(args.out, tuple(args.only), tuple(args.widths)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
