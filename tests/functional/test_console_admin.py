"""The console's administrator pages in headless Chromium (controller/console/static/js/admin.js):
hosts (disable and enable one, a join token shown once), accounts (create one and its API key
shown once, add and remove a console user), instance types (create, delete = retire, a refused
delete and a refused create shown as the API said them), and what a non-admin user sees on the
same routes (the API's refusal, verbatim). Each change is checked against the API."""
from __future__ import annotations

import pytest
from controller.models import InstanceType
from tests.functional.console_browser_support import ServedCloud, sign_in

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]
PASSWORD = "admin-pages-password-1"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = ServedCloud(tmp_path_factory.mktemp("console-admin"))
    with s.lock:
        c = s.cloud
        c.add_host("host-1")
        c.add_host("host-2")
        key = c.admin.post("/v1/accounts", json={"name": "plain"}).json()["api_key"]
        s.account = c.client(key)
        assert s.account.post("/v1/account/users", json={
            "username": "plainuser", "password": PASSWORD}).status_code == 201
    s.converging.set()  # heartbeats keep the hosts up
    yield s
    s.close()


def _said(r) -> str:
    err = r.json()["error"]
    return f"{err['code']}: {err['message']}"


def test_hosts_disable_enable_and_a_join_token(page, served):
    expect = playwright_api.expect
    admin = served.cloud.admin
    sign_in(page, served.url, api_key=served.cloud.admin_key)
    page.get_by_role("navigation").get_by_role("link", name="Hosts").click()
    expect(page.get_by_role("heading", name="Hosts", exact=True)).to_be_visible()
    row = page.locator('#admin-hosts tr[data-host-id="host-1"]')
    expect(row.locator('td[data-label="Agent version"]')).to_have_text("fake")
    expect(row.locator('td[data-label="Health"]')).to_contain_text("ok")
    expect(row.locator('td[data-label="vCPUs used"]')).to_have_text("0 / 8")
    expect(page.locator("#admin-hosts tbody tr")).to_have_count(2)

    page.get_by_role("button", name="Disable host-1").click()
    expect(row.locator('td[data-label="Enabled"]')).to_have_text("no (disabled)")
    assert admin.get("/v1/hosts/host-1").json()["enabled"] is False
    page.get_by_role("button", name="Enable host-1").click()
    expect(row.locator('td[data-label="Enabled"]')).to_have_text("yes")
    assert admin.get("/v1/hosts/host-1").json()["enabled"] is True

    # A join token: shown once, in the status line; a too short life: the API's refusal.
    page.get_by_label("New host id").fill("host-9")
    page.get_by_label("Valid for (seconds)").fill("10")
    page.get_by_role("button", name="Create join token").click()
    refused = admin.post("/v1/hosts/join-tokens", json={"host_id": "host-9", "ttl_s": 10})
    assert refused.status_code in (400, 422)
    expect(page.get_by_role("alert")).to_have_text(_said(refused))
    page.get_by_label("Valid for (seconds)").fill("600")
    page.get_by_role("button", name="Create join token").click()
    made = page.locator("#join-token")
    expect(made).to_contain_text("Join token for host-9")
    token = made.locator("code").text_content()
    assert token and "." in token
    assert page.get_by_role("alert").is_hidden()


def test_accounts_create_and_console_users(page, served):
    expect = playwright_api.expect
    admin = served.cloud.admin
    sign_in(page, served.url, api_key=served.cloud.admin_key)
    page.get_by_role("navigation").get_by_role("link", name="Accounts").click()
    expect(page.locator('#admin-accounts tr', has_text="plain")).to_have_count(1)
    page.get_by_label("Account name").fill("acme")
    page.get_by_role("button", name="Create account").click()
    made = page.locator("#api-key")
    expect(made).to_contain_text("API key of acme")
    key = made.locator("code").text_content()
    assert served.cloud.client(key).get("/v1/account").json()["name"] == "acme"
    [acct] = [a for a in admin.get("/v1/accounts").json()["items"] if a["name"] == "acme"]
    expect(page.locator(f'#admin-accounts tr[data-account-id="{acct["account_id"]}"]')).to_have_count(1)
    # The same name again: the API's refusal, verbatim.
    page.get_by_label("Account name").fill("acme")
    page.get_by_role("button", name="Create account").click()
    again = admin.post("/v1/accounts", json={"name": "acme"})
    assert again.status_code == 409
    expect(page.get_by_role("alert")).to_have_text(_said(again))

    page.get_by_role("button", name="Console users of acme").click()
    expect(page.get_by_role("heading", name="Console users of acme")).to_be_visible()
    expect(page.locator("#account-users")).to_contain_text("No console users.")
    page.get_by_label("Username", exact=True).fill("acmeuser")
    page.get_by_label("Password", exact=True).fill("acme-password-123")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator('#account-users tr[data-username="acmeuser"]')).to_have_count(1)
    users = admin.get(f"/v1/accounts/{acct['account_id']}/users").json()["items"]
    assert [u["username"] for u in users] == ["acmeuser"]
    page.get_by_role("button", name="Remove user acmeuser").click()
    expect(page.locator('#account-users tr[data-username="acmeuser"]')).to_have_count(0)
    assert admin.get(f"/v1/accounts/{acct['account_id']}/users").json()["items"] == []


