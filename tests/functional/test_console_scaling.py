"""The console's Auto Scaling pages in headless Chromium (controller/console/static/js/
scaling.js): create a group from the form, follow it to InService on its page, the activity
history as the API has it, desired capacity refused above max (the API's error verbatim) and then
set (a new launch activity), the capacity chart drawn from the group controller's recorded
metrics (its points equal GET /v1/metrics/statistics), scheduled actions added, refused and
deleted, the list's live row, and a member's link to its instance page; then (a second group)
a target tracking policy refused (target 150) and saved from the form (equal to the API's) and
deleted, and the group's deletion refused while it has an instance and forced on request."""
from __future__ import annotations

from datetime import datetime

import pytest

from controller.services import group_metrics

from tests.functional.console_browser_support import ServedCloud, chromium_page, sign_in
from tests.functional.vpc_support import make_subnet, make_vpc, ok

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "scaling-password-123"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(group_metrics, "PERIOD_S", 5)  # samples soon, not once a minute
    s = ServedCloud(tmp_path_factory.mktemp("console-scaling"))
    with s.lock:
        c = s.cloud
        c.image(name="kumo-tiny")
        c.add_host("host-1")
        key = c.admin.post("/v1/accounts", json={"name": "scaler"}).json()["api_key"]
        s.account = c.client(key)
        assert s.account.post("/v1/account/users", json={
            "username": "scaler", "password": PASSWORD}).status_code == 201
        vpc = make_vpc(s.account)
        s.subnet = make_subnet(s.account, vpc["vpc_id"], "10.0.1.0/24")["subnet_id"]
        ok(s.account.post("/v1/launch-templates", json={
            "launch_template_name": "web",
            "launch_template_data": {"image": "kumo-tiny", "instance_type": "t3.nano"}}), 201)
    s.converging.set()
    yield s
    s.close()
    mp.undo()


def _group(served, name="web-asg") -> dict:
    return ok(served.account.get(f"/v1/autoscaling-groups/{name}"))


def _activities(served, name="web-asg") -> list[dict]:
    return ok(served.account.get(f"/v1/autoscaling-groups/{name}/activities",
                                 params={"max_results": 1000}))["items"]


def _statistics(served, metric: str, start: str, end: str) -> list[list]:
    doc = ok(served.account.get("/v1/metrics/statistics", params={
        "namespace": "AWS/AutoScaling", "metric_name": metric,
        "dimension": "AutoScalingGroupName=web-asg", "start_time": start, "end_time": end,
        "period": 60, "statistics": "Maximum"}))
    return doc["datapoints"]


def _by_time(points: list[dict]) -> dict[float, float]:
    """Datapoints as the chart's x (epoch seconds) -> Maximum."""
    return {datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp():
            p["Maximum"] for p in points}


