"""The console's billing page in headless Chromium (controller/console/static/js/billing.js):
this month's open bill (total and lines, by usage type and by resource) equal to the API's, the
bills list and a chosen month's bill, a usage query and its CSV download (the same bytes as GET
/v1/usage?format=csv), a refused period and a refused budget shown as the API said them, the
budget set, crossed and removed; then an admin choosing another account's bills."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from tests.functional.console_browser_support import ServedCloud, chromium_page, sign_in
from tests.functional.vpc_support import ok

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "billing-password-123"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = ServedCloud(tmp_path_factory.mktemp("console-billing"))
    with s.lock:
        c = s.cloud
        c.image(name="kumo-tiny")
        c.add_host("host-1")
        r = c.admin.post("/v1/accounts", json={"name": "payer"}).json()
        s.account_id, s.account = r["account_id"], c.client(r["api_key"])
        assert s.account.post("/v1/account/users", json={
            "username": "payer", "password": PASSWORD}).status_code == 201
        # A rate that makes a minute's run cost whole cents (the bill is not 0.00).
        ok(c.admin.post("/v1/prices", json={"usage_type": "instance-hours",
                                            "dimension": "t3.nano", "rate": "360"}), 201)
        # Usage that no longer grows: an instance run to running, then terminated.
        s.iid = c.launch_running(s.account, image="kumo-tiny", instance_type="t3.nano")
        ok(s.account.post(f"/v1/instances/{s.iid}/terminate"))
        c.converge()
        assert c.instance(s.account, s.iid)["state"] == "terminated"
    s.converging.set()
    yield s
    s.close()


def _verbatim(r, status: int = 400) -> str:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    return f'{e["code"]}: {e["message"]}'


def test_billing_page(served):
    expect = playwright_api.expect
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    bill = ok(served.account.get(f"/v1/bills/{month}"))
    assert bill["status"] == "open" and float(bill["total"]) >= 6 and bill["lines"]
    with chromium_page() as page:
        sign_in(page, served.url, username="payer", password=PASSWORD)
        page.get_by_role("link", name="Usage & bills").click()
        expect(page.get_by_role("heading", name="Billing")).to_be_visible()
        expect(page.get_by_label("Account")).to_be_hidden()  # not an admin: own bills only

        # This month's open bill: the API's total and lines.
        opened = page.locator("#open-bill")
        expect(opened.locator(".bill-total")).to_have_text(f'{bill["total"]} USD')
        expect(opened).to_contain_text(f"{month}, open, as of")
        lines = opened.locator("tbody tr")
        expect(lines).to_have_count(len(bill["lines"]))
        for ln in bill["lines"]:
            expect(opened.locator("tbody")).to_contain_text(ln["amount"])
        # By resource: the instance's own lines (its hours, its root disk), as GET /v1/usage.
        page.get_by_label("Group lines by").select_option("resource")
        nxt = (date.fromisoformat(f"{month}-01") + timedelta(days=32)).strftime("%Y-%m-01")
        mine = [i for i in ok(served.account.get("/v1/usage", params={
            "start": f"{month}-01", "end": nxt, "group_by": "resource"}))["items"]
            if i["resource_id"] == served.iid]
        assert mine
        expect(opened.locator('td[data-label="Resource"]', has_text=served.iid)).to_have_count(
            len(mine))
        expect(opened.locator(".bill-total")).to_have_text(f'{bill["total"]} USD')

        # The bills list (recent months) and a chosen month's bill.
        first_row = page.locator("#bills-table tbody tr").first
        expect(first_row.locator('td[data-label="Month"]')).to_have_text(month)
        expect(first_row.locator('td[data-label="Status"]')).to_have_text("open")
        expect(first_row.locator('td[data-label="Total"]')).to_have_text(f'{bill["total"]} USD')
        page.get_by_label("Bill month").fill(month)
        page.get_by_role("button", name="Show bill").click()
        expect(page.locator("#month-bill .bill-total")).to_have_text(f'{bill["total"]} USD')
        future = (date.today().replace(day=1) + timedelta(days=40)).strftime("%Y-%m")
        page.get_by_label("Bill month").fill(future)
        page.get_by_role("button", name="Show bill").click()
        expect(page.get_by_role("alert").filter(has_text="MonthInFuture")).to_have_text(
            _verbatim(served.account.get(f"/v1/bills/{future}")))

        # Usage of a period, and its CSV: the same bytes the API answers.
        first = f"{month}-01"
        today = date.today()
        page.get_by_label("From").fill(first)
        page.get_by_label("To (inclusive)").fill(today.isoformat())
        page.get_by_label("Group by").select_option("resource")
        page.get_by_role("button", name="Show usage").click()
        params = {"start": first, "end": (today + timedelta(days=1)).isoformat(),
                  "group_by": "resource"}
        usage = ok(served.account.get("/v1/usage", params=params))
        expect(page.locator("#usage .usage-total")).to_have_text(f'{usage["total"]} USD')
        expect(page.locator("#usage-table tbody tr")).to_have_count(len(usage["items"]))
        with page.expect_download() as info:
            page.get_by_role("button", name="Download CSV").click()
        download = info.value
        got = open(download.path(), encoding="utf-8").read()
        want = served.account.get("/v1/usage", params={**params, "format": "csv"},
                                  headers={"Accept": "text/csv"})
        assert want.headers["content-type"].startswith("text/csv")
        assert got == want.text and served.iid in got
        assert download.suggested_filename.endswith(".csv")

        # A period that ends before it starts: the API's refusal, verbatim.
        page.get_by_label("To (inclusive)").fill((date.fromisoformat(first) - timedelta(days=3)).isoformat())
        page.get_by_role("button", name="Show usage").click()
        bad_end = (date.fromisoformat(first) - timedelta(days=2)).isoformat()
        expect(page.locator("#usage-form").get_by_role("alert")).to_have_text(_verbatim(
            served.account.get("/v1/usage", params={"start": first, "end": bad_end,
                                                    "group_by": "resource"})))

        # Budget: refused, set (crossed by this month's bill), removed.
        expect(page.locator("#budget-now")).to_have_text("No budget set.")
        page.get_by_label("Monthly limit (USD)").fill("lots")
        page.get_by_role("button", name="Set budget").click()
        expect(page.locator("#budget-form").locator("..").get_by_role("alert")).to_have_text(
            _verbatim(served.account.put("/v1/budget", json={"monthly_limit": "lots"})))
        page.get_by_label("Monthly limit (USD)").fill("0.000001")
        page.get_by_role("button", name="Set budget").click()
        expect(page.locator("#budget-now")).to_contain_text("Monthly limit: 0.000001 USD")
        assert ok(served.account.get("/v1/budget"))["monthly_limit"] == "0.000001"
        expect(opened).to_contain_text("Budget 0.000001 USD: exceeded at")
        page.get_by_role("button", name="Remove budget").click()
        expect(page.locator("#budget-now")).to_have_text("No budget set.")
        assert served.account.get("/v1/budget").status_code == 404

        # An admin: every account's bills of the month, and another account's bill chosen.
        page.context.clear_cookies()
        sign_in(page, served.url, api_key=served.cloud.admin_key)
        page.get_by_role("link", name="Usage & bills").click()
        all_bills = ok(served.cloud.admin.get("/v1/bills", params={"month": month}))["items"]
        rows = page.locator("#bills-table tbody tr")
        expect(rows).to_have_count(len(all_bills))
        expect(rows.filter(has_text=served.account_id)).to_contain_text(f'{bill["total"]} USD')
        page.get_by_label("Account").select_option(served.account_id)
        expect(page.locator("#open-bill .bill-total")).to_have_text(f'{bill["total"]} USD')
