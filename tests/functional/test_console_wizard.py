"""The launch wizard's image filter, inline security group and extra volumes in headless Chromium
(controller/console/static/js/launch.js), against a controller with a storage node
(tests/functional/volume_cloud.py's VolumeCloud: fake agents that carry volumes, the real storage
node app over a fake backend), served on 127.0.0.1 by tests/functional/console_browser_support.py.

- the image step's filter: All / Public / My images (public flag and owner_account_id);
- a new security group made at launch with the SSH preset from a CIDR, and an extra volume:
  the new instance has the group (with exactly that rule) and the volume, checked via the API;
  the summary prices the volume (the estimate API's line);
- a refused inline group (a CIDR with host bits): the API's message verbatim, no instance and
  no group left behind."""
from __future__ import annotations

import re

import pytest

from tests.functional.console_browser_support import ServedCloud, sign_in, wizard_step
from tests.functional.fake_agent import make_qcow2
from tests.functional.volume_cloud import VolumeCloud

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]
PASSWORD = "wizard-password-123"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = ServedCloud(tmp_path_factory.mktemp("console-wizard"), cloud_class=VolumeCloud)
    with s.lock:
        c = s.cloud
        c.image(name="kumo-tiny")  # public, the admin's
        c.add_volume_host("host-1")
        key = c.admin.post("/v1/accounts", json={"name": "wiz"}).json()["api_key"]
        s.account = c.client(key)
        assert s.account.post("/v1/account/users", json={
            "username": "wizuser", "password": PASSWORD}).status_code == 201
        # The account's own (private) image, uploaded as a user would.
        path = make_qcow2(c.tmp / "mine.qcow2")
        r = s.account.post("/v1/images/import", params={"name": "my-image"},
                           content=path.read_bytes())
        assert r.status_code == 201, r.text
        s.my_image = r.json()["image_id"]
    s.converging.set()
    yield s
    s.close()


def _to_network_step(page, served, name: str) -> None:
    sign_in(page, served.url, username="wizuser", password=PASSWORD)
    page.goto(f"{served.url}/console/#/launch")
    page.get_by_label("Name", exact=True).fill(name)
    wizard_step(page, 2)
    page.get_by_label(re.compile("^kumo-tiny")).check()
    wizard_step(page, 3)
    wizard_step(page, 4)
    wizard_step(page, 5)


