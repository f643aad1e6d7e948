"""The web console in a real browser: headless Chromium (Debian's package, /usr/bin/chromium)
driven by Playwright's Python API, against a controller with fake agents served on 127.0.0.1
(tests/functional/console_browser_support.py). Select with `-m browser`.

Sign in and out, the launch wizard to the new instance's page, the list following it to running
without a reload, console output and a refused action on the instance page, and user text that
looks like markup shown as text (nothing runs: any dialog fails the test)."""
from __future__ import annotations

import re

import pytest

from tests.functional.console_browser_support import ServedCloud, browser_page, wizard_step

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PASSWORD = "correct horse battery staple"
HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = ServedCloud(tmp_path_factory.mktemp("console-browser"))
    with s.lock:
        c = s.cloud
        c.image(name="kumo-tiny")
        # An image description is free text (no alphabet): the wizard must show it as text.
        path = c.tmp / "kumo-tiny.qcow2"
        r = c.admin.post("/v1/images", json={"name": "hostile-image", "path": str(path),
                                             "public": True, "description": HOSTILE})
        assert r.status_code == 201, r.text
        c.add_host("host-1")
        r = c.admin.post("/v1/accounts", json={"name": "web"})
        s.key = r.json()["api_key"]
        s.account = c.client(s.key)
        r = s.account.post("/v1/account/users", json={"username": "webuser",
                                                       "password": PASSWORD})
        assert r.status_code == 201, r.text
    yield s
    s.close()


@pytest.fixture
def page(browser, served):
    with browser_page(browser, timeout_ms=10_000, accept_downloads=True) as pg:
        yield pg


def sign_in(pg, served, username="webuser", password=PASSWORD, *, ok=True):
    pg.goto(f"{served.url}/console/")
    pg.get_by_label("Username").fill(username)
    pg.get_by_label("Password").fill(password)
    pg.get_by_role("button", name="Sign in").click()
    if ok:
        playwright_api.expect(pg.get_by_role("heading", name="Dashboard")).to_be_visible()


