"""The console's storage and image pages (controller/console/static/js/storage.js) and the
instance page's volume, image and security group actions (instances.js) in headless Chromium:
create a volume, attach it to a running instance from the instance page and see it listed there,
refused changes (shrink, delete while attached, an empty group set, making an image public as a
non-admin) showing the API's error with nothing changed, a snapshot and a volume made from it,
the instance's security groups changed, an image created from the instance, the image list's
Own / Public filter, sharing an image, a volume's and a snapshot's tags edited (a value with '<'
refused verbatim, nothing changed); each step checked against the API.

The cloud: a VolumeCloud (tests/functional/volume_cloud.py: the real storage node app over
FakeVolumeBackend) served by uvicorn, with one fake agent that carries volumes (VolumeAgent) and
captures images (test_image_capture.CapturingAgent); the served cloud's converger runs the
reconciler (volumes, snapshots, captures) and heartbeats every 0.2 s."""
from __future__ import annotations

import re

import pytest

from agent.contract.v1 import EXTENSIONS
from tests.functional.console_browser_support import ServedCloud, chromium_page, sign_in
from tests.functional.test_image_capture import CapturingAgent
from tests.functional.volume_cloud import VolumeAgent, VolumeCloud

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "storage-password-123"


class StoreAgent(CapturingAgent, VolumeAgent):
    """A fake agent whose instances carry their volumes and can be captured into images."""

    def __init__(self, host_id, root, backend):
        super().__init__(host_id, root, backend=backend)
        self.info = self.info.model_copy(update={"extensions": list(EXTENSIONS)})


def add_store_host(served: ServedCloud, tmp) -> None:
    """The public kumo-tiny image and one StoreAgent host (volumes, snapshots, image captures)
    in a served VolumeCloud (call with served.lock held)."""
    c = served.cloud
    c.image()
    agent = StoreAgent("host-1", tmp / "agent", c.backend)
    c.agents[agent.url] = agent
    c.heartbeat(agent)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-storage")
    s = ServedCloud(tmp, cloud_class=VolumeCloud)
    try:
        with s.lock:
            c = s.cloud
            add_store_host(s, tmp)
            key = c.admin.post("/v1/accounts", json={"name": "store"}).json()["api_key"]
            s.account = c.client(key)
            s.account_id = s.account.get("/v1/account").json()["account_id"]
            s.other_id = c.admin.post("/v1/accounts", json={"name": "other"}).json()["account_id"]
            assert s.account.post("/v1/account/users", json={
                "username": "storeuser", "password": PASSWORD}).status_code == 201
            s.iid = c.launch(s.account, tags={"Name": "web-1"})
            c.converge()
            inst = c.instance(s.account, s.iid)
            assert inst["state"] == "running" and inst["vpc_id"], inst
            r = s.account.post("/v1/security-groups", json={
                "group_name": "web", "description": "web servers", "vpc_id": inst["vpc_id"]})
            assert r.status_code == 201, r.text
            s.web_group = r.json()["group_id"]
        s.converging.set()
        yield s
    finally:
        s.close()


def _volumes(served) -> list[dict]:
    return served.account.get("/v1/volumes").json()["items"]


