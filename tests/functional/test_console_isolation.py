"""The console's account isolation and script-injection refusals in headless Chromium (issue 15's
security line), and the instances list's filters.

Isolation: account A owns one of each kind (an instance, a volume, a snapshot, a private image,
a security group, its VPC, a route table, an internet gateway, an elastic IP, a launch template
and an Auto Scaling group); console user B opens each of A's detail pages by URL and sees the
API's 404 verbatim and none of A's data, finds none of A's ids or names on any of its list pages,
and B's changes to A's resources through the API with B's own session cookie and CSRF token
(sent from B's page, as the console sends them) answer 404 and change nothing.

Injection: what the API accepts carrying markup (a snapshot's and an image's description with a
raw `<img onerror>`, a security group's name, description and rule description with entity-encoded
markup and template syntax, an id in the URL) is shown as the literal text on every page that
shows it, with no element made from it, no dialog and no page error; what the API refuses to store
(markup in tags, image, launch template and Auto Scaling group names, raw markup in group
descriptions) is asserted refused.

The cloud: a VolumeCloud served by uvicorn with one agent that carries volumes and captures
images (test_console_storage.StoreAgent); its converger runs the reconciler every 0.2 s."""
from __future__ import annotations

import json
import re
import time
from urllib.parse import quote

import pytest

from tests.functional.console_browser_support import ServedCloud, sign_in, wizard_step
from tests.functional.test_console_storage import add_store_host
from tests.functional.volume_cloud import VolumeCloud
from tests.functional.vpc_support import ok

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "isolation-password-123"
SECRET = "alpha-secret"  # every name, tag and description of account A starts with it

RAW = "<img src=x onerror=alert(1)>"
# What the security group rules accept (no < or >): markup only once HTML-decoded, and
# template syntax that only a templating engine would evaluate.
ENCODED = "&lt;img src=x onerror=alert(1)&gt; &amp; {{7*7}} ${alert(1)}"


def _made(r, status: int = 201) -> dict:
    return ok(r, status)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-isolation")
    s = ServedCloud(tmp, cloud_class=VolumeCloud)
    try:
        with s.lock:
            c = s.cloud
            add_store_host(s, tmp)
            s.a, s.b = {}, {}
            for who, name, user in ((s.a, "alpha", "alice"), (s.b, "bravo", "bob")):
                key = _made(c.admin.post("/v1/accounts", json={"name": name}))["api_key"]
                who["api"] = api = c.client(key)
                _made(api.post("/v1/account/users", json={"username": user, "password": PASSWORD}))
                who["user"] = user
                who["instance"] = c.launch(api, tags={"Name": f"{name}-secret-web",
                                                      "team": f"{name}-secret-team"})
            c.converge()
            for who, name in ((s.a, "alpha"), (s.b, "bravo")):
                api = who["api"]
                inst = c.instance(api, who["instance"])
                assert inst["state"] == "running", inst
                who["vpc"], who["subnet"] = inst["vpc_id"], inst["subnet_id"]
                who["default_group"] = inst["security_group_ids"][0]
                who["main_rtb"] = ok(api.get(f"/v1/vpcs/{inst['vpc_id']}"))["main_route_table_id"]
                who["volume"] = _made(api.post("/v1/volumes", json={
                    "size_gib": 1, "tags": {"Name": f"{name}-secret-data"}}))["volume_id"]
                who["eip"] = _made(api.post("/v1/elastic-ips", json={}))
                who["igw"] = _made(api.post("/v1/internet-gateways", json={}))["internet_gateway_id"]
                _made(api.post("/v1/launch-templates", json={
                    "launch_template_name": f"{name}-secret-lt",
                    "launch_template_data": {"image": "kumo-tiny", "instance_type": "t3.nano"}}))
                who["asg"] = f"{name}-secret-asg"
                _made(api.post("/v1/autoscaling-groups", json={
                    "auto_scaling_group_name": who["asg"],
                    "launch_template": {"launch_template_name": f"{name}-secret-lt"},
                    "min_size": 0, "max_size": 1, "desired_capacity": 0,
                    "subnet_ids": [who["subnet"]]}))
            c.converge()
            for who, name in ((s.a, "alpha"), (s.b, "bravo")):
                api = who["api"]
                who["snapshot"] = _made(api.post("/v1/snapshots", json={
                    "volume_id": who["volume"], "description": f"{name}-secret-snap"}))["snapshot_id"]
            a = s.a["api"]
            s.a["group"] = _made(a.post("/v1/security-groups", json={
                "group_name": "alpha-secret-sg", "description": "alpha-secret group",
                "vpc_id": s.a["vpc"]}))["group_id"]
            s.a["rtb"] = _made(a.post("/v1/route-tables", json={"vpc_id": s.a["vpc"]}))["route_table_id"]
            s.a["image"] = _made(a.post(f"/v1/instances/{s.a['instance']}/image", json={
                "name": "alpha-secret-image", "description": "alpha-secret image",
                "no_reboot": True}))["image_id"]
            s.public_image = next(i["image_id"] for i in ok(a.get("/v1/images"))["items"]
                                  if i["public"])
        s.converging.set()
        yield s
    finally:
        s.close()