def test_sign_in_wrong_password_then_right_then_sign_out(page, served):
    sign_in(page, served, password="not the password!", ok=False)
    alert = page.get_by_role("alert")
    playwright_api.expect(alert).to_contain_text("SignInFailed")
    sign_in(page, served)
    playwright_api.expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    playwright_api.expect(page.locator("#who")).to_have_text("webuser @ web")
    cookie = next(c for c in page.context.cookies() if c["name"] == "kumo_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # not readable by scripts
    page.get_by_role("button", name="Sign out").click()
    playwright_api.expect(page.get_by_role("heading", name="Sign in to Kumo")).to_be_visible()
    # The old cookie signs nobody in any more.
    r = served.cloud.client(None).get("/v1/instances", cookies={"kumo_session": cookie["value"]})
    assert r.status_code == 401


def test_wizard_launches_and_the_list_follows_it_to_running(page, served):
    served.converging.clear()
    sign_in(page, served)
    page.get_by_role("link", name="Launch instance").first.click()
    page.get_by_label("Name", exact=True).fill("web-1")
    page.get_by_role("button", name="Add tag").click()
    page.get_by_label("Tag 1 key").fill("team")
    page.get_by_label("Tag 1 value").fill("blue")
    nxt = page.get_by_role("button", name="Next")
    nxt.click()
    # Image: the hostile description is shown as text.
    playwright_api.expect(page.get_by_text(HOSTILE, exact=False)).to_be_visible()
    page.get_by_label(re.compile("^kumo-tiny")).check()
    nxt.click()
    page.get_by_label(re.compile("^t3.nano")).check()
    nxt.click()
    page.get_by_label("New key pair name").fill("web-key")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Create and download").click()
    assert dl.value.suggested_filename == "web-key.pem"
    playwright_api.expect(page.get_by_label("Key pair", exact=True)).to_have_value("web-key")
    nxt.click()
    playwright_api.expect(page.get_by_label("Subnet")).to_be_visible()
    page.get_by_label("Auto-assign public IP").select_option("yes")
    nxt.click()
    page.get_by_label("Root volume size (GiB)").fill("2")
    nxt.click()
    playwright_api.expect(page.locator("#hourly")).to_contain_text("per hour")
    playwright_api.expect(page.locator("#monthly")).to_contain_text("per month")
    page.get_by_role("button", name="Launch instance").click()
    page.wait_for_url(re.compile(r"#/instances/i-[0-9a-f]{17}$"))
    iid = page.url.rsplit("/", 1)[1]
    playwright_api.expect(page.get_by_role("heading", level=1)).to_have_text(f"web-1 ({iid})")
    inst = served.cloud.instance(served.account, iid)
    assert inst["tags"] == {"Name": "web-1", "team": "blue"}
    assert inst["key_name"] == "web-key" and inst["root_disk_gib"] == 2
    assert inst["public_ip"]

    page.get_by_role("navigation").get_by_role("link", name="Instances").click()
    row = page.locator(f'tr[data-instance-id="{iid}"]')
    playwright_api.expect(row.locator('td[data-label="State"]')).to_have_text("pending")
    served.converging.set()  # the reconciler and the agent do their part; no reload here
    playwright_api.expect(row.locator('td[data-label="State"]')).to_have_text("running")
    playwright_api.expect(row.locator('td[data-label="Host"]')).to_have_text("host-1")
    page.get_by_label("Filter").fill("no-such-thing")
    playwright_api.expect(row).to_have_count(0)
    page.get_by_label("Filter").fill("web-1")
    playwright_api.expect(row).to_have_count(1)


def test_instance_page_console_output_and_a_refused_action(page, served):
    with served.lock:
        served.converging.clear()
        iid = served.cloud.launch_running(served.account, tags={"Name": "db-1"})
        agent = next(iter(served.cloud.agents.values()))
        agent.consoles[iid] = f"booting\n{HOSTILE}\nKUMO-READY\n"
        served.converging.set()
    sign_in(page, served)
    page.goto(f"{served.url}/console/#/instances/{iid}")
    out = page.locator("#console-output")
    playwright_api.expect(out).to_contain_text(HOSTILE)  # verbatim, as text
    assert page.locator("#console-output img, #console-output script").count() == 0
    playwright_api.expect(page.locator('#details dd[data-field="State"]')).to_have_text("running")
    # Changing the type of a running instance: the API refuses, the page says what it said.
    page.get_by_label("Instance type").select_option("t3.micro")
    page.get_by_role("button", name="Change type").click()
    expected = served.account.patch(f"/v1/instances/{iid}", json={"instance_type": "t3.micro"})
    assert expected.status_code == 409
    err = expected.json()["error"]
    playwright_api.expect(page.get_by_role("alert")).to_have_text(f"{err['code']}: {err['message']}")
    # Stop through the console (the same API call the CLI makes); stopped, the type changes.
    page.get_by_role("button", name="Stop").click()
    playwright_api.expect(page.locator('#details dd[data-field="State"]')).to_have_text("stopped")
    page.get_by_role("button", name="Change type").click()
    playwright_api.expect(page.get_by_role("status")).to_have_text("Change type: requested.")
    playwright_api.expect(page.locator('#details dd[data-field="Type"]')).to_contain_text("t3.micro")
    assert served.cloud.instance(served.account, iid)["instance_type"] == "t3.micro"


def _walk(page, button: str, steps) -> None:
    for n in steps:
        wizard_step(page, n, button)


def test_a_refused_launch_shows_the_api_message_verbatim(page, served):
    sign_in(page, served)
    page.goto(f"{served.url}/console/#/launch")
    page.get_by_label("Name", exact=True).fill("<script>alert(3)</script>")
    _walk(page, "Next", range(2, 8))
    # The summary shows the name as text; the API refuses the launch, the page says why.
    playwright_api.expect(page.locator("dl.details")).to_contain_text("<script>alert(3)</script>")
    page.get_by_role("button", name="Launch instance").click()
    alert = page.get_by_role("alert")
    expected = served.cloud.run(served.account, tags={"Name": "<script>alert(3)</script>"})
    assert expected.status_code == 400
    err = expected.json()["error"]
    playwright_api.expect(alert).to_have_text(f"{err['code']}: {err['message']}")
    # A tag key the API echoes in its message: shown as text too.
    _walk(page, "Back", range(6, 0, -1))
    page.get_by_label("Name", exact=True).fill("fine")
    page.get_by_role("button", name="Add tag").click()
    page.get_by_label("Tag 1 key").fill(HOSTILE)
    _walk(page, "Next", range(2, 8))
    page.get_by_role("button", name="Launch instance").click()
    playwright_api.expect(alert).to_contain_text(HOSTILE)
    assert alert.locator("img, script").count() == 0
    assert not any(i["tags"].get("Name") == "fine" for i in
                   served.account.get("/v1/instances").json()["items"])  # nothing launched


def test_phone_width_lists_instances_as_cards(browser, served):
    expect = playwright_api.expect
    with browser_page(browser, 390, 844, is_mobile=True) as pg:
        sign_in(pg, served)
        # The nav is folded behind Menu; it opens, takes the user there, and folds again.
        nav_link = pg.get_by_role("navigation").get_by_role("link", name="Instances")
        expect(nav_link).to_be_hidden()
        menu = pg.get_by_role("button", name="Menu")
        expect(menu).to_have_attribute("aria-expanded", "false")
        menu.click()
        expect(menu).to_have_attribute("aria-expanded", "true")
        nav_link.click()
        expect(nav_link).to_be_hidden()
        first = pg.locator("table#instances tbody tr").first
        expect(first).to_be_visible()
        # One column: no horizontal scrolling of the page at 390 px.
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390


def test_keyboard_sign_in_and_admin_sees_hosts_capacity(page, served):
    admin_key = served.cloud.admin_key
    page.goto(f"{served.url}/console/")
    playwright_api.expect(page.get_by_label("Username")).to_be_focused()
    # Tab from the username past the password to the API key field, type, Enter submits.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    playwright_api.expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(admin_key)
    page.keyboard.press("Enter")
    playwright_api.expect(page.locator("#who")).to_have_text("API key @ admin")
    row = page.locator("#hosts tbody tr")
    playwright_api.expect(row).to_have_count(1)
    playwright_api.expect(row.locator('td[data-label="Host"]')).to_have_text("host-1")