def test_volume_attach_refusals_and_snapshot(served):
    expect = playwright_api.expect
    api = served.account
    with chromium_page() as page:
        sign_in(page, served.url, username="storeuser", password=PASSWORD)

        # Create a volume.
        page.get_by_role("link", name="Volumes").first.click()
        expect(page.get_by_role("heading", name="Volumes", exact=True)).to_be_visible()
        page.get_by_label("Size (GiB)").fill("2")
        page.get_by_label("Name").fill("data")
        page.get_by_role("button", name="Create volume").click()
        # The new volume's page first: the API is read only once the POST has been answered.
        expect(page.get_by_role("heading", name=re.compile(r"^data \(vol-"))).to_be_visible()
        [vol] = _volumes(served)
        vid = vol["volume_id"]
        assert vol["size_gib"] == 2 and vol["tags"] == {"Name": "data"}
        expect(page.get_by_role("heading", name=f"data ({vid})")).to_be_visible()
        expect(page.locator('dd[data-field="State"]')).to_have_text("available")
        page.get_by_role("link", name="← Volumes").click()
        row = page.locator(f'#volumes tr[data-volume-id="{vid}"]')
        expect(row).to_contain_text("data")
        expect(row).to_contain_text("available")

        # Attach it from the instance page; it is listed there with a link to its page.
        page.goto(f"{served.url}/console/#/instances/{served.iid}")
        expect(page.get_by_role("heading", name=f"web-1 ({served.iid})")).to_be_visible()
        expect(page.get_by_label("Volume", exact=True).locator(f'option[value="{vid}"]')).to_have_count(1)
        page.get_by_label("Volume", exact=True).select_option(vid)
        page.get_by_label("Device").select_option("/dev/sdg")
        page.get_by_role("button", name="Attach volume").click()
        listed = page.locator(f'#volumes li[data-volume-id="{vid}"]')
        expect(listed).to_contain_text("/dev/sdg")
        expect(listed).to_contain_text("attached")
        att = api.get(f"/v1/volumes/{vid}").json()["attachments"]
        assert [(a["instance_id"], a["device"], a["state"]) for a in att] == [
            (served.iid, "/dev/sdg", "attached")]
        inst = api.get(f"/v1/instances/{served.iid}").json()
        assert [b["volume_id"] for b in inst["block_device_mappings"]] == [vid]
        # The attached volume is no longer offered.
        expect(page.get_by_label("Volume", exact=True).locator(f'option[value="{vid}"]')).to_have_count(0)

        # Its page, through the link: attached, so no attach form.
        listed.get_by_role("link", name=vid).click()
        expect(page.locator('dd[data-field="Attached to"]')).to_contain_text(served.iid)
        expect(page.get_by_role("button", name="Attach", exact=True)).to_be_hidden()
        alert = page.get_by_role("alert").first

        # Refused: a shrink (volumes only grow) and a delete while attached; nothing changes.
        page.get_by_label("New size (GiB)").fill("1")
        page.get_by_role("button", name="Change size").click()
        expect(alert).to_contain_text("InvalidParameterValue")
        expect(alert).to_contain_text("volumes only grow")
        page.get_by_role("button", name="Delete volume").click()
        page.get_by_role("button", name="Confirm: delete volume").click()
        expect(alert).to_contain_text("VolumeInUse")
        after = api.get(f"/v1/volumes/{vid}").json()
        assert (after["size_gib"], after["state"], len(after["attachments"])) == (2, "in-use", 1)

        # Grow it.
        page.get_by_label("New size (GiB)").fill("3")
        page.get_by_role("button", name="Change size").click()
        expect(page.locator('dd[data-field="Size"]')).to_have_text("3 GiB")
        assert api.get(f"/v1/volumes/{vid}").json()["size_gib"] == 3
        # A snapshot is of what the storage node has: wait until the grow has reached it.
        expect(page.locator('dd[data-field="Modification"]')).to_have_text("completed")

        # Snapshot it; the snapshots page follows it to completed; a volume made from it.
        page.get_by_label("Snapshot description").fill("nightly")
        page.get_by_role("button", name="Create snapshot").click()
        expect(page.get_by_role("status")).to_contain_text("snap-")
        [snap] = api.get("/v1/snapshots").json()["items"]
        assert (snap["volume_id"], snap["description"], snap["volume_size_gib"]) == (vid, "nightly", 3)
        page.get_by_role("status").get_by_role("link").click()
        srow = page.locator(f'#snapshots tr[data-snapshot-id="{snap["snapshot_id"]}"]')
        expect(srow).to_contain_text("completed")
        expect(srow).to_contain_text("nightly")
        srow.get_by_role("button", name=f"Create volume from {snap['snapshot_id']}").click()
        expect(page.locator('dd[data-field="From snapshot"]')).to_have_text(snap["snapshot_id"])
        made = [v for v in _volumes(served) if v["snapshot_id"] == snap["snapshot_id"]]
        assert len(made) == 1 and made[0]["size_gib"] == 3