def _a_ids(served) -> list[str]:
    a = served.a
    return [a["instance"], a["volume"], a["snapshot"], a["image"], a["group"], a["vpc"],
            a["subnet"], a["rtb"], a["main_rtb"], a["igw"], a["eip"]["allocation_id"],
            a["eip"]["public_ip"], a["asg"]]


def _a_state(served) -> dict:
    """What B's refused changes must leave as it was, read through A's own key."""
    a, api = served.a, served.a["api"]
    inst = ok(api.get(f"/v1/instances/{a['instance']}"))
    vol = ok(api.get(f"/v1/volumes/{a['volume']}"))
    snap = ok(api.get(f"/v1/snapshots/{a['snapshot']}"))
    img = ok(api.get(f"/v1/images/{a['image']}"))
    perm = ok(api.get(f"/v1/images/{a['image']}/launch-permission"))
    sg = ok(api.get(f"/v1/security-groups/{a['group']}"))
    rtb = ok(api.get(f"/v1/route-tables/{a['rtb']}"))
    eip = ok(api.get(f"/v1/elastic-ips/{a['eip']['allocation_id']}"))
    asg = ok(api.get(f"/v1/autoscaling-groups/{a['asg']}"))
    return {
        "instance": (inst["state"], inst["instance_type"], inst["tags"], inst["security_group_ids"]),
        "volume": (vol["size_gib"], vol["tags"], vol["attachments"]),
        "snapshot": snap["description"],
        "image": (img["public"], perm["public"], perm["account_ids"]),
        "group": (sg["ingress_rules"], sg["egress_rules"]),
        "vpc": ok(api.get(f"/v1/vpcs/{a['vpc']}"))["state"],
        "subnets": sorted(x["subnet_id"] for x in ok(api.get("/v1/subnets"))["items"]),
        "rtb": (rtb["routes"], rtb["associations"]),
        "igw": ok(api.get(f"/v1/internet-gateways/{a['igw']}"))["vpc_id"],
        "eip": (eip["instance_id"], eip["association_id"]),
        "asg": (asg["min_size"], asg["max_size"], asg["desired_capacity"]),
        "lt": ok(api.get("/v1/launch-templates/alpha-secret-lt"))["launch_template_name"],
    }


# fetch() from the signed-in page with the session cookie and the session's CSRF token, as api.js
# sends them: [status, body].
_AS_PAGE = """async ([method, path, body]) => {
  const s = await (await fetch('/console/api/session', { cache: 'no-store' })).json();
  const r = await fetch(path, { method, credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token },
    body: body === null ? undefined : JSON.stringify(body) });
  let doc = null; try { doc = await r.json(); } catch (e) { doc = null; }
  return [r.status, doc];
}"""


def _body_text(page) -> str:
    return page.locator("body").inner_text()


def _wizard_to(page, base_url: str, step: int) -> None:
    """The launch wizard opened and walked with Next to `step` (2: images, 5: network)."""
    page.goto(f"{base_url}/console/#/launch")
    page.get_by_label("Name", exact=True).fill("probe")
    wizard_step(page, 2)
    page.get_by_label(re.compile("^kumo-tiny")).check()
    for n in range(3, step + 1):
        wizard_step(page, n)


