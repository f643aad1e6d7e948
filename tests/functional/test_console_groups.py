"""The console's security group pages in headless Chromium (controller/console/static/js/
groups.js): create a group, add inbound rules from the SSH preset with a CIDR and from another
group, see a refused rule's API error with nothing changed, remove a rule, delete the group;
each step checked against the API."""
from __future__ import annotations

import pytest

from tests.functional.console_browser_support import ServedCloud, chromium_page, sign_in

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "groups-password-123"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = ServedCloud(tmp_path_factory.mktemp("console-groups"))
    with s.lock:
        c = s.cloud
        key = c.admin.post("/v1/accounts", json={"name": "sg"}).json()["api_key"]
        s.account = c.client(key)
        assert s.account.post("/v1/account/users", json={
            "username": "sguser", "password": PASSWORD}).status_code == 201
    yield s
    s.close()


def _rules(served, gid: str, direction: str = "ingress") -> list[tuple]:
    g = served.account.get(f"/v1/security-groups/{gid}").json()
    return sorted((r["protocol"], r["from_port"], r["to_port"], r["cidr_ipv4"], r["peer_group_id"],
                   r["description"]) for r in g[f"{direction}_rules"])


def test_group_editor_adds_refuses_and_removes_rules(served):
    expect = playwright_api.expect
    with chromium_page() as page:
        sign_in(page, served.url, username="sguser", password=PASSWORD)
        page.get_by_role("link", name="Security groups").first.click()
        expect(page.get_by_role("heading", name="Security groups", exact=True)).to_be_visible()
        page.get_by_label("Group name").fill("web")
        page.get_by_label("Description").fill("web servers")
        page.get_by_role("button", name="Create security group").click()
        expect(page.get_by_role("heading", name="Inbound rules")).to_be_visible()
        [gid] = [g["group_id"] for g in served.account.get("/v1/security-groups").json()["items"]
                 if g["group_name"] == "web"]
        expect(page.get_by_role("heading", name=f"web ({gid})")).to_be_visible()
        inbound = page.locator("#ingress-rules")

        # Only the peer field of the chosen kind is shown.
        expect(inbound.get_by_label("Source CIDR")).to_be_visible()
        expect(inbound.get_by_label("Source group")).to_be_hidden()
        # SSH from one network, by the preset.
        inbound.get_by_label("Type").select_option("ssh")
        inbound.get_by_label("Source CIDR").fill("203.0.113.0/24")
        inbound.get_by_label("Description").fill("admins")
        inbound.get_by_role("button", name="Add inbound rule").click()
        expect(inbound.locator("tbody tr", has_text="203.0.113.0/24")).to_have_count(1)
        assert _rules(served, gid) == [("tcp", 22, 22, "203.0.113.0/24", None, "admins")]

        # A network with host bits: the API's refusal, verbatim, and nothing added.
        inbound.get_by_label("Type").select_option("https")
        inbound.get_by_label("Source CIDR").fill("10.1.2.3/8")
        inbound.get_by_role("button", name="Add inbound rule").click()
        expect(inbound.get_by_role("alert")).to_contain_text("InvalidParameterValue")
        assert len(_rules(served, gid)) == 1

        # All traffic from members of the group itself.
        inbound.get_by_label("Protocol").select_option("all")
        inbound.get_by_label("Source", exact=True).select_option("group")
        expect(inbound.get_by_label("Source CIDR")).to_be_hidden()
        inbound.get_by_label("Source group").select_option(gid)
        inbound.get_by_label("Description").fill("")
        inbound.get_by_role("button", name="Add inbound rule").click()
        expect(inbound.locator("tbody tr")).to_have_count(2)
        assert ("all", None, None, None, gid, "") in _rules(served, gid)

        # Remove the SSH rule.
        ssh_row = inbound.locator("tbody tr", has_text="203.0.113.0/24")
        ssh_row.get_by_role("button", name="Remove").click()
        expect(inbound.locator("tbody tr", has_text="203.0.113.0/24")).to_have_count(0)
        assert _rules(served, gid) == [("all", None, None, None, gid, "")]
        # The outbound editor shows the default allow-all rule.
        expect(page.locator("#egress-rules tbody tr", has_text="0.0.0.0/0")).to_have_count(1)

        page.get_by_role("button", name="Delete security group").click()
        page.get_by_role("button", name="Confirm: delete").click()
        expect(page.get_by_role("heading", name="Security groups", exact=True)).to_be_visible()
        assert served.account.get(f"/v1/security-groups/{gid}").status_code == 404


def test_create_waits_for_the_vpc_list_and_keeps_what_was_typed(served):
    """The create form shows before its VPC list arrives: its button stays disabled until then,
    and a submit meanwhile (Enter, or a script's requestSubmit) neither reloads the console
    (losing what was typed) nor creates a group without a VPC. Seen as a flaky failure under
    load: the click landed before the page's submit handler existed and the browser's own GET
    submit reloaded the page."""
    expect = playwright_api.expect
    held: list = []
    with chromium_page() as page:
        sign_in(page, served.url, username="sguser", password=PASSWORD)
        page.route("**/v1/vpcs*", lambda route: held.append(route))  # answered below
        page.get_by_role("link", name="Security groups").first.click()
        expect(page.get_by_role("heading", name="Security groups", exact=True)).to_be_visible()
        page.get_by_label("Group name").fill("early")
        create = page.get_by_role("button", name="Create security group")
        expect(create).to_be_disabled()
        page.evaluate("document.querySelector('form[aria-labelledby=sg-new]').requestSubmit()")
        page.wait_for_timeout(300)
        assert page.get_by_label("Group name").input_value() == "early"  # no reload
        assert held, "the VPC list was not asked for"
        for route in held:
            route.continue_()
        page.unroute("**/v1/vpcs*")
        expect(create).to_be_enabled()
        assert page.get_by_label("Group name").input_value() == "early"
        create.click()
        expect(page.get_by_role("heading", name="Inbound rules")).to_be_visible()
    groups = served.account.get("/v1/security-groups").json()["items"]
    assert [g["vpc_id"] is not None for g in groups if g["group_name"] == "early"] == [True]