def test_groups_image_capture_filter_and_sharing(served):
    expect = playwright_api.expect
    api = served.account
    with chromium_page() as page:
        sign_in(page, served.url, username="storeuser", password=PASSWORD)
        page.goto(f"{served.url}/console/#/instances/{served.iid}")
        expect(page.get_by_role("heading", name=f"web-1 ({served.iid})")).to_be_visible()
        before = api.get(f"/v1/instances/{served.iid}").json()["security_group_ids"]
        assert len(before) == 1 and served.web_group not in before

        # Refused: no group at all (the API wants 1 or more); nothing changes.
        choices = page.locator("#group-choices")
        expect(choices.locator("input[type=checkbox]")).to_have_count(2)
        choices.locator(f'input[value="{before[0]}"]').uncheck()
        page.get_by_role("button", name="Change security groups").click()
        expect(page.get_by_role("alert").first).to_contain_text("InvalidParameterValue")
        assert api.get(f"/v1/instances/{served.iid}").json()["security_group_ids"] == before

        # The web group instead of the default one.
        choices.get_by_label("web").check()
        page.get_by_role("button", name="Change security groups").click()
        expect(page.get_by_role("status")).to_contain_text("Security groups changed")
        expect(page.locator("#groups")).to_contain_text(served.web_group)
        assert api.get(f"/v1/instances/{served.iid}").json()["security_group_ids"] == [served.web_group]

        # Create an image from the instance; the notice links to its page.
        page.get_by_label("Image name").fill("my-image")
        page.get_by_label("Image description").fill("from web-1")
        page.get_by_role("button", name="Create image").click()
        expect(page.get_by_role("status")).to_contain_text("is being created")
        [mine] = [i for i in api.get("/v1/images").json()["items"]
                  if i["owner_account_id"] == served.account_id]
        assert (mine["name"], mine["source_instance_id"], mine["public"]) == (
            "my-image", served.iid, False)
        page.get_by_role("status").get_by_role("link", name=mine["image_id"]).click()
        expect(page.get_by_role("heading", name=f"my-image ({mine['image_id']})")).to_be_visible()
        expect(page.locator('dd[data-field="State"]')).to_have_text("available", timeout=30_000)
        assert api.get(f"/v1/images/{mine['image_id']}").json()["state"] == "available"
        expect(page.get_by_role("link", name="Launch instance from this image")).to_have_attribute(
            "href", "#/launch")

        # Refused: making it public needs an admin; it stays private.
        page.get_by_label("Public (every account may launch it)").check()
        page.get_by_role("button", name="Save visibility").click()
        expect(page.locator("#launch-permission").get_by_role("alert")).to_contain_text(
            "UnauthorizedOperation")
        perm = api.get(f"/v1/images/{mine['image_id']}/launch-permission").json()
        assert perm == {"image_id": mine["image_id"], "public": False, "account_ids": []}

        # Share it with another account.
        page.get_by_label("Account ID").fill(served.other_id)
        page.get_by_role("button", name="Share").click()
        expect(page.locator("#shared-with")).to_contain_text(served.other_id)
        perm = api.get(f"/v1/images/{mine['image_id']}/launch-permission").json()
        assert perm["account_ids"] == [served.other_id]

        # The list's filter: owned by me, then public, as the API's fields say.
        page.get_by_role("link", name="← Images").click()
        rows = page.locator("#images tbody tr[data-image-id]")
        items = api.get("/v1/images").json()["items"]
        expect(rows).to_have_count(len(items))
        page.get_by_label("Owned by me").check()
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-image-id", mine["image_id"])
        page.get_by_label("Public", exact=True).check()
        public = sorted(i["image_id"] for i in items if i["public"])
        assert public and mine["image_id"] not in public
        expect(rows).to_have_count(len(public))
        assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.imageId)")) == public
        page.get_by_label("All").check()
        expect(rows).to_have_count(len(items))
        assert re.search(r"\d+ of \d+ images", page.locator(".count").inner_text())