def test_image_filter_inline_group_and_an_extra_volume(page, served):
    expect = playwright_api.expect
    sign_in(page, served.url, username="wizuser", password=PASSWORD)
    page.goto(f"{served.url}/console/#/launch")
    page.get_by_label("Name", exact=True).fill("wiz-1")
    wizard_step(page, 2)
    images = page.get_by_role("group", name="Machine image")
    expect(images.get_by_role("radio")).to_have_count(2)
    page.get_by_label("My images").check()
    expect(images.get_by_role("radio")).to_have_count(1)
    expect(images).to_contain_text("my-image")
    expect(images).to_contain_text(f"{served.my_image} · own")
    page.get_by_label("Public", exact=True).check()
    expect(images.get_by_role("radio")).to_have_count(1)
    expect(images).to_contain_text("kumo-tiny")
    page.get_by_label("All", exact=True).check()
    expect(images.get_by_role("radio")).to_have_count(2)
    page.get_by_label(re.compile("^kumo-tiny")).check()
    wizard_step(page, 3)
    page.get_by_label(re.compile("^t3.nano")).check()
    wizard_step(page, 4)
    wizard_step(page, 5)

    # A new group with the SSH preset from one network; HTTP and HTTPS are offered too.
    page.get_by_label("Create a new security group").check()
    page.get_by_label("New group name").fill("wiz-ssh")
    page.get_by_label("New group description").fill("ssh for the wizard")
    expect(page.get_by_label("HTTP (80)")).not_to_be_checked()
    expect(page.get_by_label("HTTPS (443)")).not_to_be_checked()
    expect(page.get_by_label("SSH (22)")).to_be_checked()
    page.get_by_label("Source CIDR").fill("203.0.113.0/24")
    wizard_step(page, 6)

    page.get_by_role("button", name="Add volume").click()
    expect(page.get_by_label("Volume 1 device")).to_have_value("/dev/sdf")
    page.get_by_label("Volume 1 size (GiB)").fill("3")
    wizard_step(page, 7)
    expect(page.locator("dl.details")).to_contain_text("new group wiz-ssh (ssh from 203.0.113.0/24)")
    expect(page.locator("dl.details")).to_contain_text("3 GiB, deleted on termination")
    line = page.locator("#estimate-lines tr", has_text="volume /dev/sdf 3 GiB")
    expect(line).to_have_count(1)
    body = {"image": "kumo-tiny", "instance_type": "t3.nano", "tags": {"Name": "wiz-1"},
            "block_device_mappings": [{"device_name": "/dev/sdf",
                                       "ebs": {"volume_size_gib": 3}}]}
    est = served.account.post("/v1/instances/estimate", json=body)
    assert est.status_code == 200, est.text
    [want] = [ln for ln in est.json()["lines"] if ln["what"] == "volume /dev/sdf 3 GiB"]
    expect(line.locator('td[data-label="Per month"]')).to_have_text(f"{want['monthly']} USD")

    page.get_by_role("button", name="Launch instance").click()
    page.wait_for_url(re.compile(r"#/instances/i-[0-9a-f]{17}$"))
    iid = page.url.rsplit("/", 1)[1]
    inst = served.cloud.instance(served.account, iid)
    [group] = [g for g in served.account.get("/v1/security-groups").json()["items"]
               if g["group_name"] == "wiz-ssh"]
    assert inst["security_group_ids"] == [group["group_id"]]
    assert group["description"] == "ssh for the wizard"
    assert [(r["protocol"], r["from_port"], r["to_port"], r["cidr_ipv4"])
            for r in group["ingress_rules"]] == [("tcp", 22, 22, "203.0.113.0/24")]
    [bdm] = inst["block_device_mappings"]
    assert bdm["device_name"] == "/dev/sdf" and bdm["delete_on_termination"] is True
    vol = served.account.get(f"/v1/volumes/{bdm['volume_id']}").json()
    assert vol["size_gib"] == 3


def test_a_refused_inline_group_launches_nothing(page, served):
    expect = playwright_api.expect
    before = {i["instance_id"] for i in served.account.get("/v1/instances").json()["items"]}
    _to_network_step(page, served, "wiz-refused")
    page.get_by_label("Create a new security group").check()
    page.get_by_label("New group name").fill("wiz-bad")
    page.get_by_label("Source CIDR").fill("10.1.2.3/8")  # host bits set
    wizard_step(page, 6)
    wizard_step(page, 7)
    page.get_by_role("button", name="Launch instance").click()
    # What the API answers for that rule (on a scratch group, removed again).
    scratch = served.account.post("/v1/security-groups", json={"group_name": "scratch"}).json()
    said = served.account.post(f"/v1/security-groups/{scratch['group_id']}/ingress", json={
        "rules": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "10.1.2.3/8"}]})
    assert said.status_code == 400
    assert served.account.delete(f"/v1/security-groups/{scratch['group_id']}").status_code == 200
    err = said.json()["error"]
    expect(page.get_by_role("alert")).to_have_text(f"{err['code']}: {err['message']}")
    expect(page.locator("#step-title")).to_contain_text("Step 7 of 7")
    after = {i["instance_id"] for i in served.account.get("/v1/instances").json()["items"]}
    assert after == before  # nothing launched
    names = [g["group_name"] for g in served.account.get("/v1/security-groups").json()["items"]]
    assert "wiz-bad" not in names  # the group made for it was removed again

    # Fixed, the same wizard launches (the group is made anew).
    page.get_by_role("button", name="Back").click()
    page.get_by_role("button", name="Back").click()
    page.get_by_label("Source CIDR").fill("10.0.0.0/8")
    wizard_step(page, 6)
    wizard_step(page, 7)
    page.get_by_role("button", name="Launch instance").click()
    page.wait_for_url(re.compile(r"#/instances/i-[0-9a-f]{17}$"))
    iid = page.url.rsplit("/", 1)[1]
    [group] = [g for g in served.account.get("/v1/security-groups").json()["items"]
               if g["group_name"] == "wiz-bad"]
    assert served.cloud.instance(served.account, iid)["security_group_ids"] == [group["group_id"]]