def test_group_pages_capacity_chart_and_activity(served):
    expect = playwright_api.expect
    with chromium_page() as page:
        sign_in(page, served.url, username="scaler", password=PASSWORD)
        page.get_by_role("link", name="Auto Scaling").first.click()
        expect(page.get_by_role("heading", name="Auto Scaling groups")).to_be_visible()

        # Create from the form: template, its version, the subnet, min/max/desired.
        page.get_by_label("Group name").fill("web-asg")
        page.get_by_label("Launch template").select_option(label=page.get_by_label(
            "Launch template").locator("option").first.inner_text())
        page.get_by_label("Template version").fill("$Latest")
        page.get_by_label("Subnets").select_option(served.subnet)
        page.get_by_label("Minimum size").fill("1")
        page.get_by_label("Maximum size").fill("3")
        page.get_by_label("Desired capacity").fill("2")
        page.get_by_role("button", name="Create group").click()
        expect(page.get_by_role("heading", name="Auto Scaling group web-asg")).to_be_visible()
        g = _group(served)
        assert (g["min_size"], g["desired_capacity"], g["max_size"], g["subnet_ids"]) == (
            1, 2, 3, [served.subnet])
        assert g["launch_template"]["version"] == "$Latest"

        # Its instances go InService on the page, live; the history is the API's.
        members = page.locator("#members tbody tr")
        expect(members.filter(has_text="InService")).to_have_count(2, timeout=30_000)
        acts = _activities(served)
        assert len(acts) == 2
        rows = page.locator("#activities tbody tr")
        expect(rows).to_have_count(2)
        for a in acts:
            row = page.locator(f'#activities tr[data-key="{a["activity_id"]}"]')
            expect(row).to_contain_text(a["description"])
            expect(row).to_contain_text(a["cause"])

        # Desired above max: the API's refusal verbatim, nothing changed.
        refused = served.account.post("/v1/autoscaling-groups/web-asg/desired-capacity",
                                      json={"desired_capacity": 5})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        desired = page.locator("#desired-form").get_by_label("Desired capacity")
        desired.fill("5")
        page.get_by_role("button", name="Set desired capacity").click()
        alert = page.get_by_role("alert").filter(has_text=error["code"])
        expect(alert).to_have_text(f'{error["code"]}: {error["message"]}')
        assert _group(served)["desired_capacity"] == 2

        # Desired 3: a third launch activity, and a third member InService.
        desired.fill("3")
        page.get_by_role("button", name="Set desired capacity").click()
        expect(page.get_by_role("status")).to_have_text("Desired capacity set to 3.")
        expect(alert).to_be_hidden()
        expect(members.filter(has_text="InService")).to_have_count(3, timeout=30_000)
        expect(rows).to_have_count(3)
        assert len(_activities(served)) == 3 and _group(served)["desired_capacity"] == 3

        # The capacity chart: the controller's recorded samples, equal to the API's answer for
        # the window the page asked for.
        chart = page.locator("#chart-capacity")
        expect(chart.locator("canvas")).to_have_count(1, timeout=30_000)
        expect(chart.locator(".chart-summary")).to_have_text("Desired: 3 · In service: 3",
                                                             timeout=30_000)
        drawn = page.evaluate("""() => { const b = document.getElementById('chart-capacity');
            return { start: b.dataset.start, end: b.dataset.end, data: b.plot.data }; }""")
        xs, desired_ys, in_service_ys = drawn["data"]
        api_desired = _statistics(served, "GroupDesiredCapacity", drawn["start"], drawn["end"])
        api_in_service = _statistics(served, "GroupInServiceInstances", drawn["start"],
                                     drawn["end"])
        want_desired, want_in_service = _by_time(api_desired), _by_time(api_in_service)
        # The same points (a sample the pass committed just after the page's read may add one
        # later minute to the API's answer, never change the page's).
        assert xs and set(xs) <= set(want_desired) and len(want_desired) - len(xs) <= 1
        assert max(want_desired) == xs[-1] or len(want_desired) == len(xs) + 1
        assert desired_ys == [want_desired[x] for x in xs]
        assert in_service_ys == [want_in_service.get(x) for x in xs]
        assert desired_ys[-1] == 3 and in_service_ys[-1] == 3
        # The data table says the same points.
        expect(chart.locator("#capacity-points tbody tr")).to_have_count(len(xs))

        # Scheduled actions: a bad recurrence refused verbatim, a good one added, then deleted.
        form = page.locator("#action-form")
        form.get_by_label("Action name").fill("nightly")
        form.get_by_label("Recurrence (cron)").fill("not a cron")
        form.get_by_label("Action desired").fill("1")
        form.get_by_role("button", name="Save scheduled action").click()
        bad = served.account.put("/v1/autoscaling-groups/web-asg/scheduled-actions/nightly",
                                 json={"recurrence": "not a cron", "desired_capacity": 1})
        assert bad.status_code == 400, bad.text
        e = bad.json()["error"]
        expect(form.get_by_role("alert")).to_have_text(f'{e["code"]}: {e["message"]}')
        form.get_by_label("Recurrence (cron)").fill("0 3 * * *")
        form.get_by_role("button", name="Save scheduled action").click()
        expect(page.locator('#scheduled-actions tr[data-key="nightly"]')).to_contain_text("0 3 * * *")
        [a] = ok(served.account.get("/v1/autoscaling-groups/web-asg/scheduled-actions"))
        assert (a["scheduled_action_name"], a["recurrence"], a["desired_capacity"]) == (
            "nightly", "0 3 * * *", 1)
        page.get_by_role("button", name="Delete scheduled action nightly").click()
        expect(page.get_by_text("No scheduled actions.")).to_be_visible()
        assert ok(served.account.get("/v1/autoscaling-groups/web-asg/scheduled-actions")) == []

        # The list: the group's live row.
        page.get_by_role("link", name="← Auto Scaling groups").click()
        row = page.locator('#scaling-groups tr[data-group="web-asg"]')
        expect(row.locator('td[data-label="Desired"]')).to_have_text("3")
        expect(row.locator('td[data-label="In service"]')).to_have_text("3")
        expect(row.locator('td[data-label="Health"]')).to_have_text("3 healthy")
        expect(row.locator('td[data-label="Launch template"]')).to_contain_text("web ($Latest)")

        # A member's link leads to its instance page.
        row.get_by_role("link", name="web-asg").click()
        first = _group(served)["instances"][0]["instance_id"]
        page.get_by_role("link", name=first).click()
        expect(page.get_by_role("heading", name=first)).to_be_visible()