def _leaks(text: str, ids: list[str]) -> list[str]:
    """A's ids found as whole words in text (an IP never matches inside a longer one), and any
    of A's names, tags or descriptions (they all start with SECRET)."""
    found = [x for x in ids if re.search(rf"(?<![\w.-]){re.escape(x)}(?![\w.-])", text)]
    return found + ([SECRET] if SECRET in text else [])


def test_other_accounts_pages_and_changes_are_404(served, page):
    expect = playwright_api.expect
    a, b = served.a, served.b
    sign_in(page, served.url, username=b["user"], password=PASSWORD)

    # A's detail pages by URL: the API's 404, verbatim, and none of A's data.
    details = [
        (f"/instances/{a['instance']}", f"/v1/instances/{a['instance']}"),
        (f"/volumes/{a['volume']}", f"/v1/volumes/{a['volume']}"),
        (f"/images/{a['image']}", f"/v1/images/{a['image']}"),
        (f"/security-groups/{a['group']}", f"/v1/security-groups/{a['group']}"),
        (f"/vpcs/{a['vpc']}", f"/v1/vpcs/{a['vpc']}"),
        (f"/route-tables/{a['rtb']}", f"/v1/route-tables/{a['rtb']}"),
        (f"/route-tables/{a['main_rtb']}", f"/v1/route-tables/{a['main_rtb']}"),
        (f"/autoscaling/{a['asg']}", f"/v1/autoscaling-groups/{a['asg']}"),
    ]
    for route, path in details:
        r = b["api"].get(path)
        assert r.status_code == 404, (path, r.text)
        e = r.json()["error"]
        page.goto(f"{served.url}/console/#{route}")
        expect(page.get_by_role("alert")).to_have_text(f"{e['code']}: {e['message']}")
        # The error names the id B asked for (B's own input); nothing else of A's.
        asked = route.rsplit("/", 1)[1]
        leaked = _leaks(_body_text(page).replace(asked, ""), _a_ids(served))
        assert not leaked, (route, leaked)

    # B's list pages: B's own rows are there, nothing of A's anywhere on the page.
    lists = [
        ("/instances", f'#instances tr[data-instance-id="{b["instance"]}"]'),
        ("/volumes", f'#volumes tr[data-volume-id="{b["volume"]}"]'),
        ("/snapshots", f'#snapshots tr[data-snapshot-id="{b["snapshot"]}"]'),
        ("/images", f'#images tr[data-image-id="{served.public_image}"]'),
        ("/security-groups", f'#main a[href="#/security-groups/{b["default_group"]}"]'),
        ("/vpcs", f'#main :text("{b["vpc"]}")'),
        ("/subnets", f'#main :text("{b["subnet"]}")'),
        ("/route-tables", f'#main :text("{b["main_rtb"]}")'),
        ("/gateways", f'#main :text("{b["igw"]}")'),
        ("/elastic-ips", f'#main :text("{b["eip"]["public_ip"]}")'),
        ("/autoscaling", f'#scaling-groups tr[data-group="{b["asg"]}"]'),
        ("/", '#main li[data-state="running"]'),
    ]
    for route, mine in lists:
        page.goto(f"{served.url}/console/#{route}")
        expect(page.locator(mine).first).to_be_visible()
        leaked = _leaks(_body_text(page), _a_ids(served))
        assert not leaked, (route, leaked)
    # The launch wizard's images (step 2) and VPCs and groups (step 5): B's and public only.
    _wizard_to(page, served.url, 2)
    assert not _leaks(_body_text(page), _a_ids(served)), _leaks(_body_text(page), _a_ids(served))
    for step in range(3, 6):
        wizard_step(page, step)
    expect(page.locator("#main")).to_contain_text(b["default_group"])
    assert not _leaks(_body_text(page), _a_ids(served)), _leaks(_body_text(page), _a_ids(served))
    # The Auto Scaling form offers B's templates only.
    page.goto(f"{served.url}/console/#/autoscaling")
    expect(page.locator(f'#scaling-groups tr[data-group="{b["asg"]}"]')).to_be_visible()
    html = page.locator("#main").inner_html()
    assert "bravo-secret-lt" in html and SECRET not in html

    # Changes to A's resources with B's session and CSRF token: 404 each, nothing changed.
    def as_b(method: str, path: str, body=None) -> tuple[int, dict | None]:
        return tuple(page.evaluate(_AS_PAGE, [method, path, body]))

    # The positive control: the same call on B's own group goes through.
    status, doc = as_b("POST", f"/v1/autoscaling-groups/{b['asg']}/desired-capacity",
                       {"desired_capacity": 0})
    assert status == 200, doc
    before = _a_state(served)
    alloc = a["eip"]["allocation_id"]
    attempts = [
        ("POST", f"/v1/instances/{a['instance']}/stop", None),
        ("POST", f"/v1/instances/{a['instance']}/terminate", None),
        ("PATCH", f"/v1/instances/{a['instance']}", {"instance_type": "t3.micro"}),
        ("PUT", f"/v1/instances/{a['instance']}/security-groups",
         {"security_group_ids": [a["group"]]}),
        ("DELETE", f"/v1/volumes/{a['volume']}", None),
        ("PATCH", f"/v1/volumes/{a['volume']}", {"size_gib": 5}),
        ("PUT", f"/v1/volumes/{a['volume']}/tags", {"tags": {"Name": "taken"}}),
        ("POST", f"/v1/volumes/{a['volume']}/attach",
         {"instance_id": b["instance"], "device": "/dev/sdf"}),
        ("DELETE", f"/v1/snapshots/{a['snapshot']}", None),
        ("PUT", f"/v1/images/{a['image']}/launch-permission", {"add": [b["api"].get(
            "/v1/account").json()["account_id"]]}),
        ("DELETE", f"/v1/images/{a['image']}", None),
        ("POST", f"/v1/security-groups/{a['group']}/ingress",
         {"rules": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "0.0.0.0/0"}]}),
        ("DELETE", f"/v1/security-groups/{a['group']}", None),
        ("DELETE", f"/v1/vpcs/{a['vpc']}", None),
        ("POST", "/v1/subnets", {"vpc_id": a["vpc"], "cidr_block": "172.31.200.0/24"}),
        ("POST", f"/v1/route-tables/{a['rtb']}/routes",
         {"destination_cidr_block": "0.0.0.0/0", "gateway_id": b["igw"]}),
        ("POST", f"/v1/route-tables/{a['rtb']}/associations", {"subnet_id": a["subnet"]}),
        ("DELETE", f"/v1/route-tables/{a['rtb']}", None),
        ("POST", f"/v1/internet-gateways/{a['igw']}/attach", {"vpc_id": b["vpc"]}),
        ("DELETE", f"/v1/internet-gateways/{a['igw']}", None),
        ("POST", f"/v1/elastic-ips/{alloc}/associate", {"instance_id": b["instance"]}),
        ("DELETE", f"/v1/elastic-ips/{alloc}", None),
        ("POST", f"/v1/autoscaling-groups/{a['asg']}/desired-capacity", {"desired_capacity": 1}),
        ("PATCH", f"/v1/autoscaling-groups/{a['asg']}", {"max_size": 2}),
        ("DELETE", f"/v1/autoscaling-groups/{a['asg']}", None),
        ("DELETE", "/v1/launch-templates/alpha-secret-lt", None),
    ]
    answers = {(m, p): as_b(m, p, body) for m, p, body in attempts}
    not_404 = {k: v for k, v in answers.items() if v[0] != 404}
    assert not not_404, not_404
    # The same refusal as for an id that never existed: nothing tells B that A's exists.
    def never_existed(text: str) -> str:
        for x in [a["instance"], a["volume"], a["snapshot"], a["image"], a["group"], a["vpc"],
                  a["subnet"], a["rtb"], a["igw"], alloc]:
            text = text.replace(x, x.split("-")[0] + "-" + "0" * 17)
        return text.replace("alpha-secret", "nobody")
    for (method, path, body), (_, doc) in zip(attempts, answers.values()):
        fake = json.loads(never_existed(json.dumps([path, body])))
        status, fake_doc = as_b(method, *fake)
        assert (status, fake_doc["error"]["code"]) == (404, doc["error"]["code"]), (path, doc, fake_doc)
    assert _a_state(served) == before


