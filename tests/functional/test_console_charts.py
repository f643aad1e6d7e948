"""The instance page's CPU and network charts (controller/console/static/js/charts.js, uPlot
vendored and pinned by controller/console/vendor.json) in headless Chromium: samples an agent
pushed show as a drawn chart and as the latest value in text; the vendored files are the pinned
ones."""
from __future__ import annotations

import time

import pytest

from controller.console import vendor
from tests.functional.console_browser_support import ServedCloud, chromium_page, sign_in

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "charts-password-123"


def test_vendored_files_are_the_pinned_ones():
    assert vendor.check() == []


def test_cpu_and_network_charts_show_the_agents_samples(tmp_path):
    served = ServedCloud(tmp_path)
    try:
        with served.lock:
            c = served.cloud
            c.image()
            c.add_host("host-1")
            key = c.admin.post("/v1/accounts", json={"name": "charts"}).json()["api_key"]
            acct = c.client(key)
            assert acct.post("/v1/account/users", json={
                "username": "charts", "password": PASSWORD}).status_code == 201
            iid = c.launch_running(acct)
            quiet = c.launch_running(acct)  # no samples: its charts say so
            now = time.time()
            samples = [{"instance_id": iid, "timestamp": now - 5 * k, "interval": 5.0,
                        "values": {"CPUUtilization": 40.0, "NetworkIn": 1024.0,
                                   "NetworkOut": 512.0}} for k in range(1, 25)]
            r = c.agent_client.post("/v1/agent/metrics", json={
                "host_id": "host-1", "sent_at": now, "samples": samples})
            assert r.status_code == 200 and r.json()["accepted"] == 24, r.text
        served.converging.set()
        with chromium_page(width=390) as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # A CSP refusal (e.g. of the chart library's styles) is logged, not thrown.
            page.on("console", lambda m: "Content Security Policy" in m.text
                    and errors.append(m.text))
            sign_in(page, served.url, username="charts", password=PASSWORD)
            page.goto(f"{served.url}/console/#/instances/{iid}")
            expect = playwright_api.expect
            expect(page.locator("#chart-cpu-summary")).to_have_text(
                "CPU: 40.0 % (last minute's average)")
            # NetworkIn 1 KiB and NetworkOut 512 B a sample, summed per minute.
            expect(page.locator("#chart-network-summary")).to_contain_text("In: ")
            expect(page.locator("#chart-network-summary")).to_contain_text("KiB")
            expect(page.locator("#chart-cpu canvas")).to_have_count(1)
            box = page.locator("#chart-cpu canvas").bounding_box()
            assert box and 200 <= box["width"] <= 390  # fits the phone width
            page.goto(f"{served.url}/console/#/instances/{quiet}")
            expect(page.get_by_role("heading", name=quiet)).to_be_visible()
            expect(page.locator("#chart-cpu-summary")).to_have_text("No data yet")
            assert not errors, errors  # no script error, no CSP violation
    finally:
        served.close()