def test_policies_and_group_delete(served):
    """Target tracking policies put and deleted from the group's page (equal to the API's; a
    refused target shown verbatim), then the group deleted: refused while it has instances,
    forced on request, back to the list."""
    expect = playwright_api.expect
    api = served.account
    base = "/v1/autoscaling-groups/ops-asg"
    [tmpl] = ok(api.get("/v1/launch-templates"))["items"]
    ok(api.post("/v1/autoscaling-groups", json={
        "auto_scaling_group_name": "ops-asg",
        "launch_template": {"launch_template_id": tmpl["launch_template_id"], "version": "$Default"},
        "min_size": 1, "max_size": 2, "subnet_ids": [served.subnet]}), 201)
    with chromium_page() as page:
        sign_in(page, served.url, username="scaler", password=PASSWORD)
        page.goto(f"{served.url}/console/#/autoscaling/ops-asg")
        expect(page.get_by_role("heading", name="Auto Scaling group ops-asg")).to_be_visible()
        form = page.locator("#policy-form")

        # Refused: a target above 100; the API's error verbatim, no policy made.
        form.get_by_label("Policy name").fill("cpu-50")
        form.get_by_label("Target value (%)").fill("150")
        form.get_by_role("button", name="Save policy").click()
        bad = api.put(f"{base}/policies/cpu-50", json={
            "policy_type": "TargetTrackingScaling", "target_tracking_configuration": {
                "predefined_metric_specification": {"predefined_metric_type": "ASGAverageCPUUtilization"},
                "target_value": 150, "disable_scale_in": False},
            "estimated_instance_warmup": None, "scale_in_period": None})
        assert bad.status_code == 400, bad.text
        e = bad.json()["error"]
        expect(form.get_by_role("alert")).to_have_text(f'{e["code"]}: {e["message"]}')
        assert ok(api.get(f"{base}/policies")) == []

        # Saved: the page's policy is the API's.
        form.get_by_label("Target value (%)").fill("50")
        form.get_by_label("Disable scale-in").check()
        form.get_by_label("Instance warm-up (s)").fill("30")
        form.get_by_label("Scale-in period (s)").fill("120")
        form.get_by_role("button", name="Save policy").click()
        expect(page.get_by_role("status")).to_have_text("Scaling policy cpu-50 saved.")
        expect(form.get_by_role("alert")).to_be_hidden()
        [p] = ok(api.get(f"{base}/policies"))
        assert (p["policy_name"], p["policy_type"], p["estimated_instance_warmup"],
                p["scale_in_period"]) == ("cpu-50", "TargetTrackingScaling", 30, 120)
        assert p["target_tracking_configuration"] == {
            "predefined_metric_specification": {"predefined_metric_type": "ASGAverageCPUUtilization"},
            "target_value": 50.0, "disable_scale_in": True}
        row = page.locator('#policies tr[data-key="cpu-50"]')
        expect(row.locator('td[data-label="Configuration"]')).to_have_text(
            "ASGAverageCPUUtilization at 50 (no scale-in)")
        expect(row.locator('td[data-label="Warm-up"]')).to_have_text("30 s")
        expect(row.locator('td[data-label="Scale-in period"]')).to_have_text("120 s")

        # Deleted.
        page.get_by_role("button", name="Delete policy cpu-50").click()
        expect(page.get_by_text("No scaling policies.")).to_be_visible()
        assert ok(api.get(f"{base}/policies")) == []

        # Delete the group: the first click only arms; without force the API refuses (it has
        # instances), shown verbatim, the group stays.
        expect(page.locator("#members tbody tr")).to_have_count(1, timeout=30_000)
        refused = api.delete(base)
        assert refused.status_code == 409, refused.text
        e = refused.json()["error"]
        box = page.locator("#delete-group")
        box.get_by_role("button", name="Delete group").click()
        expect(box.get_by_role("button", name="Confirm: delete group")).to_be_visible()
        box.get_by_role("button", name="Confirm: delete group").click()
        expect(box.get_by_role("alert")).to_have_text(f'{e["code"]}: {e["message"]}')
        g = _group(served, "ops-asg")
        assert len(g["instances"]) == 1 and g["desired_capacity"] == 1
        assert g["status"] != "Delete in progress"

        # Forced: back on the list, and the group goes (its instances terminated).
        box.get_by_label("Also terminate its instances (force)").check()
        box.get_by_role("button", name="Delete group").click()
        box.get_by_role("button", name="Confirm: delete group").click()
        expect(page.get_by_role("heading", name="Auto Scaling groups")).to_be_visible()
        gone = api.get(base)
        assert gone.status_code == 404 or gone.json()["status"] == "Delete in progress", gone.text
        # The live list (loaded once its count shows) drops the row when the group is gone.
        expect(page.locator("p.count")).to_contain_text("groups")
        expect(page.locator('#scaling-groups tr[data-group="ops-asg"]')).to_have_count(0, timeout=30_000)
        assert api.get(base).status_code == 404