def test_markup_is_shown_verbatim_or_refused(served, page):
    expect = playwright_api.expect
    a = served.a
    api = a["api"]

    # Refused where the API allows no markup: tags, names of images, templates, groups.
    def refused(r, code: str) -> None:
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == code, r.text

    refused(api.post("/v1/instances", json={"image": "kumo-tiny", "instance_type": "t3.nano",
                                            "tags": {"Name": RAW}}), "InvalidTag")
    refused(api.post("/v1/volumes", json={"size_gib": 1, "tags": {"Name": RAW}}), "InvalidTag")
    refused(api.post("/v1/volumes", json={"size_gib": 1, "tags": {RAW: "x"}}), "InvalidTag")
    refused(api.post("/v1/key-pairs", json={"name": RAW}), "InvalidParameterValue")
    refused(api.put(f"/v1/snapshots/{a['snapshot']}/tags", json={"tags": {"Name": RAW}}),
            "InvalidTag")
    refused(api.post(f"/v1/instances/{a['instance']}/image", json={"name": RAW, "no_reboot": True}),
            "InvalidParameterValue")
    refused(api.post("/v1/launch-templates", json={"launch_template_name": RAW,
            "launch_template_data": {"image": "kumo-tiny", "instance_type": "t3.nano"}}),
            "InvalidParameterValue")
    refused(api.post("/v1/autoscaling-groups", json={
        "auto_scaling_group_name": RAW, "launch_template": {"launch_template_name": "alpha-secret-lt"},
        "min_size": 0, "max_size": 1, "subnet_ids": [a["subnet"]]}), "InvalidParameterValue")
    refused(api.post("/v1/security-groups", json={"group_name": RAW, "description": "x",
                                                  "vpc_id": a["vpc"]}), "InvalidParameterValue")
    refused(api.post("/v1/security-groups", json={"group_name": "x", "description": RAW,
                                                  "vpc_id": a["vpc"]}), "InvalidParameterValue")

    # Accepted: raw markup in snapshot and image descriptions, encoded markup in groups. One
    # capture at a time per instance: the fixture's first.
    deadline = time.monotonic() + 60
    while ok(api.get(f"/v1/images/{a['image']}"))["state"] == "pending":
        assert time.monotonic() < deadline, "the fixture's capture did not settle"
        time.sleep(0.2)
    with served.lock:
        snap = _made(api.post("/v1/snapshots", json={"volume_id": a["volume"],
                                                     "description": RAW}))["snapshot_id"]
        image = _made(api.post(f"/v1/instances/{a['instance']}/image", json={
            "name": "markup-image", "description": RAW, "no_reboot": True}))["image_id"]
        group = _made(api.post("/v1/security-groups", json={
            "group_name": ENCODED, "description": ENCODED, "vpc_id": a["vpc"]}))
        gid = group["group_id"]
        assert group["group_name"] == ENCODED and group["description"] == ENCODED
        rule = {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_ipv4": "10.0.0.0/8"}
        refused(api.post(f"/v1/security-groups/{gid}/ingress",
                         json={"rules": [{**rule, "description": RAW}]}), "InvalidParameterValue")
        ok(api.post(f"/v1/security-groups/{gid}/ingress",
                    json={"rules": [{**rule, "description": ENCODED}]}))
        ok(api.put(f"/v1/instances/{a['instance']}/security-groups",
                   json={"security_group_ids": [gid]}))

    sign_in(page, served.url, username=a["user"], password=PASSWORD)
    main = page.locator("#main")

    def shown_verbatim(route: str, ready: str, text: str, times: int = 1) -> None:
        page.goto(f"{served.url}/console/#{route}")
        expect(page.locator(ready).first).to_be_visible()
        expect(main).to_contain_text(text)
        # The literal string, as often as the page shows it: never parsed, never decoded.
        assert _body_text(page).count(text) >= times, route
        made = page.evaluate("""() => document.querySelectorAll(
            '[onerror], img, #main script, #main iframe').length""")
        assert made == 0, (route, made)

    shown_verbatim("/snapshots", f'#snapshots tr[data-snapshot-id="{snap}"]', RAW)
    shown_verbatim(f"/images/{image}", 'dd[data-field="Description"]', RAW)
    expect(page.locator('dd[data-field="Description"]')).to_have_text(RAW)
    shown_verbatim("/security-groups", f'#main a[href="#/security-groups/{gid}"]', ENCODED, 2)
    shown_verbatim(f"/security-groups/{gid}", "#ingress-rules tbody tr", ENCODED, 3)
    expect(page.get_by_role("heading", name=f"{ENCODED} ({gid})")).to_be_visible()
    expect(page.locator("#ingress-rules tbody tr", has_text="10.0.0.0/8")).to_contain_text(ENCODED)
    shown_verbatim(f"/vpcs/{a['vpc']}", f'#vpc-sgs-t a[href="#/security-groups/{gid}"]', ENCODED, 2)
    shown_verbatim(f"/instances/{a['instance']}", f'#groups :text("{gid}")', ENCODED, 2)
    # What a guest prints on its serial console is the guest's to choose: markup there too.
    with served.lock:
        for agent in served.cloud.agents.values():
            if a["instance"] in agent.consoles:
                agent.consoles[a["instance"]] += f"login: {RAW}\n"
    page.goto(f"{served.url}/console/#/instances/{a['instance']}")
    expect(page.locator("#console-output")).to_contain_text(f"login: {RAW}")
    assert page.evaluate("() => document.querySelectorAll('[onerror], img').length") == 0
    # The launch wizard: image descriptions (step 2), the VPC's groups (step 5).
    _wizard_to(page, served.url, 2)
    expect(main).to_contain_text(RAW)
    for step in range(3, 6):
        wizard_step(page, step)
    expect(main).to_contain_text(ENCODED)
    assert page.evaluate("() => document.querySelectorAll('[onerror], img').length") == 0

    # Markup in the URL: the API's 404 names the id it was asked for, shown as text.
    for route, path in ((f"/instances/{RAW}", "/v1/instances/"),
                        (f"/security-groups/{RAW}", "/v1/security-groups/")):
        r = api.get(path + quote(RAW, safe=""))
        assert r.status_code == 404, r.text
        e = r.json()["error"]
        page.goto(f"{served.url}/console/#{quote(route, safe='/')}")
        expect(page.get_by_role("alert")).to_have_text(f"{e['code']}: {e['message']}")
        assert page.evaluate("() => document.querySelectorAll('[onerror], img').length") == 0


def test_instances_list_filters(served, page):
    expect = playwright_api.expect
    a = served.a
    api = a["api"]
    with served.lock:
        other = served.cloud.launch(api, tags={"Name": "alpha-secret-db"})
    sign_in(page, served.url, username=a["user"], password=PASSWORD)
    page.goto(f"{served.url}/console/#/instances")
    rows = page.locator("#instances tbody tr")
    row_of = lambda iid: page.locator(f'#instances tr[data-instance-id="{iid}"]')  # noqa: E731
    expect(row_of(other)).to_contain_text("running")
    expect(row_of(a["instance"])).to_be_visible()
    ok(api.post(f"/v1/instances/{other}/stop"))
    expect(row_of(other)).to_contain_text("stopped")  # the list follows it live

    state = page.get_by_label("State", exact=True)
    state.select_option("stopped")
    expect(rows).to_have_count(1)
    expect(row_of(other)).to_be_visible()
    state.select_option("running")
    expect(row_of(other)).to_have_count(0)
    expect(row_of(a["instance"])).to_be_visible()
    # Text and state together: words match the name, id or IPs.
    page.get_by_label("Filter").fill("secret-db")
    expect(rows).to_have_count(0)
    expect(page.locator("#main p.count")).to_have_text("0 of 2 instances")
    state.select_option("")
    expect(rows).to_have_count(1)
    expect(row_of(other)).to_be_visible()
    private_ip = ok(api.get(f"/v1/instances/{a['instance']}"))["private_ip"]
    page.get_by_label("Filter").fill(private_ip)
    expect(row_of(a["instance"])).to_be_visible()
    page.get_by_label("Filter").fill(a["instance"])
    expect(rows).to_have_count(1)