def test_volume_and_snapshot_tags(served):
    """Tags edited from a volume's page and a snapshot's row: a value the API refuses (with '<')
    shows its error verbatim and changes nothing; a rename shows the Name verbatim; each PUT's
    result equals the API's."""
    expect = playwright_api.expect
    api = served.account
    r = api.post("/v1/volumes", json={"size_gib": 1, "tags": {"Name": "logs", "env": "dev"}})
    assert r.status_code == 201, r.text
    vid = r.json()["volume_id"]
    with chromium_page() as page:
        sign_in(page, served.url, username="storeuser", password=PASSWORD)
        page.goto(f"{served.url}/console/#/volumes/{vid}")
        expect(page.get_by_role("heading", name=f"logs ({vid})")).to_be_visible()
        tags = page.locator("#tags")
        expect(tags.get_by_label("Name", exact=True)).to_have_value("logs")
        expect(tags.get_by_label("Tag 1 key")).to_have_value("env")

        # Refused: '<' in the Name; the API's error verbatim, the tags as they were.
        bad = api.put(f"/v1/volumes/{vid}/tags", json={"tags": {"Name": "a<b", "env": "dev"}})
        assert bad.status_code == 400, bad.text
        e = bad.json()["error"]
        tags.get_by_label("Name", exact=True).fill("a<b")
        tags.get_by_role("button", name="Save tags").click()
        expect(tags.get_by_role("alert")).to_have_text(f'{e["code"]}: {e["message"]}')
        assert api.get(f"/v1/volumes/{vid}").json()["tags"] == {"Name": "logs", "env": "dev"}
        expect(page.get_by_role("heading", name=f"logs ({vid})")).to_be_visible()
        # What was typed stays for correcting (a live refresh does not redraw it).
        page.wait_for_timeout(3500)
        expect(tags.get_by_label("Name", exact=True)).to_have_value("a<b")

        # Renamed, a tag removed (empty key) and one added, in one PUT; shown verbatim.
        tags.get_by_label("Name", exact=True).fill("logs: 2024/Q1 @ team-a")
        tags.get_by_label("Tag 1 key").fill("")
        tags.get_by_label("New tag key").fill("owner")
        tags.get_by_label("New tag value").fill("ops+dev")
        tags.get_by_role("button", name="Save tags").click()
        expect(page.get_by_role("status")).to_have_text("Tags saved.")
        expect(tags.get_by_role("alert")).to_be_hidden()
        want = {"Name": "logs: 2024/Q1 @ team-a", "owner": "ops+dev"}
        assert api.get(f"/v1/volumes/{vid}").json()["tags"] == want
        expect(page.get_by_role("heading", name=f"logs: 2024/Q1 @ team-a ({vid})")).to_be_visible()
        expect(page.locator('dd[data-field="Tag owner"]')).to_have_text("ops+dev")
        expect(tags.get_by_label("Tag 1 key")).to_have_value("owner")
        page.get_by_role("link", name="← Volumes").click()
        expect(page.locator(f'#volumes tr[data-volume-id="{vid}"] td[data-label="Name"]')).to_have_text(
            "logs: 2024/Q1 @ team-a")

        # A snapshot's row: refused, then named.
        r = api.post("/v1/snapshots", json={"volume_id": vid, "description": "tagging"})
        assert r.status_code == 201, r.text
        sid = r.json()["snapshot_id"]
        page.get_by_role("link", name="Snapshots").first.click()
        srow = page.locator(f'#snapshots tr[data-snapshot-id="{sid}"]')
        expect(srow).to_contain_text("completed")
        expect(srow.locator('td[data-label="Name"] .name')).to_have_text("–")
        srow.get_by_label(f"Edit tags of {sid}").click()
        srow.get_by_label("Name", exact=True).fill("x<y")
        srow.get_by_role("button", name=f"Save tags of {sid}").click()
        bad = api.put(f"/v1/snapshots/{sid}/tags", json={"tags": {"Name": "x<y"}})
        assert bad.status_code == 400, bad.text
        e = bad.json()["error"]
        expect(page.get_by_role("alert").first).to_have_text(f'{e["code"]}: {e["message"]}')
        assert api.get(f"/v1/snapshots/{sid}").json()["tags"] == {}
        srow.get_by_label("Name", exact=True).fill("before upgrade")
        srow.get_by_role("button", name=f"Save tags of {sid}").click()
        expect(page.get_by_role("status")).to_have_text(f"Tags of {sid} saved.")
        expect(srow.locator('td[data-label="Name"] .name')).to_have_text("before upgrade")
        assert api.get(f"/v1/snapshots/{sid}").json()["tags"] == {"Name": "before upgrade"}
