"""The web console against the lab's real controller: headless Chromium (Playwright, Debian's
/usr/bin/chromium) signs in with the demo account's API key, the launch wizard launches a real
kumo-tiny guest, and the instance page shows it running with status ok and its console output
(the guest's ready marker) without a reload; then the page terminates it. The browser talks to
the controller on 127.0.0.1 only."""
from __future__ import annotations

import re

import pytest

from tests.functional.console_browser_support import chromium_page, sign_in
from tests.lab.cloud import user_fixture

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.browser]

cloud = user_fixture()


def test_wizard_launches_kumo_tiny_and_the_page_shows_it_running_ok(cloud):
    key = (cloud.lab.state_dir / "demo.key").read_text().strip()
    with chromium_page() as page:
        sign_in(page, cloud.lab.url, api_key=key)
        page.get_by_role("navigation").get_by_role("link", name="Launch instance").click()
        page.get_by_label("Name", exact=True).fill("console-lab")
        steps = {2: lambda: page.get_by_label(re.compile("^kumo-tiny")).check(),
                 3: lambda: page.get_by_label(re.compile("^t3.nano")).check()}
        for n in range(2, 8):
            page.get_by_role("button", name="Next").click()
            expect(page.locator("#step-title")).to_contain_text(f"Step {n} of 7")
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
        assert cloud.instance(iid)["instance_status"] == "ok"
        terminate = page.get_by_role("button", name=re.compile("Terminate"))
        terminate.click()
        page.get_by_role("button", name="Confirm: terminate").click()
        expect(state).to_have_text(re.compile("shutting-down|terminated"), timeout=30_000)