def test_instance_types_create_delete_and_refusals(page, served):
    expect = playwright_api.expect
    admin = served.cloud.admin
    sign_in(page, served.url, api_key=served.cloud.admin_key)
    page.get_by_role("navigation").get_by_role("link", name="Instance types").click()
    nano = page.locator('#admin-types tr[data-type="t3.nano"]')
    expect(nano.locator('td[data-label="Memory (MiB)"]')).to_have_text("256")
    expect(nano.locator('td[data-label="Hourly price"]')).to_have_text("0.0052 USD")

    page.get_by_label("Type name").fill("m9.test")
    page.get_by_label("vCPUs").fill("2")
    page.get_by_label("Memory (MiB)").fill("1024")
    page.get_by_label("Hourly price (USD)").fill("0.05")
    page.get_by_role("button", name="Create instance type").click()
    row = page.locator('#admin-types tr[data-type="m9.test"]')
    expect(row.locator('td[data-label="vCPUs"]')).to_have_text("2")
    [t] = [x for x in admin.get("/v1/instance-types").json()["items"] if x["name"] == "m9.test"]
    assert (t["vcpus"], t["memory_mib"], t["hourly_price"]) == (2, 1024, 0.05)

    # A size the API refuses (0 vCPUs): its answer, verbatim; nothing made.
    page.get_by_label("Type name").fill("m9.zero")
    page.get_by_label("vCPUs").fill("0")
    page.get_by_role("button", name="Create instance type").click()
    refused = admin.post("/v1/instance-types", json={"name": "m9.zero", "vcpus": 0,
                                                     "memory_mib": 1024, "hourly_price": 0.05})
    assert refused.status_code in (400, 422)
    expect(page.get_by_role("alert")).to_have_text(_said(refused))

    page.get_by_role("button", name="Delete m9.test").click()
    expect(row).to_have_count(0)
    listed = admin.get("/v1/instance-types", params={"include_retired": "true"}).json()["items"]
    assert [x["retired"] for x in listed if x["name"] == "m9.test"] == [True]

    # A refused delete: the type went away under the page (another admin's change), the API
    # says so, the page shows it verbatim and keeps the row.
    page.get_by_label("Type name").fill("m9.gone")
    page.get_by_label("vCPUs").fill("1")
    page.get_by_role("button", name="Create instance type").click()
    gone = page.locator('#admin-types tr[data-type="m9.gone"]')
    expect(gone).to_have_count(1)
    with served.lock, served.cloud.db.session() as s:
        s.delete(s.get(InstanceType, "m9.gone"))
    page.get_by_role("button", name="Delete m9.gone").click()
    refused = admin.delete("/v1/instance-types/m9.gone")
    assert refused.status_code == 404
    expect(page.locator("main > .error[role=alert]")).to_have_text(_said(refused))


def test_a_non_admin_sees_the_api_refusal(page, served):
    expect = playwright_api.expect
    sign_in(page, served.url, username="plainuser", password=PASSWORD)
    expect(page.get_by_role("navigation").get_by_role("link", name="Hosts")).to_be_hidden()
    for route, heading, path in (("hosts", "Hosts", "/v1/hosts"),
                                 ("accounts", "Accounts", "/v1/accounts")):
        page.goto(f"{served.url}/console/#/admin/{route}")
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        refused = served.account.get(path)
        assert refused.status_code == 403
        expect(page.get_by_role("alert")).to_have_text(_said(refused))
        expect(page.locator("main table")).to_have_count(0)
    # Instance types are listed for everyone; changing them is refused.
    page.goto(f"{served.url}/console/#/admin/instance-types")
    page.get_by_role("button", name="Delete t3.nano").click()
    refused = served.account.delete("/v1/instance-types/t3.nano")
    assert refused.status_code == 403
    expect(page.get_by_role("alert")).to_have_text(_said(refused))
    assert any(t["name"] == "t3.nano" for t in served.account.get("/v1/instance-types").json()["items"])
